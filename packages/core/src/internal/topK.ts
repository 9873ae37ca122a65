/**
 * Bounded hit tracking for auto-refresh: a count-min sketch estimates how often any key was hit
 * (fixed memory, whatever the number of keys), and a small top-K table keeps the K keys with the
 * highest estimates together with the expiry of the entry last seen for them. Memory is
 * `width * depth` counters plus K slots, never a map of every key.
 *
 * @internal
 */

/** FNV-1a over UTF-16 code units, seeded per row. */
const hash = (key: string, seed: number): number => {
  let h = (0x811c9dc5 ^ seed) >>> 0
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  // final avalanche (murmur3 fmix32) so nearby keys spread across columns
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b) >>> 0
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35) >>> 0
  h ^= h >>> 16
  return h >>> 0
}

const SEEDS = [0x9e3779b1, 0x85ebca77, 0xc2b2ae3d, 0x27d4eb2f, 0x165667b1, 0xd3a2646c, 0xfd7046c5, 0xb55a4f09]

export class CountMinSketch {
  private readonly table: Uint32Array
  private readonly mask: number

  readonly width: number
  readonly depth: number

  constructor(width: number, depth: number) {
    this.depth = Math.min(Math.max(1, Math.floor(depth)), SEEDS.length)
    // round the width up to a power of two so a mask replaces the modulo
    let w = 1
    while (w < width && w < 1 << 24) w <<= 1
    this.width = w
    this.mask = w - 1
    this.table = new Uint32Array(w * this.depth)
  }

  /** Adds one hit and returns the new estimate (the minimum over the rows). */
  increment(key: string): number {
    let min = Number.MAX_SAFE_INTEGER
    for (let row = 0; row < this.depth; row++) {
      const i = row * this.width + (hash(key, SEEDS[row]!) & this.mask)
      const v = this.table[i]! + 1
      this.table[i] = v
      if (v < min) min = v
    }
    return min
  }

  estimate(key: string): number {
    let min = Number.MAX_SAFE_INTEGER
    for (let row = 0; row < this.depth; row++) {
      const v = this.table[row * this.width + (hash(key, SEEDS[row]!) & this.mask)]!
      if (v < min) min = v
    }
    return min
  }

  reset(): void {
    this.table.fill(0)
  }
}

export interface HotKey {
  readonly key: string
  /** Estimated hits in the current window. */
  count: number
  /** `expiresAt` of the entry last seen for this key. */
  expiresAt: number
  staleUntil: number
}

/**
 * The K keys with the highest estimated counts. Updates are O(K) in the worst case (finding the
 * minimum to evict), which is cheap for the K of a few hundred this is meant for.
 */
export class TopK {
  private readonly slots = new Map<string, HotKey>()
  private minKey: string | undefined
  readonly sketch: CountMinSketch

  constructor(readonly capacity: number, sketchWidth = 4096, sketchDepth = 4) {
    this.sketch = new CountMinSketch(sketchWidth, sketchDepth)
  }

  get size(): number {
    return this.slots.size
  }

  /** Records a hit on `key` for an entry with the given expiry. */
  record(key: string, expiresAt: number, staleUntil: number): void {
    const count = this.sketch.increment(key)
    const slot = this.slots.get(key)
    if (slot !== undefined) {
      slot.count = count
      slot.expiresAt = expiresAt
      slot.staleUntil = staleUntil
      if (this.minKey === key) this.minKey = undefined
      return
    }
    if (this.slots.size < this.capacity) {
      this.slots.set(key, { key, count, expiresAt, staleUntil })
      this.minKey = undefined
      return
    }
    const min = this.findMin()
    if (min !== undefined && count > min.count) {
      this.slots.delete(min.key)
      this.slots.set(key, { key, count, expiresAt, staleUntil })
      this.minKey = undefined
    }
  }

  /** Updates the expiry kept for a tracked key (after a refresh replaced its entry). */
  touch(key: string, expiresAt: number, staleUntil: number): void {
    const slot = this.slots.get(key)
    if (slot === undefined) return
    slot.expiresAt = expiresAt
    slot.staleUntil = staleUntil
  }

  /** Forgets a key (it was invalidated). Its sketch counts stay until the next window. */
  forget(key: string): void {
    this.slots.delete(key)
    if (this.minKey === key) this.minKey = undefined
  }

  /** Keys with an estimated count of at least `minCount`, highest first. */
  hot(minCount: number): Array<HotKey> {
    const out: Array<HotKey> = []
    for (const slot of this.slots.values()) if (slot.count >= minCount) out.push(slot)
    return out.sort((a, b) => b.count - a.count)
  }

  /** Starts a new counting window. */
  reset(): void {
    this.sketch.reset()
    this.slots.clear()
    this.minKey = undefined
  }

  private findMin(): HotKey | undefined {
    if (this.minKey !== undefined) {
      const cached = this.slots.get(this.minKey)
      if (cached !== undefined) return cached
    }
    let min: HotKey | undefined
    for (const slot of this.slots.values()) if (min === undefined || slot.count < min.count) min = slot
    this.minKey = min?.key
    return min
  }
}

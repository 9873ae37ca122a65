/**
 * W-TinyLFU: the eviction and admission policy of `MemoryBackend`, as a plain data structure with
 * no Effect inside, so it is fast on the hot path and can be driven directly by trace replays,
 * benchmarks and property tests.
 *
 * Layout (after Caffeine's design, written from the papers and its documentation):
 * - a small **window** LRU (1% of the capacity at start) takes every new entry, so a burst of new
 *   keys gets a chance to prove itself;
 * - the **main** space is a segmented LRU: **probation** (20%) and **protected** (80%); a hit in
 *   probation promotes to protected, protected overflow is demoted back to probation;
 * - when the cache is over its bounds, entries leaving the window become *candidates* and compete
 *   with the probation LRU *victims*: the one the count-min sketch says is less frequent is evicted
 *   (a candidate must be strictly more frequent; warm candidates are admitted at random 1/128 of
 *   the time so that an attacker cannot pin a hot victim by colliding hashes);
 * - every sample period (20 × capacity requests) a **hill climber** samples the hit rate and moves
 *   the window/main split (the window may take 0-100% of the cache) by a step that decays by 2% each
 *   period and restarts at 6.25% when the hit rate jumps by 5 points, so recency-skewed phases grow
 *   the window and frequency-skewed phases shrink it. Unlike Caffeine's climber (available as
 *   `climber: "caffeine"`), a move is a probe that is kept only when it beats sampling noise, and a
 *   probe kept by a wide margin makes the next one larger (see `climb`).
 *
 * Bounds: both an entry count and a total weight (bytes, from the caller's weigher). An entry heavier
 * than the maximum weight is refused by `set`. Expiry deadlines are kept alongside (`Float64Array`),
 * so lazy expiry on read and a sweep (`expire(now)`) are plain array operations.
 *
 * Storage: struct-of-arrays indexed by slot (typed arrays for links, weights, deadlines and hashes)
 * plus one `Map<K, slot>`. A read allocates nothing; an insert allocates only the Map entry. The
 * linked lists are intrusive (`prev`/`next` arrays), so every move is O(1); eviction is O(1)
 * amortised (each entry is evicted at most once).
 *
 * Removals (eviction, expiry, explicit delete, replacement) are reported synchronously through the
 * `onRemoval` callback given at construction.
 *
 * @internal
 */
import { CountMinSketch, hashKey } from "./countMinSketch.js"

/** Why an entry left the cache. */
export type RemovalReason =
  /** pushed out by the size/weight bounds (lost the frequency comparison) */
  | "evicted"
  /** its deadline passed */
  | "expired"
  /** deleted by the caller (delete, clear, tag or pattern invalidation) */
  | "removed"
  /** overwritten by a new value for the same key */
  | "replaced"

export interface WTinyLfuOptions<K, V> {
  /** Maximum number of entries (finite, >= 1). */
  readonly maxEntries: number
  /** Maximum total weight; defaults to `Infinity` (count-bound only). */
  readonly maxWeight?: number | undefined
  /** Initial share of the window (0..1); 0.01 by default. */
  readonly initialWindowFraction?: number | undefined
  /** Turns the hill climber off (fixed window), for comparisons. */
  readonly adaptive?: boolean | undefined
  /** Sketch aging period, in multiples of `maxEntries` increments (40 by default; Caffeine uses 10). */
  readonly sampleFactor?: number | undefined
  /** Sketch width: 4-bit counters per entry of `maxEntries` (64 by default; Caffeine uses 16). */
  readonly countersPerEntry?: number | undefined
  /** Puts a Bloom-filter doorkeeper in front of the sketch (first occurrences do not touch the counters). */
  readonly doorkeeper?: boolean | undefined
  /**
   * "probing" (default): each move is a one-period probe, kept only when it beats sampling noise;
   * "caffeine": Caffeine's published rule (always move; flip direction when the hit rate drops).
   */
  readonly climber?: "probing" | "caffeine" | undefined
  /** Conservative update in the sketch (only the minimal counters grow). */
  readonly conservative?: boolean | undefined
  /** A key's sketch counters in one cache line (default true); false spreads them over the table. */
  readonly blockedSketch?: boolean | undefined
  /** Requests per hill-climbing sample, in multiples of `maxEntries` (20 by default; 10 for "caffeine"). */
  readonly climbSampleFactor?: number | undefined
  /** Hash of a key; strings and integers are handled by default. */
  readonly hash?: ((key: K) => number) | undefined
  /** Seed of the random source used by the hash-flooding guard (deterministic replays). */
  readonly seed?: number | undefined
  /** Called synchronously for every entry that leaves the cache. */
  readonly onRemoval?: ((key: K, value: V, reason: RemovalReason) => void) | undefined
}

const WINDOW = 0
const PROBATION = 1
const PROTECTED = 2
const FREE = 3
const NIL = -1

/** Share of main space that is protected. */
const PROTECTED_FRACTION = 0.8
/** Hill climber constants (as published for Caffeine). */
const STEP_FRACTION = 0.0625
const STEP_DECAY = 0.98
const RESTART_THRESHOLD = 0.05
/**
 * A probe is kept when its hit rate beats the base period's by this many standard errors of the
 * difference. Tuned on the bench traces: 2 kept the window stuck on plateaus of a recency-skewed
 * trace (57% hits where 1.5 gives 75%), 1.5 still holds it near 1% on stationary Zipf traces.
 */
const NOISE_SIGMAS = 1.5
/**
 * A kept probe whose gain exceeds this many standard errors is a strong signal (a regime shift, not
 * noise): the next probe in the same direction is `BOOST_FACTOR` times larger, up to `MAX_BOOST` times
 * the base step; a rejected probe resets the boost. On stationary Zipf traces gains this large do not
 * happen, so the window stays where the noise gate holds it; on the recency-skewed bench trace the
 * window reaches its ceiling in three moves instead of about a dozen.
 */
const STRONG_SIGMAS = 4
const BOOST_FACTOR = 4
const MAX_BOOST = 8
/**
 * The window may take the whole cache (then the policy is a plain LRU), as in Caffeine: on a
 * recency-skewed workload a main space of any size holds keys whose popularity has passed.
 */
const MAX_WINDOW_FRACTION = 1
/**
 * Tuned on the seeded traces of bench/hit-ratio.bench.ts (the table is in bench/README.md): a
 * sketch twice as long-lived as Caffeine's (aging every 40 × capacity increments instead of 10) and
 * four times as wide (64 counters per entry, 32 bytes) tells the boundary keys of a Zipf workload apart
 * (+1.2 points on Zipf 0.9 at 1% capacity). The probing climber samples 20 × capacity requests, half
 * an aging period: with 10 × capacity, the hit-rate sawtooth of the aging cycle (a recency-skewed
 * workload gains right after each halving) decides the probes, and on a slowly sliding working set
 * the window never grows (57% hits where 20 × capacity gives 92%). Caffeine's climber samples
 * 10 × capacity, as published.
 */
const DEFAULT_SAMPLE_FACTOR = 40
const DEFAULT_COUNTERS_PER_ENTRY = 64
const DEFAULT_CLIMB_SAMPLE_FACTOR = 20
const CAFFEINE_CLIMB_SAMPLE_FACTOR = 10
/** A candidate at least this frequent may be admitted at random against a hotter victim. */
const ADMIT_HASHDOS_THRESHOLD = 6

export class WTinyLfu<K, V> {
  readonly maxEntries: number
  readonly maxWeight: number
  private readonly sketch: CountMinSketch
  private readonly hash: (key: K) => number
  private readonly onRemoval: ((key: K, value: V, reason: RemovalReason) => void) | undefined
  private readonly adaptive: boolean
  private readonly climber: "probing" | "caffeine"
  /** Direction of the next probe (+1 grows the window). */
  private direction = 1
  private probing = false
  private baseHitRate = 0
  private baseFraction = 0
  private boost = 1
  private climbing = false
  private shiftPending = false
  /** Hit rate of the sample before a drop (-1: the last sample did not drop). */
  private dropLevel = -1

  private readonly index = new Map<K, number>()
  private keys: Array<K | undefined>
  private values: Array<V | undefined>
  private weights: Float64Array
  private deadlines: Float64Array
  private hashes: Int32Array
  private prev: Int32Array
  private next: Int32Array
  private region: Uint8Array
  private capacity: number
  private freeSlots: Int32Array
  private freeCount = 0
  private highWater = 0

  private readonly heads = new Int32Array([NIL, NIL, NIL])
  private readonly tails = new Int32Array([NIL, NIL, NIL])
  private readonly counts = new Float64Array(3)
  private readonly regionWeights = new Float64Array(3)
  private totalWeight = 0

  private windowFraction: number
  private windowMaxCount = 1
  private windowMaxWeight = 0
  private protectedMaxCount = 0
  private protectedMaxWeight = 0

  // hill climber
  private sampleHits = 0
  private sampleMisses = 0
  private previousHitRate = 0
  private stepSize: number
  private readonly climbSample: number

  private random: number

  /** Lifetime counters. */
  hits = 0
  misses = 0
  evictions = 0
  expirations = 0

  constructor(options: WTinyLfuOptions<K, V>) {
    // Callers validate options (MemoryBackend fails with a typed error); here bad values are clamped.
    const maxEntries = Number.isFinite(options.maxEntries) ? Math.max(1, Math.floor(options.maxEntries)) : 1 << 24
    const maxWeight = options.maxWeight !== undefined && options.maxWeight > 0
      ? options.maxWeight
      : Number.POSITIVE_INFINITY
    this.maxEntries = maxEntries
    this.maxWeight = maxWeight
    this.sketch = new CountMinSketch(maxEntries, {
      sampleFactor: options.sampleFactor ?? DEFAULT_SAMPLE_FACTOR,
      countersPerEntry: options.countersPerEntry ?? DEFAULT_COUNTERS_PER_ENTRY,
      doorkeeper: options.doorkeeper,
      conservative: options.conservative,
      blocked: options.blockedSketch
    })
    const climbSampleFactor = options.climbSampleFactor ??
      (options.climber === "caffeine" ? CAFFEINE_CLIMB_SAMPLE_FACTOR : DEFAULT_CLIMB_SAMPLE_FACTOR)
    this.climbSample = Math.max(16, Math.floor(climbSampleFactor * maxEntries))
    this.hash = options.hash ?? hashKey
    this.onRemoval = options.onRemoval
    this.adaptive = options.adaptive ?? true
    this.climber = options.climber ?? "probing"
    this.random = (options.seed ?? 0x2545f491) | 0 || 1
    this.windowFraction = clamp(options.initialWindowFraction ?? 0.01, 0, MAX_WINDOW_FRACTION)
    this.stepSize = this.climber === "caffeine" ? -STEP_FRACTION : STEP_FRACTION
    this.capacity = Math.min(maxEntries + 1, 1024)
    this.keys = new Array<K | undefined>(this.capacity)
    this.values = new Array<V | undefined>(this.capacity)
    this.weights = new Float64Array(this.capacity)
    this.deadlines = new Float64Array(this.capacity)
    this.hashes = new Int32Array(this.capacity)
    this.prev = new Int32Array(this.capacity)
    this.next = new Int32Array(this.capacity)
    this.region = new Uint8Array(this.capacity).fill(FREE)
    this.freeSlots = new Int32Array(this.capacity)
    this.resize()
  }

  // -------------------------------------------------------------------------------------------
  // Reads
  // -------------------------------------------------------------------------------------------

  /** Number of live entries (expired ones count until they are read or swept). */
  get size(): number {
    return this.index.size
  }

  /** Total weight of live entries. */
  get weightedSize(): number {
    return this.totalWeight
  }

  /** Current window share (moved by the hill climber). */
  get currentWindowFraction(): number {
    return this.windowFraction
  }

  /** Entries per region, for tests and stats. */
  regionSizes(): { window: number; probation: number; protected: number } {
    return { window: this.counts[WINDOW]!, probation: this.counts[PROBATION]!, protected: this.counts[PROTECTED]! }
  }

  /**
   * Reads `key` as an access: counts its frequency, moves it in its LRU, and counts a hit or miss
   * for the hill climber. An entry whose deadline is `<= now` is removed ("expired") and is a miss.
   */
  get(key: K, now = 0): V | undefined {
    const slot = this.index.get(key)
    if (slot === undefined) {
      this.recordMiss()
      return undefined
    }
    if (this.deadlines[slot]! <= now) {
      this.removeSlot(slot, "expired")
      this.recordMiss()
      return undefined
    }
    this.sketch.increment(this.hashes[slot]!)
    this.onAccess(slot)
    this.hits++
    this.sampleHits++
    if (this.sampleHits + this.sampleMisses >= this.climbSample) this.climb()
    return this.values[slot]
  }

  /** Reads without recording an access (no frequency, no reordering, no stats). Expired = undefined. */
  peek(key: K, now = 0): V | undefined {
    const slot = this.index.get(key)
    if (slot === undefined || this.deadlines[slot]! <= now) return undefined
    return this.values[slot]
  }

  has(key: K, now = 0): boolean {
    const slot = this.index.get(key)
    return slot !== undefined && this.deadlines[slot]! > now
  }

  /** The sketch's frequency estimate of a key (0..15), present or not. */
  frequency(key: K): number {
    const slot = this.index.get(key)
    return this.sketch.frequency(slot === undefined ? this.hash(key) : this.hashes[slot]!)
  }

  // -------------------------------------------------------------------------------------------
  // Writes
  // -------------------------------------------------------------------------------------------

  /**
   * Stores `value` under `key` with `weight` and an expiry `deadline` (`Infinity` = never).
   * Returns false (and changes nothing) when `weight` exceeds `maxWeight`. Overwriting reports the
   * old value as "replaced". The new entry may itself be evicted at once if it loses admission.
   */
  set(key: K, value: V, weight = 1, deadline = Number.POSITIVE_INFINITY): boolean {
    if (!(weight >= 0) || weight > this.maxWeight) return false
    const existing = this.index.get(key)
    if (existing !== undefined) {
      const old = this.values[existing] as V
      const r = this.region[existing]!
      const delta = weight - this.weights[existing]!
      this.weights[existing] = weight
      this.regionWeights[r] = this.regionWeights[r]! + delta
      this.totalWeight += delta
      this.values[existing] = value
      this.deadlines[existing] = deadline
      this.sketch.increment(this.hashes[existing]!)
      this.onAccess(existing)
      this.onRemoval?.(key, old, "replaced")
    } else {
      const slot = this.allocate()
      const h = this.hash(key) | 0
      this.keys[slot] = key
      this.values[slot] = value
      this.weights[slot] = weight
      this.deadlines[slot] = deadline
      this.hashes[slot] = h
      this.index.set(key, slot)
      this.link(slot, WINDOW)
      this.totalWeight += weight
      this.sketch.increment(h)
    }
    this.evict()
    return true
  }

  /** Removes `key`; reports it as "removed". Returns whether it was present. */
  delete(key: K): boolean {
    const slot = this.index.get(key)
    if (slot === undefined) return false
    this.removeSlot(slot, "removed")
    return true
  }

  /** Removes every entry, reporting each as "removed". The frequency history is kept. */
  clear(): void {
    for (let slot = 0; slot < this.highWater; slot++) {
      if (this.region[slot] !== FREE) this.removeSlot(slot, "removed")
    }
  }

  /** Removes every entry whose deadline is `<= now` ("expired"); returns how many. O(capacity). */
  expire(now: number): number {
    let removed = 0
    const deadlines = this.deadlines
    for (let slot = 0; slot < this.highWater; slot++) {
      if (deadlines[slot]! <= now && this.region[slot] !== FREE) {
        this.removeSlot(slot, "expired")
        removed++
      }
    }
    return removed
  }

  /**
   * Visits live entries in slot order starting at `cursor`, looking at no more than `budget` slots.
   * Returns the next cursor, or -1 when the walk is complete. An entry present for the whole walk is
   * visited exactly once (slots do not move while an entry lives), whatever happens around it.
   */
  scan(cursor: number, budget: number, visit: (key: K, value: V, deadline: number) => void): number {
    let slot = Math.max(0, Math.floor(cursor))
    const end = Math.min(this.highWater, slot + Math.max(1, Math.floor(budget)))
    for (; slot < end; slot++) {
      if (this.region[slot] !== FREE) visit(this.keys[slot] as K, this.values[slot] as V, this.deadlines[slot]!)
    }
    return slot >= this.highWater ? -1 : slot
  }

  /** Every live entry (snapshot of keys, then values read as it goes; removals during the walk are safe). */
  forEach(visit: (key: K, value: V, deadline: number) => void): void {
    for (let slot = 0; slot < this.highWater; slot++) {
      if (this.region[slot] !== FREE) visit(this.keys[slot] as K, this.values[slot] as V, this.deadlines[slot]!)
    }
  }

  /** The `limit` live keys with the highest frequency estimate, hottest first. O(n log limit). */
  hottest(limit: number, now = Number.NEGATIVE_INFINITY): Array<{ readonly key: K; readonly frequency: number }> {
    const top: Array<{ key: K; frequency: number }> = []
    if (limit <= 0) return top
    for (let slot = 0; slot < this.highWater; slot++) {
      if (this.region[slot] === FREE || this.deadlines[slot]! <= now) continue
      const frequency = this.sketch.frequency(this.hashes[slot]!)
      if (top.length === limit && frequency <= top[top.length - 1]!.frequency) continue
      // insertion into a small sorted array: limit is small (tens)
      let i = top.length === limit ? limit - 1 : top.length
      if (top.length < limit) top.push({ key: this.keys[slot] as K, frequency })
      else top[i] = { key: this.keys[slot] as K, frequency }
      while (i > 0 && top[i - 1]!.frequency < frequency) {
        const t = top[i - 1]!
        top[i - 1] = top[i]!
        top[i] = t
        i--
      }
    }
    return top
  }

  /** Replay helper: a read that loads the key on a miss (weight 1). Returns whether it was a hit. */
  access(key: K): boolean {
    if (this.get(key) !== undefined) return true
    this.set(key, key as unknown as V)
    return false
  }

  // -------------------------------------------------------------------------------------------
  // Machinery
  // -------------------------------------------------------------------------------------------

  private recordMiss(): void {
    this.misses++
    this.sampleMisses++
    if (this.sampleHits + this.sampleMisses >= this.climbSample) this.climb()
  }

  private onAccess(slot: number): void {
    const r = this.region[slot]!
    if (r === PROBATION) {
      this.unlink(slot)
      this.link(slot, PROTECTED)
      this.demoteProtectedOverflow()
    } else {
      this.moveToTail(slot, r)
      if (r === PROTECTED && this.regionWeights[PROTECTED]! > this.protectedMaxWeight) this.demoteProtectedOverflow()
    }
  }

  private demoteProtectedOverflow(): void {
    while (
      (this.counts[PROTECTED]! > this.protectedMaxCount || this.regionWeights[PROTECTED]! > this.protectedMaxWeight) &&
      this.heads[PROTECTED] !== NIL
    ) {
      const slot = this.heads[PROTECTED]!
      this.unlink(slot)
      this.link(slot, PROBATION)
    }
  }

  private isOver(): boolean {
    return this.index.size > this.maxEntries || this.totalWeight > this.maxWeight
  }

  /**
   * Restores the bounds. Window overflow moves to the probation tail as candidates; while the cache
   * is over its bounds, the probation LRU victim and the oldest candidate are compared by frequency
   * and the loser is evicted. When probation runs dry, victims come from protected, then the window.
   */
  private evict(): void {
    let candidate = NIL
    let candidates = 0
    while (
      (this.counts[WINDOW]! > this.windowMaxCount || this.regionWeights[WINDOW]! > this.windowMaxWeight) &&
      this.heads[WINDOW] !== NIL
    ) {
      const slot = this.heads[WINDOW]!
      this.unlink(slot)
      this.link(slot, PROBATION)
      if (candidate === NIL) candidate = slot
      candidates++
    }
    if (!this.isOver()) return

    let victimRegion = PROBATION
    let victim = this.heads[PROBATION]!
    let candidateRegion = PROBATION
    while (this.isOver()) {
      if (candidate === NIL && candidateRegion === PROBATION) {
        // no (more) candidates from the window overflow: the window LRU competes instead
        candidate = this.heads[WINDOW]!
        candidateRegion = WINDOW
        candidates = Number.POSITIVE_INFINITY
      }
      if (candidate === NIL && victim === NIL) {
        if (victimRegion === PROBATION) {
          victim = this.heads[PROTECTED]!
          victimRegion = PROTECTED
          continue
        } else if (victimRegion === PROTECTED) {
          victim = this.heads[WINDOW]!
          victimRegion = WINDOW
          continue
        }
        break
      }
      if (victim === NIL) {
        const evict = candidate
        candidate = --candidates > 0 ? this.next[candidate]! : NIL
        this.removeSlot(evict, "evicted")
        continue
      }
      if (candidate === NIL) {
        const evict = victim
        victim = this.next[victim]!
        this.removeSlot(evict, "evicted")
        continue
      }
      if (candidate === victim) {
        victim = this.next[victim]!
        this.removeSlot(candidate, "evicted")
        candidate = NIL
        candidates = 0
        continue
      }
      if (this.admit(this.hashes[candidate]!, this.hashes[victim]!)) {
        const evict = victim
        victim = this.next[victim]!
        this.removeSlot(evict, "evicted")
        candidate = --candidates > 0 ? this.next[candidate]! : NIL
      } else {
        const evict = candidate
        candidate = --candidates > 0 ? this.next[candidate]! : NIL
        this.removeSlot(evict, "evicted")
      }
    }
  }

  private admit(candidateHash: number, victimHash: number): boolean {
    const candidateFreq = this.sketch.frequency(candidateHash)
    const victimFreq = this.sketch.frequency(victimHash)
    if (candidateFreq > victimFreq) return true
    if (candidateFreq >= ADMIT_HASHDOS_THRESHOLD) {
      // xorshift32: deterministic, cheap
      let x = this.random
      x ^= x << 13
      x ^= x >>> 17
      x ^= x << 5
      this.random = x
      return (x & 127) === 0
    }
    return false
  }

  /** One hill-climbing step at the end of a sample period. */
  private climb(): void {
    const requests = this.sampleHits + this.sampleMisses
    const hitRate = this.sampleHits / requests
    this.sampleHits = 0
    this.sampleMisses = 0
    const change = hitRate - this.previousHitRate
    // Climb only once the cache is full (before, nothing is evicted) and the sketch has aged once
    // (before, hit rates still rise as the history fills up, which reads as "every move helps"), or,
    // for the probing climber, earlier on a regime shift (see `shifted`): a recency-skewed trace
    // collapses to a few percent of hits while the sketch waits for its first aging.
    const full = this.index.size >= this.maxEntries || this.totalWeight >= this.maxWeight * 0.95
    // Regime shift: the hit rate of a full cache drops by 5 points or more and stays down for the
    // next sample too (a drop that recovers at once is a periodic workload, such as scans every few
    // samples). The split was set for another workload, so the current probe is abandoned and the
    // next one is the largest (MAX_BOOST steps, toward the other half of the range). Without it, a
    // window grown to 100% by a recency-skewed phase stays above 80% for 700k requests of a following
    // Zipf phase, where each small step down gains less than the noise gate asks. Before the climber
    // has started, one drop is enough (it starts the climber; it can happen only once).
    const dropped = this.climber === "probing" && full && this.previousHitRate > 0 &&
      change <= -RESTART_THRESHOLD
    let shifted = dropped && !this.climbing
    if (this.climbing) {
      if (this.dropLevel >= 0 && hitRate <= this.dropLevel - RESTART_THRESHOLD) shifted = true
      this.dropLevel = dropped ? this.previousHitRate : -1
    }
    if (shifted) this.shiftPending = true
    if (!this.adaptive || !full || (this.sketch.resets === 0 && !this.climbing && !shifted)) {
      this.previousHitRate = hitRate
      return
    }
    this.climbing = true
    this.previousHitRate = hitRate
    let target: number
    if (this.climber === "caffeine") {
      // Caffeine's rule: keep the direction while the hit rate does not drop, flip it when it drops.
      const amount = change >= 0 ? this.stepSize : -this.stepSize
      this.stepSize = Math.abs(change) >= RESTART_THRESHOLD
        ? STEP_FRACTION * (amount >= 0 ? 1 : -1)
        : STEP_DECAY * amount
      target = this.windowFraction + amount
    } else {
      // Probing climber. Caffeine's rule follows every change, and on a stationary workload most
      // changes are sampling noise, so the window random-walks (measured: to 15-20% on Zipf 0.9, a
      // point of hit ratio lost). Here the window moves by one step for one period (the probe), and
      // the probe is kept only if its hit rate beats the base period's by more than 1.5 standard
      // errors of the difference (then the next probe continues that way at once); otherwise the window
      // returns and the next probe goes the other way. A probe kept by a wide margin (over 4 standard
      // errors) makes the next one 4 times larger (8 at most), so a regime shift is followed in a few
      // periods while small gains move the window one step at a time.
      // Steps decay as in Caffeine and restart at 6.25% when the hit rate jumps by 5 points.
      let step = Math.abs(this.stepSize)
      if (this.shiftPending) {
        // the current window becomes the base (this sample was measured there)
        this.probing = false
        step = STEP_FRACTION
        this.boost = MAX_BOOST
        this.direction = this.windowFraction > 0.5 ? -1 : 1
        this.shiftPending = false
      }
      if (!this.probing) {
        this.baseHitRate = hitRate
        this.baseFraction = this.windowFraction
        target = clamp(this.baseFraction + this.direction * step * this.boost, 0, MAX_WINDOW_FRACTION)
        if (target === this.baseFraction) {
          this.direction = -this.direction
          target = this.baseFraction + this.direction * step * this.boost
        }
        this.probing = true
      } else {
        const p = (hitRate + this.baseHitRate) / 2
        const sigma = Math.sqrt((2 * p * (1 - p)) / requests)
        const gain = hitRate - this.baseHitRate
        if (gain > NOISE_SIGMAS * sigma) {
          // The probe becomes the base, and the next probe in the same direction starts at once.
          this.boost = gain > STRONG_SIGMAS * sigma ? Math.min(MAX_BOOST, this.boost * BOOST_FACTOR) : 1
          this.baseHitRate = hitRate
          this.baseFraction = this.windowFraction
          target = this.baseFraction + this.direction * step * this.boost
        } else {
          this.boost = 1
          target = this.baseFraction
          this.direction = -this.direction
          this.probing = false
        }
      }
      this.stepSize = Math.abs(change) >= RESTART_THRESHOLD ? STEP_FRACTION : STEP_DECAY * step
    }
    const fraction = clamp(target, 0, MAX_WINDOW_FRACTION)
    if (fraction !== this.windowFraction) {
      const shrinking = fraction < this.windowFraction
      this.windowFraction = fraction
      this.resize()
      // A smaller window spills its overflow into probation now; a larger one fills up as entries arrive.
      if (shrinking) this.evict()
      this.demoteProtectedOverflow()
    }
  }

  private resize(): void {
    const f = this.windowFraction
    this.windowMaxCount = Math.max(1, Math.floor(this.maxEntries * f))
    this.windowMaxWeight = this.maxWeight * f
    this.protectedMaxCount = Math.floor(PROTECTED_FRACTION * (this.maxEntries - this.windowMaxCount))
    this.protectedMaxWeight = PROTECTED_FRACTION * (this.maxWeight - this.windowMaxWeight)
  }

  private allocate(): number {
    if (this.freeCount > 0) return this.freeSlots[--this.freeCount]!
    if (this.highWater === this.capacity) this.grow()
    return this.highWater++
  }

  private grow(): void {
    const capacity = Math.min(this.capacity * 2, this.maxEntries + 1)
    const growTyped = <T extends Float64Array | Int32Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(capacity)
      b.set(a)
      return b
    }
    this.weights = growTyped(this.weights, (n) => new Float64Array(n))
    this.deadlines = growTyped(this.deadlines, (n) => new Float64Array(n))
    this.hashes = growTyped(this.hashes, (n) => new Int32Array(n))
    this.prev = growTyped(this.prev, (n) => new Int32Array(n))
    this.next = growTyped(this.next, (n) => new Int32Array(n))
    const region = new Uint8Array(capacity).fill(FREE)
    region.set(this.region)
    this.region = region
    this.freeSlots = growTyped(this.freeSlots, (n) => new Int32Array(n))
    this.keys.length = capacity
    this.values.length = capacity
    this.capacity = capacity
  }

  private removeSlot(slot: number, reason: RemovalReason): void {
    const key = this.keys[slot] as K
    const value = this.values[slot] as V
    this.unlink(slot)
    this.region[slot] = FREE
    this.totalWeight -= this.weights[slot]!
    this.weights[slot] = 0
    this.deadlines[slot] = Number.POSITIVE_INFINITY
    this.keys[slot] = undefined
    this.values[slot] = undefined
    this.index.delete(key)
    this.freeSlots[this.freeCount++] = slot
    if (reason === "evicted") this.evictions++
    else if (reason === "expired") this.expirations++
    this.onRemoval?.(key, value, reason)
  }

  private link(slot: number, r: number): void {
    const tail = this.tails[r]!
    this.region[slot] = r
    this.prev[slot] = tail
    this.next[slot] = NIL
    if (tail === NIL) this.heads[r] = slot
    else this.next[tail] = slot
    this.tails[r] = slot
    this.counts[r] = this.counts[r]! + 1
    this.regionWeights[r] = this.regionWeights[r]! + this.weights[slot]!
  }

  private unlink(slot: number): void {
    const r = this.region[slot]!
    const p = this.prev[slot]!
    const n = this.next[slot]!
    if (p === NIL) this.heads[r] = n
    else this.next[p] = n
    if (n === NIL) this.tails[r] = p
    else this.prev[n] = p
    this.counts[r] = this.counts[r]! - 1
    this.regionWeights[r] = this.regionWeights[r]! - this.weights[slot]!
  }

  private moveToTail(slot: number, r: number): void {
    const tail = this.tails[r]!
    if (tail === slot) return
    const p = this.prev[slot]!
    const n = this.next[slot]!
    if (p === NIL) this.heads[r] = n
    else this.next[p] = n
    this.prev[n] = p // n !== NIL since slot is not the tail
    this.prev[slot] = tail
    this.next[slot] = NIL
    this.next[tail] = slot
    this.tails[r] = slot
  }
}

const clamp = (x: number, lo: number, hi: number): number => (x < lo ? lo : x > hi ? hi : x)

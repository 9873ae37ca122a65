/**
 * Seeded synthetic access traces and offline reference policies (LRU, Belady's optimum) for the
 * hit-ratio benchmark. Keys are non-negative integers; a trace is an `Int32Array`.
 */
import { readFileSync } from "node:fs"

/** mulberry32: small, fast, seeded PRNG returning floats in [0, 1). */
export const prng = (seed: number): () => number => {
  let s = seed | 0
  return () => {
    s = (s + 0x6d2b79f5) | 0
    let t = Math.imul(s ^ (s >>> 15), s | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * Draws `length` keys from a Zipf(`exponent`) distribution over `keys` items (rank r has weight
 * 1/r^s). Ranks are scattered over the key space by a seeded permutation so key order says nothing.
 */
export const zipf = (options: {
  readonly keys: number
  readonly length: number
  readonly exponent: number
  readonly seed: number
}): Int32Array => {
  const random = prng(options.seed)
  const cdf = new Float64Array(options.keys)
  let sum = 0
  for (let i = 0; i < options.keys; i++) {
    sum += 1 / Math.pow(i + 1, options.exponent)
    cdf[i] = sum
  }
  const permutation = new Int32Array(options.keys)
  for (let i = 0; i < options.keys; i++) permutation[i] = i
  for (let i = options.keys - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    const t = permutation[i]!
    permutation[i] = permutation[j]!
    permutation[j] = t
  }
  const trace = new Int32Array(options.length)
  for (let n = 0; n < options.length; n++) {
    const u = random() * sum
    let lo = 0
    let hi = options.keys - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (cdf[mid]! < u) lo = mid + 1
      else hi = mid
    }
    trace[n] = permutation[lo]!
  }
  return trace
}

/**
 * A Zipf trace interrupted every `every` requests by a scan of `scanLength` keys never seen before
 * (a batch job or a crawler walking the key space once).
 */
export const zipfWithScans = (options: {
  readonly keys: number
  readonly length: number
  readonly exponent: number
  readonly seed: number
  readonly every: number
  readonly scanLength: number
}): Int32Array => {
  const base = zipf(options)
  const trace = new Int32Array(options.length)
  let nextScanKey = options.keys
  let b = 0
  let n = 0
  while (n < options.length) {
    for (let i = 0; i < options.every && n < options.length; i++) trace[n++] = base[b++]!
    for (let i = 0; i < options.scanLength && n < options.length; i++) trace[n++] = nextScanKey++
  }
  return trace
}

/** Cycles over `loopLength` keys in order, `length` requests in total (LRU's worst case). */
export const loop = (options: { readonly loopLength: number; readonly length: number }): Int32Array => {
  const trace = new Int32Array(options.length)
  for (let n = 0; n < options.length; n++) trace[n] = n % options.loopLength
  return trace
}

/** Reads a trace file with one key per line (first whitespace-separated field); keys become integers. */
export const fromFile = (path: string): { readonly trace: Int32Array; readonly distinct: number } => {
  const ids = new Map<string, number>()
  const lines = readFileSync(path, "utf8").split("\n")
  const trace = new Int32Array(lines.length)
  let n = 0
  for (const line of lines) {
    const key = line.trim().split(/\s+/)[0]
    if (key === undefined || key === "") continue
    let id = ids.get(key)
    if (id === undefined) {
      id = ids.size
      ids.set(key, id)
    }
    trace[n++] = id
  }
  return { trace: trace.subarray(0, n), distinct: ids.size }
}

/** Distinct keys in a trace. */
export const distinctKeys = (trace: Int32Array): number => new Set(trace).size

/** Hit ratio of an LRU of `capacity` entries (a Map used as an ordered list). */
export const lruHitRatio = (trace: Int32Array, capacity: number): number => {
  const map = new Map<number, true>()
  let hits = 0
  for (let i = 0; i < trace.length; i++) {
    const key = trace[i]!
    if (map.delete(key)) {
      hits++
    } else if (map.size >= capacity) {
      map.delete(map.keys().next().value!)
    }
    map.set(key, true)
  }
  return hits / trace.length
}

/**
 * Belady's optimum (MIN): on a miss with a full cache, evict the resident key whose next use is
 * furthest in the future. Computed offline with next-use indexes and a max-heap with lazy deletion.
 * Counts demand fetches (every miss is loaded), the usual convention for cache hit ratios.
 */
export const beladyHitRatio = (trace: Int32Array, capacity: number): number => {
  const n = trace.length
  const nextUse = new Int32Array(n)
  const last = new Map<number, number>()
  for (let i = n - 1; i >= 0; i--) {
    const key = trace[i]!
    nextUse[i] = last.get(key) ?? n + i // never used again: beyond the end, distinct per position
    last.set(key, i)
  }
  // max-heap of (nextUse, key); an item is stale if the key's current next use differs
  const heapNext = new Int32Array(n + 1)
  const heapKey = new Int32Array(n + 1)
  let size = 0
  const push = (next: number, key: number) => {
    let i = size++
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (heapNext[parent]! >= next) break
      heapNext[i] = heapNext[parent]!
      heapKey[i] = heapKey[parent]!
      i = parent
    }
    heapNext[i] = next
    heapKey[i] = key
  }
  const pop = () => {
    const next = heapNext[--size]!
    const key = heapKey[size]!
    let i = 0
    for (;;) {
      let child = 2 * i + 1
      if (child >= size) break
      if (child + 1 < size && heapNext[child + 1]! > heapNext[child]!) child++
      if (heapNext[child]! <= next) break
      heapNext[i] = heapNext[child]!
      heapKey[i] = heapKey[child]!
      i = child
    }
    heapNext[i] = next
    heapKey[i] = key
  }
  const resident = new Map<number, number>() // key -> its next use
  let hits = 0
  for (let i = 0; i < n; i++) {
    const key = trace[i]!
    if (resident.has(key)) {
      hits++
    } else if (resident.size >= capacity) {
      for (;;) {
        const topKey = heapKey[0]!
        const topNext = heapNext[0]!
        pop()
        if (resident.get(topKey) === topNext) {
          resident.delete(topKey)
          break
        }
      }
    }
    resident.set(key, nextUse[i]!)
    push(nextUse[i]!, key)
    // keep the heap from growing without bound: rebuild from residents when it is mostly stale
    if (size > 4 * capacity + 1024) {
      size = 0
      for (const [k, next] of resident) push(next, k)
    }
  }
  return hits / n
}

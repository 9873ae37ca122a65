import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { CountMinSketch, hashKey } from "../src/internal/countMinSketch.js"
import type { RemovalReason } from "../src/internal/wtinylfu.js"
import { WTinyLfu } from "../src/internal/wtinylfu.js"

/** mulberry32, so traces are the same on every run. */
const prng = (seed: number) => {
  let s = seed | 0
  return () => {
    s = (s + 0x6d2b79f5) | 0
    let t = Math.imul(s ^ (s >>> 15), s | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const zipfTrace = (keys: number, length: number, exponent: number, seed: number): Array<number> => {
  const random = prng(seed)
  const cdf: Array<number> = []
  let sum = 0
  for (let i = 0; i < keys; i++) cdf.push(sum += 1 / Math.pow(i + 1, exponent))
  return Array.from({ length }, () => {
    const u = random() * sum
    let lo = 0
    let hi = keys - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (cdf[mid]! < u) lo = mid + 1
      else hi = mid
    }
    return lo
  })
}

const lruHits = (trace: ReadonlyArray<number>, capacity: number) => {
  const map = new Map<number, true>()
  let hits = 0
  for (const key of trace) {
    if (map.delete(key)) hits++
    else if (map.size >= capacity) map.delete(map.keys().next().value!)
    map.set(key, true)
  }
  return hits
}

describe.each([false, true])("CountMinSketch, blocked layout: %s", (blocked) => {
  it("never underestimates a count below the 4-bit ceiling before aging", () => {
    const sketch = new CountMinSketch(64, { sampleFactor: 1_000, blocked })
    const counts = new Map<number, number>()
    const random = prng(3)
    for (let i = 0; i < 2_000; i++) {
      const key = Math.floor(random() * 300)
      counts.set(key, (counts.get(key) ?? 0) + 1)
      sketch.increment(hashKey(key))
    }
    for (const [key, count] of counts) {
      expect(sketch.frequency(hashKey(key))).toBeGreaterThanOrEqual(Math.min(15, count))
    }
    expect(sketch.frequency(hashKey("never seen"))).toBeLessThan(15)
  })

  it("halves every counter once the sample is full, so old popularity fades", () => {
    const sketch = new CountMinSketch(16, { sampleFactor: 2, blocked }) // ages after 32 increments
    for (let i = 0; i < 12; i++) sketch.increment(hashKey("old"))
    expect(sketch.frequency(hashKey("old"))).toBe(12)
    for (let i = 0; i < 20; i++) sketch.increment(hashKey(`other${i}`))
    expect(sketch.resets).toBe(1)
    expect(sketch.frequency(hashKey("old"))).toBe(6)
  })

  it("saturates at 15", () => {
    const sketch = new CountMinSketch(1_000, { blocked })
    for (let i = 0; i < 100; i++) sketch.increment(hashKey("hot"))
    expect(sketch.frequency(hashKey("hot"))).toBe(15)
  })

  it("estimates close to the true counts: mean overestimate of 2,000 keys at width 16 under 0.5", () => {
    const sketch = new CountMinSketch(2_000, { sampleFactor: 1_000, blocked })
    const random = prng(9)
    const counts = new Map<number, number>()
    for (let i = 0; i < 6_000; i++) {
      const key = Math.floor(random() * 2_000)
      counts.set(key, (counts.get(key) ?? 0) + 1)
      sketch.increment(hashKey(key))
    }
    let over = 0
    for (const [key, count] of counts) over += sketch.frequency(hashKey(key)) - Math.min(15, count)
    expect(over / counts.size).toBeGreaterThanOrEqual(0)
    expect(over / counts.size).toBeLessThan(0.5)
  })
})

describe("CountMinSketch", () => {
  it("with a doorkeeper, a key seen once adds one and a second sighting reaches the counters", () => {
    const sketch = new CountMinSketch(1_000, { doorkeeper: true })
    sketch.increment(hashKey("k"))
    expect(sketch.frequency(hashKey("k"))).toBe(1)
    sketch.increment(hashKey("k"))
    expect(sketch.frequency(hashKey("k"))).toBe(2)
  })
})

describe("WTinyLfu", () => {
  it("keeps frequently used keys when a one-off scan passes through (frequency beats recency)", () => {
    const policy = new WTinyLfu<string, number>({ maxEntries: 100 })
    for (let i = 0; i < 60; i++) policy.set(`hot${i}`, i)
    for (let round = 0; round < 3; round++) for (let i = 0; i < 60; i++) policy.get(`hot${i}`)
    // 20× the capacity, each key once (shorter than the sketch's aging period: history still counts)
    for (let i = 0; i < 2_000; i++) policy.access(`scan${i}` as never)
    for (let i = 0; i < 60; i++) expect(policy.peek(`hot${i}`)).toBe(i)
    expect(policy.size).toBe(100)
  })

  it("beats LRU on a Zipf trace at the same capacity", () => {
    const trace = zipfTrace(10_000, 200_000, 0.9, 42)
    const policy = new WTinyLfu<number, number>({ maxEntries: 100 })
    let hits = 0
    for (const key of trace) if (policy.access(key)) hits++
    const lru = lruHits(trace, 100)
    // measured: ~0.20 vs ~0.14; the margin is far above seed noise
    expect(hits / trace.length).toBeGreaterThan((lru / trace.length) * 1.2)
  })

  it("grows the window on a recency-skewed trace and keeps it small on a frequency-skewed one", () => {
    const capacity = 100
    // recency: a working set of 80 keys sliding forward (every key is hot for a while, then never again)
    const random = prng(7)
    const recent = new WTinyLfu<number, number>({ maxEntries: capacity })
    for (let i = 0; i < 300_000; i++) recent.access(Math.floor(i / 10) + Math.floor(random() * 80))
    const frequent = new WTinyLfu<number, number>({ maxEntries: capacity })
    for (const key of zipfTrace(10_000, 300_000, 0.9, 8)) frequent.access(key)
    expect(recent.currentWindowFraction).toBeGreaterThan(0.05)
    expect(frequent.currentWindowFraction).toBeLessThan(0.05)
  })

  it("follows a recency-skewed trace to within 5% of LRU: the window can take the whole cache, and fast", () => {
    // Every key is hot for a while, then never again: the best split is all window (a plain LRU).
    // Before the window could pass 80% and before strong gains boosted the climber's steps, this
    // scored 0.68 against LRU's 0.89 (the window spent most of the run climbing).
    const random = prng(7)
    const trace = Array.from({ length: 200_000 }, (_, i) => Math.floor(i / 10) + Math.floor(random() * 80))
    const policy = new WTinyLfu<number, number>({ maxEntries: 100 })
    let hits = 0
    for (const key of trace) if (policy.access(key)) hits++
    expect(policy.currentWindowFraction).toBeGreaterThan(0.9)
    // measured: 0.877 vs LRU 0.895
    expect(hits).toBeGreaterThan(lruHits(trace, 100) * 0.95)
  })

  it("shrinks a full-cache window quickly when a frequency-skewed phase follows a recency-skewed one", () => {
    const random = prng(7)
    const policy = new WTinyLfu<number, number>({ maxEntries: 100 })
    for (let i = 0; i < 200_000; i++) policy.access(Math.floor(i / 10) + Math.floor(random() * 80))
    expect(policy.currentWindowFraction).toBeGreaterThan(0.9)
    let hits = 0
    const zipf = zipfTrace(10_000, 200_000, 0.9, 8).map((key) => key + 1_000_000)
    for (const key of zipf) if (policy.access(key)) hits++
    // The hit-rate drop marks a regime shift and the next probe is the largest: measured window 0.1%
    // and 0.40 hits; with steps of 6.25% (small gains, under the noise gate) the window stayed at 85%
    // and hits at 0.29.
    expect(policy.currentWindowFraction).toBeLessThan(0.2)
    expect(hits / zipf.length).toBeGreaterThan(0.35)
  })

  it("does not take a drop that recovers at once for a regime shift (periodic workloads)", () => {
    // Samples are 20 × capacity = 2,000 requests: all hits (10 hot keys) and all misses (new keys)
    // alternate, so every other sample drops by 100 points and the next one recovers.
    const policy = new WTinyLfu<number, number>({ maxEntries: 100 })
    let fresh = 1_000
    let largest = 0
    let window = policy.currentWindowFraction
    for (let period = 0; period < 200; period++) {
      for (let i = 0; i < 2_000; i++) {
        policy.access(period % 2 === 0 ? i % 10 : fresh++)
        const now = policy.currentWindowFraction
        // the first drop (before the first aging) starts the climber with one large probe: allowed
        if (period >= 20) largest = Math.max(largest, Math.abs(now - window))
        window = now
      }
    }
    // measured: 6.3% (ordinary steps); treating every drop as a shift moved it by 50% every 4 samples
    expect(largest).toBeLessThan(0.2)
  })

  it("with the window at 100%, evicts in LRU order", () => {
    const policy = new WTinyLfu<number, number>({ maxEntries: 10, initialWindowFraction: 1, adaptive: false })
    // key 0 is the most frequent, but a plain LRU does not care
    for (let round = 0; round < 5; round++) policy.access(0)
    for (let i = 1; i <= 10; i++) policy.access(i)
    expect(policy.peek(0)).toBeUndefined()
    for (let i = 1; i <= 10; i++) expect(policy.has(i)).toBe(true)
    expect(policy.regionSizes()).toEqual({ window: 10, probation: 0, protected: 0 })
  })

  it("bounds total weight, evicts by weight and refuses an entry heavier than the maximum", () => {
    const removed: Array<[string, RemovalReason]> = []
    const policy = new WTinyLfu<string, string>({
      maxEntries: 1_000,
      maxWeight: 100,
      onRemoval: (key, _, reason) => removed.push([key, reason])
    })
    for (let i = 0; i < 30; i++) {
      policy.set(`k${i}`, "v", 10)
      expect(policy.weightedSize).toBeLessThanOrEqual(100)
    }
    expect(policy.size).toBe(10)
    expect(removed.filter(([, r]) => r === "evicted").length).toBe(20)
    expect(policy.set("huge", "v", 101)).toBe(false)
    expect(policy.peek("huge")).toBeUndefined()
    expect(policy.weightedSize).toBe(100)
  })

  it("expires entries past their deadline lazily on get and in bulk with expire()", () => {
    const removed: Array<string> = []
    const policy = new WTinyLfu<string, number>({
      maxEntries: 10,
      onRemoval: (key, _, reason) => removed.push(`${reason}:${key}`)
    })
    policy.set("a", 1, 1, 100)
    policy.set("b", 2, 1, 200)
    policy.set("c", 3, 1)
    expect(policy.get("a", 99)).toBe(1)
    expect(policy.get("a", 100)).toBeUndefined()
    expect(policy.expire(500)).toBe(1)
    expect(removed).toEqual(["expired:a", "expired:b"])
    expect(policy.size).toBe(1)
    expect(policy.expirations).toBe(2)
  })

  it("scans every entry that stays present exactly once while others come and go", () => {
    const policy = new WTinyLfu<string, number>({ maxEntries: 1_000 })
    for (let i = 0; i < 200; i++) policy.set(`stay${i}`, i)
    for (let i = 0; i < 100; i++) policy.set(`churn${i}`, i)
    const seen: Array<string> = []
    let cursor = 0
    let step = 0
    while (cursor !== -1) {
      cursor = policy.scan(cursor, 17, (key) => {
        if (key.startsWith("stay")) seen.push(key)
      })
      // between pages, remove and add other entries
      policy.delete(`churn${step}`)
      policy.set(`new${step++}`, 0)
    }
    expect(seen.length).toBe(200)
    expect(new Set(seen).size).toBe(200)
  })

  it("ranks the hottest keys by frequency", () => {
    const policy = new WTinyLfu<string, number>({ maxEntries: 100 })
    for (const key of ["a", "b", "c", "d"]) policy.set(key, 0)
    for (let i = 0; i < 9; i++) policy.get("c")
    for (let i = 0; i < 5; i++) policy.get("a")
    for (let i = 0; i < 2; i++) policy.get("d")
    expect(policy.hottest(3).map((h) => h.key)).toEqual(["c", "a", "d"])
  })

  it("matches a reference model: bounds hold and reads never return evicted or removed entries", () => {
    type Op =
      | { readonly op: "set"; readonly key: number; readonly weight: number; readonly ttl: number | null }
      | { readonly op: "get"; readonly key: number }
      | { readonly op: "delete"; readonly key: number }
      | { readonly op: "tick"; readonly by: number }
      | { readonly op: "expire" }
    const key = fc.integer({ min: 0, max: 40 })
    const op: fc.Arbitrary<Op> = fc.oneof(
      {
        weight: 4,
        arbitrary: fc.record({
          op: fc.constant("set" as const),
          key,
          weight: fc.integer({ min: 0, max: 40 }),
          ttl: fc.option(fc.integer({ min: 1, max: 50 }))
        })
      },
      { weight: 4, arbitrary: fc.record({ op: fc.constant("get" as const), key }) },
      { weight: 1, arbitrary: fc.record({ op: fc.constant("delete" as const), key }) },
      { weight: 1, arbitrary: fc.record({ op: fc.constant("tick" as const), by: fc.integer({ min: 1, max: 20 }) }) },
      { weight: 1, arbitrary: fc.record({ op: fc.constant("expire" as const) }) }
    )
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: 150 }),
        fc.array(op, { maxLength: 300 }),
        // short aging and climbing periods so that halving and window resizing happen within a run
        fc.record({
          sampleFactor: fc.constantFrom(0.5, 40),
          climbSampleFactor: fc.constantFrom(0.5, 10),
          initialWindowFraction: fc.constantFrom(0, 0.01, 0.3, 0.8),
          climber: fc.constantFrom("probing" as const, "caffeine" as const)
        }),
        (maxEntries, maxWeight, ops, tuning) => {
          // The model: what was written and not yet reported as removed.
          const model = new Map<number, { value: number; deadline: number; weight: number }>()
          let version = 0
          let replacing: number | undefined = undefined
          const policy = new WTinyLfu<number, number>({
            maxEntries,
            maxWeight,
            ...tuning,
            onRemoval: (k, value, reason) => {
              if (reason === "replaced") {
                expect(value).toBe(replacing)
              } else {
                expect(model.get(k)?.value).toBe(value)
                model.delete(k)
              }
            }
          })
          let now = 0
          for (const o of ops) {
            switch (o.op) {
              case "set": {
                const deadline = o.ttl === null ? Number.POSITIVE_INFINITY : now + o.ttl
                const value = ++version
                const before = model.get(o.key)
                replacing = before?.value
                model.set(o.key, { value, deadline, weight: o.weight })
                const accepted = policy.set(o.key, value, o.weight, deadline)
                expect(accepted).toBe(o.weight <= maxWeight)
                if (!accepted) {
                  if (before === undefined) model.delete(o.key)
                  else model.set(o.key, before)
                }
                break
              }
              case "get": {
                const got = policy.get(o.key, now)
                const expected = model.get(o.key)
                if (got !== undefined) {
                  expect(got).toBe(expected?.value)
                  expect(expected!.deadline).toBeGreaterThan(now)
                } else if (expected !== undefined) {
                  // a miss on a live model entry is impossible: nothing evicts on a read
                  expect(expected.deadline).toBeLessThanOrEqual(now)
                }
                break
              }
              case "delete": {
                const present = model.has(o.key)
                expect(policy.delete(o.key)).toBe(present)
                expect(model.has(o.key)).toBe(false)
                break
              }
              case "tick":
                now += o.by
                break
              case "expire":
                policy.expire(now)
                for (const [, e] of model) expect(e.deadline).toBeGreaterThan(now)
                break
            }
            expect(policy.size).toBeLessThanOrEqual(maxEntries)
            expect(policy.weightedSize).toBeLessThanOrEqual(maxWeight)
            expect(policy.size).toBe(model.size)
            let weight = 0
            for (const [k, e] of model) {
              weight += e.weight
              expect(policy.peek(k, Number.NEGATIVE_INFINITY)).toBe(e.value)
            }
            expect(policy.weightedSize).toBe(weight)
          }
        }
      ),
      { numRuns: 200 }
    )
  })
})

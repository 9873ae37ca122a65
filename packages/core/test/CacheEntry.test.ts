import { CacheEntry } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, FastCheck as fc } from "effect"

describe("CacheEntry wire format", () => {
  it("round-trips any value bytes and metadata", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 512 }),
        fc.array(fc.string(), { maxLength: 5 }),
        fc.integer({ min: 0, max: 2 ** 45 }),
        fc.option(fc.integer({ min: 0, max: 2 ** 40 }), { nil: undefined }),
        (value, tags, createdAt, ttl) => {
          const entry = CacheEntry.make({
            value,
            createdAt,
            expiresAt: ttl === undefined ? Number.POSITIVE_INFINITY : createdAt + ttl,
            tags,
            meta: { "content-type": "x/y" }
          })
          const decoded = CacheEntry.decodeEither("k", CacheEntry.encode(entry))
          expect(Either.getOrThrow(decoded)).toEqual(entry)
        }
      )
    )
  })

  it("rejects truncated, foreign and future-version bytes with DecodeError", () =>
    Effect.gen(function*() {
      const bytes = CacheEntry.encode(CacheEntry.make({ value: new Uint8Array([1, 2, 3]), createdAt: 1, expiresAt: 2 }))
      for (const bad of [bytes.subarray(0, bytes.length - 1), new Uint8Array([1, 2, 3]), new Uint8Array(0)]) {
        const error = yield* Effect.flip(CacheEntry.decode("k", bad))
        expect(error._tag).toBe("DecodeError")
      }
      const future = bytes.slice()
      future[2] = 2
      const error = yield* Effect.flip(CacheEntry.decode("k", future))
      expect(error.message).toContain("version 2")
    }).pipe(Effect.runSync))

  const withHeader = (header: unknown, value = new Uint8Array([7])) => {
    const json = new TextEncoder().encode(JSON.stringify(header))
    const out = new Uint8Array(7 + json.length + value.length)
    out.set([0x43, 0x4b, 1])
    new DataView(out.buffer).setUint32(3, json.length)
    out.set(json, 7)
    out.set(value, 7 + json.length)
    return out
  }
  const good = { v: 1, createdAt: 1, expiresAt: 5, staleUntil: null, tags: ["a"], size: 1 }

  it("rejects headers whose fields have the wrong types", () => {
    for (
      const bad of [
        { ...good, createdAt: "1" },
        { ...good, expiresAt: "soon" },
        { ...good, tags: [1] },
        { ...good, tags: "a" },
        { ...good, meta: { a: 1 } },
        { ...good, size: 2 },
        [good],
        null
      ]
    ) {
      expect(Either.isLeft(CacheEntry.decodeEither("k", withHeader(bad)))).toBe(true)
    }
  })

  it("reads a header with fields a later release added (same version), ignoring them", () => {
    const decoded = CacheEntry.decodeEither("k", withHeader({ ...good, addedLater: { x: 1 } }))
    const entry = Either.getOrThrow(decoded)
    expect(entry.expiresAt).toBe(5)
    expect(entry.staleUntil).toBe(Number.POSITIVE_INFINITY)
    expect(entry.tags).toEqual(["a"])
  })

  describe("the fast header reader (straight from the bytes)", () => {
    const time = fc.oneof(
      fc.integer({ min: 0, max: 2 ** 45 }),
      fc.double({ noNaN: true, noDefaultInfinity: true, min: -1e16, max: 1e16 }),
      fc.constantFrom(0, 999_999_999_999_999, 1_000_000_000_000_000, 0.5, -1, 1e21)
    )
    const text = fc.oneof(
      fc.string(),
      fc.stringMatching(/^[ -~]{0,80}$/),
      fc.constantFrom("__proto__", "constructor", "a\"b")
    )
    const header = fc.record({
      createdAt: time,
      expiresAt: fc.option(time),
      staleUntil: fc.option(time),
      tags: fc.array(text, { maxLength: 4 }),
      meta: fc.option(fc.dictionary(text, text, { maxKeys: 4 }), { nil: undefined })
    })
    const encodeHeader = (h: typeof header extends fc.Arbitrary<infer H> ? H : never) =>
      withHeader({ v: 1, ...h, size: 1, ...(h.meta === undefined ? {} : { meta: h.meta }) })

    it("reads every header exactly as JSON.parse + the Schema does, or leaves it to them", () => {
      fc.assert(
        fc.property(header, (h) => {
          const bytes = encodeHeader(h)
          const fast = CacheEntry.decodeHeaderFast(bytes)
          if (fast !== undefined) expect(fast).toStrictEqual(Either.getOrThrow(CacheEntry.decodeHeaderSlowly(bytes)))
        }),
        { numRuns: 2000 }
      )
    })

    it("never accepts a corrupted header the general way rejects or reads differently", () => {
      const base = CacheEntry.encode(
        CacheEntry.make({
          value: new Uint8Array([1]),
          createdAt: 1_700_000_000_000,
          expiresAt: 1_700_000_060_000,
          tags: ["a", "b-c"],
          meta: { "content-type": "text/plain", x: "" }
        })
      )
      const headerLength = new DataView(base.buffer).getUint32(3)
      fc.assert(
        fc.property(
          fc.integer({ min: 7, max: 6 + headerLength }),
          fc.integer({ min: 0, max: 255 }),
          (at, byte) => {
            const bytes = base.slice()
            bytes[at] = byte
            const fast = CacheEntry.decodeHeaderFast(bytes)
            if (fast === undefined) return
            const slow = CacheEntry.decodeHeaderSlowly(bytes)
            expect(Either.isRight(slow)).toBe(true)
            expect(fast).toStrictEqual(Either.getOrThrow(slow))
          }
        ),
        { numRuns: 3000 }
      )
    })

    it("takes the headers encode writes for plain entries (integer times, ASCII tags and meta)", () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 0, max: 2 ** 45 }),
          fc.option(fc.integer({ min: 0, max: 2 ** 40 }), { nil: undefined }),
          fc.array(fc.stringMatching(/^[a-z0-9:._-]{1,20}$/), { maxLength: 4 }),
          fc.option(fc.dictionary(fc.stringMatching(/^[a-z-]{1,12}$/), fc.stringMatching(/^[ -!#-[\]-~]{0,40}$/)), {
            nil: undefined
          }),
          (createdAt, ttl, tags, meta) => {
            const entry = CacheEntry.make({
              value: new Uint8Array([1, 2]),
              createdAt,
              expiresAt: ttl === undefined ? Number.POSITIVE_INFINITY : createdAt + ttl,
              tags,
              meta
            })
            const bytes = CacheEntry.encode(entry)
            expect(CacheEntry.decodeHeaderFast(bytes)).toBeDefined()
            expect(Either.getOrThrow(CacheEntry.decodeEither("k", bytes))).toEqual(entry)
          }
        )
      )
    })

    it("takes meta keys that objects inherit (constructor, toString) as ordinary keys", () => {
      // found by the property above (seed 719732714): `k in meta` saw Object.prototype's keys as repeats
      const meta = { constructor: "", toString: "x", hasOwnProperty: "y" }
      const entry = CacheEntry.make({ value: new Uint8Array([1]), createdAt: 1, expiresAt: 2, tags: [], meta })
      const bytes = CacheEntry.encode(entry)
      expect(CacheEntry.decodeHeaderFast(bytes)?.meta).toEqual(meta)
      expect(Either.getOrThrow(CacheEntry.decodeHeaderSlowly(bytes)).meta).toEqual(meta)
    })
  })
})

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
})

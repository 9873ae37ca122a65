/**
 * Bad stored bytes and bad keys through the `Cache` service (fast-check): a Schema-typed read of an
 * entry whose bytes are anything at all (foreign JSON, truncated JSON, binary, the right JSON with
 * the wrong shape) is a miss that computes again, never a crash; empty and over-long keys are a
 * typed `InvalidKey`, and keys the memory backend can keep apart (unpaired surrogates vs U+FFFD) stay
 * apart (the shared backends refuse them: packages/backends/test/reliability).
 */
import { Cache, MemoryBackend } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, FastCheck as fc, Option, Schema } from "effect"

const RUNS = Number(process.env["CACHEKIT_SOAK_FUZZ_RUNS"] ?? "200")

const User = Schema.Struct({ id: Schema.Number, name: Schema.String, roles: Schema.Array(Schema.String) })
const alice = { id: 1, name: "alice", roles: ["admin"] }

const stored = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  fc.json().map((text) => new TextEncoder().encode(text)),
  fc.anything().map((value) => new TextEncoder().encode(JSON.stringify(value) ?? "null")),
  fc.record({ id: fc.oneof(fc.string(), fc.double()), name: fc.oneof(fc.nat(), fc.string()) }).map((value) =>
    new TextEncoder().encode(JSON.stringify(value))
  ),
  fc.nat({ max: 40 }).map((n) => new TextEncoder().encode(JSON.stringify(alice).slice(0, n)))
)

const env = Cache.layer({ ttl: "1 minute" }).pipe(
  (layer) => Effect.provide(layer),
  (provide) => (effect: Effect.Effect<void, unknown, Cache.Cache>) =>
    effect.pipe(provide, Effect.provide(MemoryBackend.layer({ maxEntries: 10_000 })))
)

describe("Cache under bad stored bytes and bad keys", () => {
  it.effect(`${RUNS} arbitrary stored byte strings: a typed read is a miss or a valid value, never a crash`, () =>
    env(Effect.gen(function*() {
      const cache = yield* Cache.Cache
      const users = cache.typed(User)
      let recomputed = 0
      const samples = fc.sample(stored, { numRuns: RUNS, seed: 31337 })
      for (const [i, bytes] of samples.entries()) {
        const key = `user:${i}`
        yield* cache.set(key, bytes)
        const read = yield* Effect.exit(users.get(key))
        // either a miss, or the bytes really were a valid User
        expect(Exit.isSuccess(read) || (read.cause._tag === "Fail" && read.cause.error._tag === "DecodeError")).toBe(
          true
        )
        if (Exit.isSuccess(read) && Option.isSome(read.value)) {
          expect(Schema.is(User)(read.value.value)).toBe(true)
          continue
        }
        const value = yield* users.getOrCompute(key, Effect.succeed(alice))
        expect(value).toEqual(alice)
        recomputed++
        // and the recomputed value replaced the bad bytes
        expect(yield* users.get(key)).toEqual(Option.some(alice))
      }
      expect(recomputed).toBeGreaterThan(RUNS * 0.9)
    })))

  it.effect("empty or over-long keys are refused with InvalidKey; unpaired surrogates never share an entry", () =>
    env(Effect.gen(function*() {
      const cache = yield* Cache.Cache
      for (const key of ["", "k".repeat(5000)]) {
        const exit = yield* Effect.exit(cache.getOrCompute(key, Effect.succeed(new Uint8Array([1]))))
        expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag, JSON.stringify(key)).toBe(
          "InvalidKey"
        )
      }
      expect(yield* cache.getOrCompute("\ud800", Effect.succeed(new Uint8Array([1])))).toEqual(new Uint8Array([1]))
      expect(yield* cache.getOrCompute("\ufffd", Effect.succeed(new Uint8Array([2])))).toEqual(new Uint8Array([2]))
      expect(yield* cache.get("\ud800")).toEqual(Option.some(new Uint8Array([1])))
      // a well-formed astral character is fine
      expect(yield* cache.getOrCompute("emoji:😀", Effect.succeed(new Uint8Array([7])))).toEqual(new Uint8Array([7]))
    })))
})

import { OperationLog } from "@cachekit/admin"
import { CacheEntry, MemoryBackend } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, FiberRef, Option, Random } from "effect"

const collect = (options: OperationLog.Options = {}) => {
  const lines: Array<Record<string, unknown>> = []
  const log = OperationLog.make({
    ...options,
    write: (line) => Effect.sync(() => void lines.push(JSON.parse(line)))
  })
  return { lines, log }
}

const read = { op: "cache.get", outcome: "hit", mutating: false, durationMillis: 1, keys: ["k"] } as const

describe("OperationLog", () => {
  it.effect("writes one JSON line per operation with time, op, outcome, duration and request id", () =>
    Effect.gen(function*() {
      const { lines, log } = collect()
      yield* log.log({ ...read, count: 3 }).pipe(Effect.locally(OperationLog.currentRequestId, Option.some("r-1")))
      expect(lines).toEqual([{
        ts: "1970-01-01T00:00:00.000Z",
        op: "cache.get",
        outcome: "hit",
        durationMs: 1,
        requestId: "r-1",
        keys: ["k"],
        count: 3,
        sampleRate: 1
      }])
    }))

  it.effect("samples reads at the configured rate but always writes mutations", () =>
    Effect.gen(function*() {
      const { lines, log } = collect({ sampleRate: 0.25 })
      for (let i = 0; i < 400; i++) yield* log.log(read)
      const reads = lines.length
      expect(reads).toBeGreaterThan(60)
      expect(reads).toBeLessThan(140)
      for (let i = 0; i < 10; i++) yield* log.log({ ...read, op: "admin.invalidate", mutating: true })
      expect(lines.length - reads).toBe(10)
      expect(lines.at(-1)!.sampleRate).toBe(1)
      expect(lines[0]!.sampleRate).toBe(0.25)
    }).pipe(Effect.withRandom(Random.make("seed"))))

  it.effect("a sample rate of 0 writes no reads", () =>
    Effect.gen(function*() {
      const { lines, log } = collect({ sampleRate: 0 })
      for (let i = 0; i < 50; i++) yield* log.log(read)
      expect(lines).toEqual([])
    }))

  it.effect("hashes keys and patterns to a sha256 prefix when configured, and caps the key list", () =>
    Effect.gen(function*() {
      const { lines, log } = collect({ hashKeys: true, maxKeysPerLine: 2 })
      yield* log.log({ ...read, keys: ["user:1", "user:2", "user:3"], pattern: "user:*" })
      const line = lines[0]!
      expect(line.keys).toEqual([OperationLog.hashKey("user:1"), OperationLog.hashKey("user:2")])
      expect(line.keysOmitted).toBe(1)
      expect(line.pattern).toBe(OperationLog.hashKey("user:*"))
      expect(JSON.stringify(line)).not.toContain("user:")
      // the first 16 hex digits of sha256("abc")
      expect(OperationLog.hashKey("abc")).toBe("sha256:ba7816bf8f01cfea")
    }))

  it.scoped("wrapBackend logs gets as hit or miss, and sets and deletes always", () =>
    Effect.gen(function*() {
      const { lines, log } = collect({ sampleRate: 1 })
      const backend = OperationLog.wrapBackend(yield* MemoryBackend.make({}), log)
      yield* backend.set("a", CacheEntry.make({ value: new Uint8Array([1, 2]), createdAt: 0, expiresAt: 10_000 }))
      yield* backend.get("a")
      yield* backend.get("b")
      yield* backend.delete("a")
      yield* backend.delete("a")
      expect(lines.map((l) => `${l.op}:${l.outcome}`)).toEqual([
        "cache.set:ok",
        "cache.get:hit",
        "cache.get:miss",
        "cache.delete:removed",
        "cache.delete:absent"
      ])
      expect(backend.unsafeGetSync).toBeUndefined()
    }))

  it.effect("logs a failed operation with the outcome error", () =>
    Effect.gen(function*() {
      const { lines, log } = collect()
      const result = yield* Effect.either(
        OperationLog.timed(log, Effect.fail("boom"), () => ({ op: "x", outcome: "ok", mutating: true }))
      )
      expect(result._tag).toBe("Left")
      expect(lines[0]!.outcome).toBe("error")
      expect(yield* FiberRef.get(OperationLog.currentRequestId)).toEqual(Option.none())
    }))
})

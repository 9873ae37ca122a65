/**
 * The body writer under backend faults: a streaming backend that fails at any point (before reading,
 * mid-body, or after the whole body when committing: a rename or fsync on a full disk) never holds
 * up the caller's stream, and the writer reports "failed" so waiting requests go upstream.
 */
import type { CacheBackend } from "@cachekit/core"
import { CacheError } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Stream } from "effect"
import { tee } from "../../src/internal/bodyStore.js"
import { makeWriter } from "../../src/internal/bodyStore.js"

type FailAt = "before" | "middle" | "after"

const failingBackend = (failAt: FailAt): CacheBackend.CacheBackend => {
  const unavailable = Effect.fail(CacheError.backendUnavailable("faulty", "write", "disk full"))
  return {
    name: "faulty",
    get: () => Effect.succeedNone,
    set: () => unavailable,
    delete: () => Effect.succeed(false),
    clear: Effect.void,
    health: Effect.succeed({ backend: "faulty", status: "down", latencyMillis: 0 }),
    streaming: {
      getStream: () => Effect.succeedNone,
      setStream: (_key, _entry, body) =>
        failAt === "before"
          ? unavailable
          : failAt === "middle"
          ? Stream.runDrain(Stream.take(body, 1)).pipe(Effect.zipRight(unavailable))
          : Stream.runDrain(body).pipe(Effect.zipRight(unavailable))
    }
  }
}

const template = { createdAt: 0, expiresAt: 60_000, staleUntil: 60_000, tags: [] }
const chunks = Array.from({ length: 40 }, (_, i) => new Uint8Array(1024).fill(i))

describe("body writer under backend faults", () => {
  for (const failAt of ["before", "middle", "after"] as const) {
    it.scopedLive(`a backend failing ${failAt} the body: the caller gets every byte and the writer says failed`, () =>
      Effect.gen(function*() {
        const scope = yield* Effect.scope
        let outcome: string | undefined
        const body = tee(
          Stream.fromIterable(chunks),
          makeWriter(failingBackend(failAt), "k", template, 1024 * 1024, scope),
          (written) => Effect.sync(() => void (outcome = written))
        )
        const got = yield* Stream.runCollect(body).pipe(Effect.timeout("5 seconds"))
        expect(Chunk.size(got)).toBe(chunks.length)
        expect(outcome).toBe("failed")
      }))
  }
})

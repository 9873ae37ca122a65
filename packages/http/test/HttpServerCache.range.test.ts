import { DiskBackend } from "@cachekit/backends"
import { CacheBackend, MemoryBackend } from "@cachekit/core"
import { HttpServerCache } from "@cachekit/http"
import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Stream } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fetchRaw, serve } from "./HttpServerCacheFixtures.js"

const MiB = 1024 * 1024

/** Byte `i` of the generated bodies. */
const byteAt = (i: number) => i % 251
/** One piece, reused for every emission: its length is a multiple of 251, so every piece starts at byte 0. */
const PIECE = Uint8Array.from({ length: 251 * 256 }, (_, j) => byteAt(j))

/** A `size`-byte body generated lazily (no allocation per piece), with Content-Length. */
const generated = (size: number) =>
  HttpServerResponse.stream(
    Stream.unfold(0, (offset) =>
      offset >= size ? Option.none() : Option.some(
        [
          offset + PIECE.byteLength > size ? PIECE.subarray(0, size - offset) : PIECE,
          offset + PIECE.byteLength
        ] as const
      )),
    { contentType: "application/octet-stream", contentLength: size }
  )

const expectBytes = (body: Buffer, start: number) => {
  for (let i = 0; i < body.byteLength; i += 997) expect(body[i]).toBe(byteAt(start + i))
  expect(body[body.byteLength - 1]).toBe(byteAt(start + body.byteLength - 1))
}

describe("HttpServerCache chunked storage and ranges", () => {
  it.scopedLive(
    "serves a 100 MiB body by Range requests, caching only the chunks asked for, in bounded memory",
    () =>
      Effect.gen(function*() {
        const size = 100 * MiB
        let calls = 0
        const app = HttpRouter.empty.pipe(
          HttpRouter.get("/big", Effect.sync(() => (calls++, generated(size)))),
          HttpServerCache.middleware({ chunkSize: MiB, chunkThreshold: 8 * MiB })
        )
        const backend = yield* MemoryBackend.make({ maxBytes: 512 * MiB })
        const { base } = yield* serve(app, {}, Layer.succeed(CacheBackend.CacheBackendTag, backend))

        let peak = 0
        const baseline = process.memoryUsage()
        const sampler = setInterval(() => {
          const now = process.memoryUsage()
          peak = Math.max(peak, now.arrayBuffers - baseline.arrayBuffers + now.heapUsed - baseline.heapUsed)
        }, 5)
        yield* Effect.addFinalizer(() => Effect.sync(() => clearInterval(sampler)))

        const ranges: ReadonlyArray<readonly [number, number]> = [
          [0, 99],
          [50 * MiB - 10, 51 * MiB + 10], // spans three chunks
          [size - 1000, size - 1],
          [10 * MiB + 5, 10 * MiB + 20]
        ]
        for (const [start, end] of ranges) {
          const reply = yield* fetchRaw(`${base}/big`, { range: `bytes=${start}-${end}` })
          expect(reply.status).toBe(206)
          expect(reply.headers["content-range"]).toBe(`bytes ${start}-${end}/${size}`)
          expect(reply.body.byteLength).toBe(end - start + 1)
          expectBytes(reply.body, start)
        }
        const handlerCalls = calls
        expect(handlerCalls).toBe(ranges.length)
        // Again: every chunk is cached now, the handler is not called.
        for (const [start, end] of ranges) {
          const reply = yield* fetchRaw(`${base}/big`, { range: `bytes=${start}-${end}` })
          expect(reply.status).toBe(206)
          expectBytes(reply.body, start)
        }
        expect(calls).toBe(handlerCalls)
        // Only the chunks asked for were stored: 1 + 3 + 1 + 1 of 100.
        const stats = yield* backend.stats
        expect(stats.bytes).toBeLessThanOrEqual(6 * MiB + 64 * 1024)
        expect(stats.bytes).toBeGreaterThanOrEqual(5 * MiB)
        // A generous sanity bound: far below the body's 100 MiB.
        expect(peak).toBeLessThan(48 * MiB)
      }),
    60_000
  )

  it.scopedLive("stores a body over the threshold in chunks on a full GET and serves it and its ranges from them", () =>
    Effect.gen(function*() {
      const size = 3 * MiB + 123
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/file", Effect.sync(() => (calls++, generated(size)))),
        HttpRouter.get(
          "/unsized",
          Effect.sync(() => (calls++, HttpServerResponse.stream(Stream.range(0, 40).pipe(Stream.map(() => PIECE)))))
        ),
        HttpServerCache.middleware({ chunkSize: 256 * 1024, chunkThreshold: MiB })
      )
      const { base } = yield* serve(app)
      const miss = yield* fetchRaw(`${base}/file`)
      expect(miss.body.byteLength).toBe(size)
      const hit = yield* fetchRaw(`${base}/file`)
      expect(hit.headers["cache-status"]).toContain("hit")
      expect(hit.body.equals(miss.body)).toBe(true)
      expect(hit.headers["etag"]).toMatch(/^"ck-/)
      const range = yield* fetchRaw(`${base}/file`, { range: `bytes=${MiB - 3}-${2 * MiB + 3}` })
      expect(range.status).toBe(206)
      expectBytes(range.body, MiB - 3)
      // No Content-Length: discovered past the threshold while streaming.
      const unsizedMiss = yield* fetchRaw(`${base}/unsized`)
      const unsizedHit = yield* fetchRaw(`${base}/unsized`)
      expect(unsizedMiss.body.byteLength).toBe(41 * PIECE.byteLength)
      expect(unsizedHit.body.equals(unsizedMiss.body)).toBe(true)
      expect(unsizedHit.headers["cache-status"]).toContain("hit")
      expect(calls).toBe(2)
    }))

  it.scopedLive("keeps chunked bodies on the disk backend and purges them by tag through its own index", () =>
    Effect.gen(function*() {
      const size = 2 * MiB + 7
      let calls = 0
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/disk", Effect.sync(() => (calls++, generated(size)))),
        HttpServerCache.middleware({ chunkSize: 256 * 1024, chunkThreshold: 512 * 1024, tags: () => ["files"] })
      )
      const directory = mkdtempSync(join(tmpdir(), "cachekit-server-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(directory, { recursive: true, force: true })))
      const disk = DiskBackend.layer({ directory, fsync: false }).pipe(Layer.orDie)
      const { base, cache } = yield* serve(app, {}, disk)
      const miss = yield* fetchRaw(`${base}/disk`)
      const hit = yield* fetchRaw(`${base}/disk`)
      expect(hit.headers["cache-status"]).toContain("hit")
      expect(hit.body.equals(miss.body)).toBe(true)
      const range = yield* fetchRaw(`${base}/disk`, { range: `bytes=${size - 300000}-` })
      expect(range.status).toBe(206)
      expectBytes(range.body, size - 300000)
      expect(calls).toBe(1)
      // The manifest and its 9 chunks carry the tag.
      expect(yield* cache.invalidateTags(["files"])).toBe(10)
      yield* fetchRaw(`${base}/disk`)
      expect(calls).toBe(2)
    }))
})

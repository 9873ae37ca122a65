/**
 * A hit whose body lives only on the disk tier of the command's default backend (memory L1 + disk
 * L2) is written to the socket from the disk's lending read (`StreamedEntry.readInto`: one reused
 * buffer, each chunk written before the next is read), not from its Effect stream. The backend is
 * wrapped so that the Effect stream of a lendable body dies if anyone reads it, and lent chunks
 * are counted.
 */
import type { CacheError } from "@cachekit/core"
import { CacheBackend } from "@cachekit/core"
import { Proxy } from "@cachekit/http"
import { HttpServerResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Stream } from "effect"
import { randomBytes } from "node:crypto"
import { readdir, readFile, writeFile } from "node:fs/promises"
import * as Http from "node:http"
import * as Path from "node:path"
import * as proxyBackends from "../src/internal/proxyBackends.js"
import type { Routes } from "./fixtures/proxyOrigin.js"
import { agent, fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"
import { tempDir } from "./fixtures/proxyRun.js"

/** Over the default L1 bound (1 MiB): on disk only. Not a multiple of the 64 KiB read size. */
const SIZE = 3 * 1024 * 1024 + 123
const body = randomBytes(SIZE)
const other = randomBytes(SIZE - 4321)

const routes: Routes = {
  "/other": () =>
    Effect.succeed(
      HttpServerResponse.uint8Array(other, {
        headers: { "cache-control": "public, max-age=600", "content-type": "application/octet-stream" }
      })
    ),
  "/big": () =>
    Effect.succeed(
      HttpServerResponse.uint8Array(body, {
        headers: { "cache-control": "public, max-age=600", "content-type": "application/octet-stream" }
      })
    )
}

interface Lent {
  calls: number
  /** Calls through `lendTo` (chunks to a callback), of `calls`. */
  callbackCalls: number
  chunks: number
  bytes: number
}

/** Spoils a lent chunk once its consumer is done with it, as a reuse of its buffer would. */
const spoil = (chunk: Uint8Array) => {
  for (let i = 0; i < chunk.byteLength; i++) chunk[i] = chunk[i]! ^ 0xff
}

/**
 * `backend` whose streamed reads count lent chunks, spoil each one once its consumer is done with it,
 * and refuse their Effect stream when they can lend.
 */
const spied = (backend: CacheBackend.CacheBackend, lent: Lent, offerLendTo: boolean): CacheBackend.CacheBackend => {
  const streaming = backend.streaming!
  return {
    ...backend,
    streaming: {
      ...streaming,
      getStream: (key) =>
        Effect.map(
          streaming.getStream(key),
          Option.map((found): CacheBackend.StreamedEntry => {
            const readInto = found.readInto
            const lendTo = found.lendTo
            if (readInto === undefined) return found
            return {
              entry: found.entry,
              body: Stream.die("the Effect stream of a lendable body was read"),
              readInto: <E, R>(f: (chunk: Uint8Array) => Effect.Effect<void, E, R>) => {
                lent.calls++
                return readInto((chunk: Uint8Array) => {
                  lent.chunks++
                  lent.bytes += chunk.byteLength
                  // the chunk is lent until f completes: spoil it then, as a reuse of its buffer would
                  // (the disk has hashed it already), so a consumer that kept a view sends wrong bytes
                  return Effect.tap(f(chunk), () => Effect.sync(() => spoil(chunk)))
                }) as Effect.Effect<void, CacheError.CacheError | E, R>
              },
              lendTo: lendTo === undefined || !offerLendTo ?
                undefined :
                <E>(write: CacheBackend.LentChunkWriter<E>) => {
                  lent.calls++
                  lent.callbackCalls++
                  return lendTo<E>((chunk, done) => {
                    lent.chunks++
                    lent.bytes += chunk.byteLength
                    // lent until done: spoiled then, as above
                    write(chunk, (error) => {
                      spoil(chunk)
                      done(error)
                    })
                  })
                }
            }
          })
        )
    }
  }
}

/** The proxy over the default backend in a temp dir, with the spy between them. */
const rigWith = (offerLendTo: boolean) =>
  Effect.gen(function*() {
    const dir = yield* tempDir
    const cache = yield* proxyBackends.make({
      backend: proxyBackends.defaults.backend,
      memoryMaxBytes: Option.none(),
      l1MaxEntrySize: Option.none(),
      diskDir: Option.some(dir),
      bus: "auto",
      demo: false
    })
    const lent: Lent = { calls: 0, callbackCalls: 0, chunks: 0, bytes: 0 }
    const origin = yield* OriginTag
    const proxy = yield* Layer.build(
      Proxy.layerCaching({ upstream: origin.url, port: 0 }).pipe(
        Layer.provide(Layer.succeed(CacheBackend.CacheBackendTag, spied(cache.backend, lent, offerLendTo))),
        Layer.provide(NodeHttpClient.layerUndici)
      )
    )
    const url = `${Context.get(proxy, Proxy.ProxyTag).url}/big`
    return { dir, lent, origin, url }
  })
const rig = rigWith(true)

/** A GET read with node:http that tells a clean end from a connection cut mid-body. */
const getRaw = (url: string) =>
  Effect.async<{ readonly status: number; readonly received: number; readonly complete: boolean }>((resume) => {
    let received = 0
    let status = 0
    let done = false
    const finish = (complete: boolean) => {
      if (done) return
      done = true
      resume(Effect.succeed({ status, received, complete }))
    }
    const req = Http.get(url, { agent: false }, (res) => {
      status = res.statusCode ?? 0
      res.on("data", (chunk: Buffer) => (received += chunk.byteLength))
      res.on("end", () => finish(res.complete))
      res.on("aborted", () => finish(false))
      res.on("error", () => finish(false))
      res.on("close", () => finish(res.complete))
    })
    req.on("error", () => finish(false))
  })

/** A GET whose client goes away after its first body bytes; resolves once it is gone. */
const abandonAfterFirstChunk = (url: string) =>
  Effect.async<number>((resume) => {
    const req = Http.get(url, { agent: false }, (res) => {
      res.once("data", (chunk: Buffer) => {
        req.destroy()
        resume(Effect.succeed(chunk.byteLength))
      })
    })
    req.on("error", () => undefined)
  })

describe("Proxy: a disk-only body is served through the backend's lending read", () => {
  it.scopedLive("serves a multi-MiB hit byte-exact from lent chunks, never reading its Effect stream", () =>
    Effect.gen(function*() {
      const { lent, origin, url } = yield* rig
      const dispatcher = yield* agent
      const miss = yield* fetchVia(url, { dispatcher })
      expect(miss.body.equals(body)).toBe(true)
      expect(lent.calls).toBe(0)

      for (let i = 1; i <= 2; i++) {
        const hit = yield* fetchVia(url, { dispatcher })
        expect(hit.status).toBe(200)
        expect(hit.headers["cache-status"]).toContain("hit")
        expect(hit.headers["content-length"]).toBe(String(SIZE))
        expect(hit.headers["content-type"]).toBe("application/octet-stream")
        expect(hit.body.byteLength).toBe(SIZE)
        expect(hit.body.equals(body)).toBe(true)
        expect(lent.calls).toBe(i)
      }
      expect(lent.bytes).toBe(2 * SIZE)
      expect(lent.chunks).toBe(2 * Math.ceil(SIZE / (64 * 1024)))
      // the disk offers chunks to a callback: the proxy takes that read (no effect per chunk)
      expect(lent.callbackCalls).toBe(2)
      expect(yield* origin.count("/big")).toBe(1)
      // HEAD of the same entry: headers only, through the existing path
      const head = yield* fetchVia(url, { dispatcher, method: "HEAD" })
      expect([head.status, head.body.byteLength, lent.calls]).toEqual([200, 0, 2])
    }).pipe(Effect.provide(layerOrigin(routes))))

  it.scopedLive("a backend that lends through readInto only (no lendTo) is served the same way", () =>
    Effect.gen(function*() {
      const { lent, url } = yield* rigWith(false)
      const dispatcher = yield* agent
      yield* fetchVia(url, { dispatcher })
      const hit = yield* fetchVia(url, { dispatcher })
      expect(hit.headers["cache-status"]).toContain("hit")
      expect(hit.body.equals(body)).toBe(true)
      expect([lent.calls, lent.callbackCalls, lent.bytes]).toEqual([1, 0, SIZE])
    }).pipe(Effect.provide(layerOrigin(routes))))

  it.scopedLive("concurrent hits of two bodies each get their own bytes (lent buffers are reused between reads)", () =>
    Effect.gen(function*() {
      const { lent, url } = yield* rig
      const otherUrl = url.replace(/\/big$/, "/other")
      const dispatcher = yield* agent
      yield* fetchVia(url, { dispatcher })
      yield* fetchVia(otherUrl, { dispatcher })
      for (let round = 0; round < 3; round++) {
        const got = yield* Effect.forEach(
          Array.from({ length: 8 }, (_, i) => i % 2 === 0 ? url : otherUrl),
          (target) => Effect.map(fetchVia(target, { dispatcher }), (res) => ({ target, res })),
          { concurrency: "unbounded" }
        )
        for (const { res, target } of got) {
          expect(res.headers["cache-status"]).toContain("hit")
          expect(res.body.equals(target === url ? body : other)).toBe(true)
        }
      }
      expect(lent.calls).toBe(24)
    }).pipe(Effect.provide(layerOrigin(routes))))

  it.scopedLive("a client that goes away mid-body stops the read; the entry still serves the next hit", () =>
    Effect.gen(function*() {
      const { lent, origin, url } = yield* rig
      const dispatcher = yield* agent
      yield* fetchVia(url, { dispatcher })
      expect((yield* fetchVia(url, { dispatcher })).body.equals(body)).toBe(true)
      const bytesBefore = lent.bytes
      expect(yield* abandonAfterFirstChunk(url)).toBeGreaterThan(0)
      // the read stops once the socket is gone (a few chunks may already be on their way)
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 200)))
      expect(lent.calls).toBe(2)
      expect(lent.bytes - bytesBefore).toBeLessThan(SIZE)
      const after = yield* fetchVia(url, { dispatcher })
      expect(after.headers["cache-status"]).toContain("hit")
      expect(after.body.equals(body)).toBe(true)
      expect([lent.calls, yield* origin.count("/big")]).toEqual([3, 1])
    }).pipe(Effect.provide(layerOrigin(routes))))

  it.scopedLive("a body altered on disk is cut mid-response (no clean end, not all bytes) and is a miss next time", () =>
    Effect.gen(function*() {
      const { dir, lent, origin, url } = yield* rig
      const dispatcher = yield* agent
      yield* fetchVia(url, { dispatcher })
      // a first hit: the body is stored (and lendable)
      expect((yield* fetchVia(url, { dispatcher })).body.equals(body)).toBe(true)
      expect(lent.calls).toBe(1)
      const shard = Path.join(dir, "content", "sha256")
      const files = yield* Effect.promise(async () => {
        const out: Array<string> = []
        for (const sub of await readdir(shard)) {
          for (const name of await readdir(Path.join(shard, sub))) out.push(Path.join(shard, sub, name))
        }
        return out
      })
      expect(files.length).toBe(1)
      // one bit flipped in the middle, same size: only the digest at the end can tell
      yield* Effect.promise(async () => {
        const stored = await readFile(files[0]!)
        stored[2 * 1024 * 1024] = stored[2 * 1024 * 1024]! ^ 1
        await writeFile(files[0]!, stored)
      })

      const cut = yield* getRaw(url)
      expect(cut.status).toBe(200)
      expect(lent.calls).toBe(2)
      expect(cut.complete).toBe(false)
      expect(cut.received).toBeLessThan(SIZE)

      const again = yield* fetchVia(url, { dispatcher })
      expect(again.headers["cache-status"]).toContain("fwd=")
      expect(again.body.equals(body)).toBe(true)
      expect(yield* origin.count("/big")).toBe(2)
    }).pipe(Effect.provide(layerOrigin(routes))))
})

/**
 * Distributed single-flight in the HttpClientCache miss path: two caching stacks in one process,
 * each with its own `RedisBackend` and `RedisSingleFlight` connections (so each coalesces only its
 * own misses, like two processes), on the Redis at 127.0.0.1:6379 under a unique prefix, in front
 * of one real origin that counts its requests.
 */
import { RedisBackend, RedisSingleFlight } from "@cachekit/backends"
import { CacheBackend } from "@cachekit/core"
import { HttpClientCache } from "@cachekit/http"
import { HttpClient, HttpClientRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpClient, NodeHttpServerRequest } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Stream } from "effect"
import * as net from "node:net"
import type { Handler } from "./HttpClientCacheFixtures.js"
import { OriginLive, OriginTag } from "./HttpClientCacheFixtures.js"

const REDIS_URL = "redis://127.0.0.1:6379"

const redisUp = Effect.async<boolean>((resume) => {
  const socket = net.connect({ host: "127.0.0.1", port: 6379 })
  socket.once("connect", () => {
    socket.destroy()
    resume(Effect.succeed(true))
  })
  socket.once("error", () => resume(Effect.succeed(false)))
})

let run = 0
/** A key prefix no other test (or earlier run) uses; its keys are cleared when the scope closes. */
const uniquePrefix = () => `cachekit-test:sf:${process.pid}:${Date.now()}:${++run}:`

/** One caching stack ("instance"): its own backend connection, its own gate when `gated`. */
const instance = (prefix: string, gated: boolean, flightOptions: RedisSingleFlight.Options = {}) =>
  Effect.gen(function*() {
    const backend = yield* RedisBackend.make({ url: REDIS_URL, prefix })
    yield* Effect.addFinalizer(() => Effect.ignore(backend.clear))
    const flight = gated
      ? yield* Effect.orDie(RedisSingleFlight.make({ url: REDIS_URL, prefix, ...flightOptions }))
      : undefined
    const upstream = yield* HttpClient.HttpClient
    return yield* HttpClientCache.withCache({
      shared: true,
      distributedSingleFlight: flight === undefined ? undefined : HttpClientCache.redisSingleFlight(flight)
    })(upstream).pipe(Effect.provideService(CacheBackend.CacheBackendTag, backend))
  })

/** Two instances on one prefix, or skipped (undefined) when Redis is not there. */
const twoInstances = (gated: boolean, flightOptions: RedisSingleFlight.Options = {}) =>
  Effect.gen(function*() {
    if (!(yield* redisUp)) {
      if (process.env["CACHEKIT_REQUIRE_SERVERS"] === "1") expect.fail("redis-server is not listening on 6379")
      return undefined
    }
    const prefix = uniquePrefix()
    return [
      yield* Effect.orDie(instance(prefix, gated, flightOptions)),
      yield* Effect.orDie(instance(prefix, gated, flightOptions))
    ] as const
  })

const route = (path: string, handler: Handler) => Effect.map(OriginTag, (origin) => origin.route(path, handler))
const calls = (path: string) => Effect.map(OriginTag, (origin) => origin.calls(path))

const getOrFail = (client: HttpClient.HttpClient, path: string, headers: Record<string, string> = {}) =>
  Effect.gen(function*() {
    const origin = yield* OriginTag
    const response = yield* client.execute(HttpClientRequest.get(origin.url(path), { headers }))
    return { status: response.status, body: yield* response.text, cacheStatus: response.headers["cache-status"] ?? "" }
  })

const get = (client: HttpClient.HttpClient, path: string, headers: Record<string, string> = {}) =>
  Effect.orDie(getOrFail(client, path, headers))

/** Answers after `millis` (a slow origin makes the misses overlap), counting requests in flight. */
const slow = (
  millis: number,
  respond: (call: Parameters<Handler>[0]) => HttpServerResponse.HttpServerResponse,
  inFlight: { now: number; max: number } = { now: 0, max: 0 }
): Handler =>
(call) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      inFlight.now++
      inFlight.max = Math.max(inFlight.max, inFlight.now)
    }),
    () => Effect.as(Effect.sleep(millis), respond(call)),
    () => Effect.sync(() => inFlight.now--)
  )

const layer = Layer.merge(OriginLive, NodeHttpClient.layerUndici)

describe("HttpClientCache distributed single-flight (two stacks, one Redis)", () => {
  it.scopedLive("100 concurrent misses spread over both instances reach the origin once", () =>
    Effect.gen(function*() {
      yield* route(
        "/stampede",
        slow(150, () => HttpServerResponse.text("the one body", { headers: { "cache-control": "public, max-age=60" } }))
      )
      const pair = yield* twoInstances(true)
      if (pair === undefined) return
      const [a, b] = pair
      const results = yield* Effect.all(
        Array.from({ length: 100 }, (_, i) => get(i % 2 === 0 ? a : b, "/stampede")),
        { concurrency: "unbounded" }
      )
      expect(yield* calls("/stampede")).toBe(1)
      expect(results.every((r) => r.status === 200 && r.body === "the one body")).toBe(true)
      // the other instance's callers were answered from the shared backend
      expect(results.filter((r) => r.cacheStatus.includes("hit")).length).toBe(99)
    }).pipe(Effect.provide(layer)))

  it.scopedLive("a 1 MiB body streamed through the fetching fiber reaches every caller whole, fetched once", () =>
    Effect.gen(function*() {
      const big = new Uint8Array(1024 * 1024).map((_, i) => i % 253)
      yield* route(
        "/big",
        slow(100, () =>
          HttpServerResponse.stream(Stream.make(big.subarray(0, 300_000), big.subarray(300_000)), {
            contentType: "application/octet-stream",
            contentLength: big.byteLength,
            headers: { "cache-control": "public, max-age=60" }
          }))
      )
      const pair = yield* twoInstances(true)
      if (pair === undefined) return
      const [a, b] = pair
      const origin = yield* OriginTag
      const bodies = yield* Effect.all(
        Array.from({ length: 20 }, (_, i) =>
          Effect.flatMap(
            Effect.orDie((i % 2 === 0 ? a : b).execute(HttpClientRequest.get(origin.url("/big")))),
            (response) => Effect.orDie(response.arrayBuffer)
          )),
        { concurrency: "unbounded" }
      )
      expect(yield* calls("/big")).toBe(1)
      expect(bodies.every((body) => Buffer.from(body).equals(Buffer.from(big)))).toBe(true)
    }).pipe(Effect.provide(layer)))

  it.scopedLive("without the gate the same stampede reaches the origin once per instance", () =>
    Effect.gen(function*() {
      yield* route(
        "/stampede-ungated",
        slow(150, () => HttpServerResponse.text("the one body", { headers: { "cache-control": "public, max-age=60" } }))
      )
      const pair = yield* twoInstances(false)
      if (pair === undefined) return
      const [a, b] = pair
      const results = yield* Effect.all(
        Array.from({ length: 100 }, (_, i) => get(i % 2 === 0 ? a : b, "/stampede-ungated")),
        { concurrency: "unbounded" }
      )
      expect(yield* calls("/stampede-ungated")).toBeGreaterThan(1)
      expect(results.every((r) => r.status === 200 && r.body === "the one body")).toBe(true)
    }).pipe(Effect.provide(layer)))

  it.scopedLive("a no-store response is not shared: the waiting instance fetches its own, after the first", () =>
    Effect.gen(function*() {
      const inFlight = { now: 0, max: 0 }
      yield* route(
        "/private-ish",
        slow(
          100,
          ({ n }) => HttpServerResponse.text(`answer ${n}`, { headers: { "cache-control": "no-store" } }),
          inFlight
        )
      )
      const pair = yield* twoInstances(true)
      if (pair === undefined) return
      const [a, b] = pair
      const [fromA, fromB] = yield* Effect.all([get(a, "/private-ish"), get(b, "/private-ish")], {
        concurrency: "unbounded"
      })
      // each instance got its own response (no-store is never handed over), one after the other:
      // the second waited for the first instance's outcome instead of running concurrently
      expect(yield* calls("/private-ish")).toBe(2)
      expect([fromA.body, fromB.body].sort()).toEqual(["answer 1", "answer 2"])
      expect(fromA.status).toBe(200)
      expect(fromB.status).toBe(200)
      expect(inFlight.max).toBe(1)
    }).pipe(Effect.provide(layer)))

  it.scopedLive("Vary variants are not mixed: the waiter re-reads its own variant and fetches it when absent", () =>
    Effect.gen(function*() {
      yield* route(
        "/greeting",
        slow(100, ({ request }) =>
          HttpServerResponse.text(`hello in ${request.headers["accept-language"] ?? "none"}`, {
            headers: { "cache-control": "public, max-age=60", vary: "accept-language" }
          }))
      )
      const pair = yield* twoInstances(true)
      if (pair === undefined) return
      const [a, b] = pair
      const results = yield* Effect.all(
        [
          ...Array.from(
            { length: 5 },
            () => Effect.map(get(a, "/greeting", { "accept-language": "en" }), (r) => ["en", r] as const)
          ),
          ...Array.from(
            { length: 5 },
            () => Effect.map(get(b, "/greeting", { "accept-language": "fr" }), (r) => ["fr", r] as const)
          )
        ],
        { concurrency: "unbounded" }
      )
      for (const [lang, r] of results) expect(r.body).toBe(`hello in ${lang}`)
      expect(yield* calls("/greeting")).toBe(2)
      // each variant is now in the shared backend, for both instances
      expect((yield* get(b, "/greeting", { "accept-language": "en" })).body).toBe("hello in en")
      expect((yield* get(a, "/greeting", { "accept-language": "fr" })).body).toBe("hello in fr")
      expect(yield* calls("/greeting")).toBe(2)
    }).pipe(Effect.provide(layer)))

  it.scopedLive("requests with Authorization bypass the gate (coalesced per instance only)", () =>
    Effect.gen(function*() {
      yield* route(
        "/mine",
        slow(
          100,
          () => HttpServerResponse.text("shared by design", { headers: { "cache-control": "public, max-age=60" } })
        )
      )
      const pair = yield* twoInstances(true)
      if (pair === undefined) return
      const [a, b] = pair
      const auth = { authorization: "Bearer someone" }
      yield* Effect.all(Array.from({ length: 10 }, (_, i) => get(i % 2 === 0 ? a : b, "/mine", auth)), {
        concurrency: "unbounded"
      })
      expect(yield* calls("/mine")).toBe(2)
    }).pipe(Effect.provide(layer)))

  it.scopedLive("when the fetching instance fails, one waiter takes over and every other caller gets its response", () =>
    Effect.gen(function*() {
      // the first request reaching the origin is cut off before any response head: that fetch fails
      yield* route("/flaky", ({ n, request }) =>
        n === 1
          ? Effect.zipRight(
            Effect.sync(() => NodeHttpServerRequest.toIncomingMessage(request).socket.destroy()),
            Effect.never
          )
          : Effect.as(
            Effect.sleep(100),
            HttpServerResponse.text(`good ${n}`, { headers: { "cache-control": "public, max-age=60" } })
          ))
      const pair = yield* twoInstances(true)
      if (pair === undefined) return
      const [a, b] = pair
      const results = yield* Effect.all(
        Array.from({ length: 6 }, (_, i) => Effect.either(getOrFail(i % 2 === 0 ? a : b, "/flaky"))),
        { concurrency: "unbounded" }
      )
      expect(yield* calls("/flaky")).toBe(2)
      // only the caller whose upstream request broke sees the error
      expect(results.filter((r) => r._tag === "Left").length).toBe(1)
      expect(results.filter((r) => r._tag === "Right").map((r) => r._tag === "Right" && r.right.body)).toEqual(
        Array(5).fill("good 2")
      )
    }).pipe(Effect.provide(layer)))

  it.scopedLive(
    "a caller that goes away while its instance fetches frees the key: the other instance fetches at once",
    () =>
      Effect.gen(function*() {
        // the first request hangs at the origin until its client gives up; later ones answer
        yield* route("/abandoned", ({ n }) =>
          n === 1
            ? Effect.never
            : Effect.succeed(
              HttpServerResponse.text(`answer ${n}`, { headers: { "cache-control": "public, max-age=60" } })
            ))
        // waiting for another instance would take a minute: only a released lock lets B finish in time
        const pair = yield* twoInstances(true, { waitTimeout: "60 seconds", pollInterval: "20 seconds" })
        if (pair === undefined) return
        const [a, b] = pair
        const first = yield* Effect.fork(get(a, "/abandoned"))
        while ((yield* calls("/abandoned")) === 0) yield* Effect.sleep("5 millis")
        const second = yield* Effect.fork(get(b, "/abandoned"))
        yield* Effect.sleep("100 millis") // B is waiting on A's lock now
        expect(yield* calls("/abandoned")).toBe(1)
        yield* Fiber.interrupt(first)
        const answer = yield* Fiber.join(second).pipe(Effect.timeout("10 seconds"))
        expect(answer.body).toBe("answer 2")
        expect(yield* calls("/abandoned")).toBe(2)
      }).pipe(Effect.provide(layer)),
    30_000
  )
})

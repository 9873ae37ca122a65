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
import { hasRedis, redisServer } from "./fixtures/proxyProcess.js"
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

/**
 * One caching stack ("instance"): its own backend connection, its own gate when `gated` (on the
 * same Redis unless `flightOptions.url` says otherwise).
 */
const instanceWithFlight = (
  prefix: string,
  gated: boolean,
  flightOptions: RedisSingleFlight.Options = {},
  cacheOptions: HttpClientCache.Options = {}
) =>
  Effect.gen(function*() {
    const backend = yield* RedisBackend.make({ url: REDIS_URL, prefix })
    yield* Effect.addFinalizer(() => Effect.ignore(backend.clear))
    const flight = gated
      ? yield* Effect.orDie(RedisSingleFlight.make({ url: REDIS_URL, prefix, ...flightOptions }))
      : undefined
    const upstream = yield* HttpClient.HttpClient
    const client = yield* HttpClientCache.withCache({
      ...cacheOptions,
      shared: true,
      distributedSingleFlight: flight === undefined ? undefined : HttpClientCache.redisSingleFlight(flight)
    })(upstream).pipe(Effect.provideService(CacheBackend.CacheBackendTag, backend))
    return { client, flight }
  })

const instance = (prefix: string, gated: boolean, flightOptions: RedisSingleFlight.Options = {}) =>
  Effect.map(instanceWithFlight(prefix, gated, flightOptions), ({ client }) => client)

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

  it.scopedLive("a no-store URL, once known, skips the gate: both instances' requests reach the origin side by side", () =>
    Effect.gen(function*() {
      const inFlight = { now: 0, max: 0 }
      yield* route(
        "/no-store-known",
        slow(
          200,
          ({ n }) => HttpServerResponse.text(`answer ${n}`, { headers: { "cache-control": "no-store" } }),
          inFlight
        )
      )
      const pair = yield* twoInstances(true)
      if (pair === undefined) return
      const [a, b] = pair
      // each instance learns the outcome once (the first of the two waits for the other, as above)
      yield* Effect.all([get(a, "/no-store-known"), get(b, "/no-store-known")], { concurrency: "unbounded" })
      expect(inFlight.max).toBe(1)
      for (let round = 0; round < 3; round++) {
        inFlight.max = 0
        const before = yield* calls("/no-store-known")
        const [fromA, fromB] = yield* Effect.all([get(a, "/no-store-known"), get(b, "/no-store-known")], {
          concurrency: "unbounded"
        })
        // overlapping at the origin: neither waited for the other's fetch
        expect(inFlight.max).toBe(2)
        expect([fromA.body, fromB.body].sort()).toEqual([`answer ${before + 1}`, `answer ${before + 2}`])
        expect(fromA.cacheStatus).not.toContain("stored")
      }
    }).pipe(Effect.provide(layer)))

  it.scopedLive("a stored response ends the not-storable window: the gate coalesces the key again", () =>
    Effect.gen(function*() {
      let storable = false
      yield* route(
        "/turns-cacheable",
        slow(150, ({ n }) =>
          HttpServerResponse.text(`v${n}`, {
            headers: { "cache-control": storable ? "public, max-age=60" : "no-store" }
          }))
      )
      const pair = yield* twoInstances(true)
      if (pair === undefined) return
      const [a, b] = pair
      yield* get(a, "/turns-cacheable")
      yield* get(b, "/turns-cacheable")
      storable = true
      // inside the window each instance goes upstream without the gate; what they get is stored
      yield* Effect.all([get(a, "/turns-cacheable"), get(b, "/turns-cacheable")], { concurrency: "unbounded" })
      expect(yield* calls("/turns-cacheable")).toBe(4)
      // a POST through one instance invalidates the stored response (RFC 9111 §4.4): the next misses
      // are coalesced across both instances again, because the stored outcomes cleared both marks
      const origin = yield* OriginTag
      yield* Effect.orDie(
        Effect.flatMap(a.execute(HttpClientRequest.post(origin.url("/turns-cacheable"))), (r) => r.text)
      )
      expect(yield* calls("/turns-cacheable")).toBe(5)
      const results = yield* Effect.all(
        Array.from({ length: 10 }, (_, i) => get(i % 2 === 0 ? a : b, "/turns-cacheable")),
        { concurrency: "unbounded" }
      )
      expect(yield* calls("/turns-cacheable")).toBe(6)
      expect(results.every((r) => r.body === "v6")).toBe(true)
    }).pipe(Effect.provide(layer)))
})

describe("HttpClientCache distributed single-flight over a hung Redis (circuit breaker)", () => {
  it.scopedLive(
    "once the breaker opens misses skip the hung gate; after Redis resumes and the cool-down, a stampede is fetched once",
    () =>
      Effect.gen(function*() {
        if (!hasRedis || !(yield* redisUp)) {
          if (process.env["CACHEKIT_REQUIRE_SERVERS"] === "1") expect.fail("redis-server is not available")
          return
        }
        // the gate on a redis-server of this test (SIGSTOPped below); the shared backend stays on 6379
        const gateRedis = yield* Effect.orDie(redisServer())
        yield* Effect.addFinalizer(() => Effect.sync(() => gateRedis.child.kill("SIGCONT")))
        const commandTimeoutMillis = 1000
        const flightOptions: RedisSingleFlight.Options = {
          url: gateRedis.url,
          commandTimeout: commandTimeoutMillis,
          breaker: { failureThreshold: 2, resetAfter: "1500 millis" }
        }
        const prefix = uniquePrefix()
        const one = yield* Effect.orDie(instanceWithFlight(prefix, true, flightOptions))
        const two = yield* Effect.orDie(instanceWithFlight(prefix, true, flightOptions))
        const [a, b] = [one.client, two.client]
        const cacheable = (body: string) =>
          Effect.succeed(HttpServerResponse.text(body, { headers: { "cache-control": "public, max-age=60" } }))
        for (let i = 0; i < 30; i++) yield* route(`/hung/${i}`, () => cacheable(`item ${i}`))

        gateRedis.child.kill("SIGSTOP")
        // two misses per instance wait the command timeout each: the breakers open
        const opening = yield* Effect.all([0, 1, 2, 3].map((i) => get(i % 2 === 0 ? a : b, `/hung/${i}`)), {
          concurrency: "unbounded"
        })
        expect(opening.map((r) => r.body)).toEqual(["item 0", "item 1", "item 2", "item 3"])
        expect((yield* one.flight!.stats).breaker).toBe("open")
        expect((yield* two.flight!.stats).breaker).toBe("open")

        // now misses do not ask the hung Redis: served well inside one command timeout, from the origin
        const started = Date.now()
        const served = yield* Effect.all(
          Array.from({ length: 20 }, (_, i) => get(i % 2 === 0 ? a : b, `/hung/${i + 10}`)),
          { concurrency: "unbounded" }
        )
        const elapsed = Date.now() - started
        expect(elapsed).toBeLessThan(commandTimeoutMillis / 2)
        expect(served.map((r) => r.body)).toEqual(Array.from({ length: 20 }, (_, i) => `item ${i + 10}`))
        for (let i = 10; i < 30; i++) expect(yield* calls(`/hung/${i}`)).toBe(1)
        const bypassed = (yield* one.flight!.stats).bypassed + (yield* two.flight!.stats).bypassed
        expect(bypassed).toBe(20)

        // Redis resumes; after the cool-down the first miss of each instance probes it and the gate is back
        gateRedis.child.kill("SIGCONT")
        yield* Effect.sleep("1600 millis")
        yield* route(
          "/after",
          slow(150, () => HttpServerResponse.text("back", { headers: { "cache-control": "public, max-age=60" } }))
        )
        const stampede = yield* Effect.all(
          Array.from({ length: 20 }, (_, i) => get(i % 2 === 0 ? a : b, "/after")),
          { concurrency: "unbounded" }
        )
        expect(stampede.every((r) => r.body === "back")).toBe(true)
        expect(yield* calls("/after")).toBe(1)
        expect((yield* one.flight!.stats).breaker).toBe("closed")
        expect((yield* two.flight!.stats).breaker).toBe("closed")
      }).pipe(Effect.provide(layer)),
    30_000
  )
})

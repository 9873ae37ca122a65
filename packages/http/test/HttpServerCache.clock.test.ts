import { MemoryBackend } from "@cachekit/core"
import { HttpServerCache } from "@cachekit/http"
import { HttpServerResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, TestClock } from "effect"
import { call, settle } from "./HttpServerCacheFixtures.js"

const cacheWith = (options: HttpServerCache.Options) =>
  HttpServerCache.make(options).pipe(Effect.provide(MemoryBackend.layer()))

/** A handler answering `v1`, `v2`, ... (or failing when `fail` says so), counting its calls. */
const versioned = (headers: Record<string, string> = {}, status = 200) => {
  const state = { calls: 0, fail: false }
  const handler = Effect.suspend(() => {
    state.calls++
    return state.fail
      ? Effect.fail("handler failed" as const)
      : Effect.succeed(HttpServerResponse.text(`v${state.calls}`, { headers, status }))
  })
  return { state, handler }
}

describe("HttpServerCache over time (TestClock)", () => {
  it.scoped("expires entries after ttl, and 4xx after the negative ttl", () =>
    Effect.gen(function*() {
      const cache = yield* cacheWith({
        ttl: "1 minute",
        negativeTtl: "5 seconds",
        statuses: (s) => s === 200 || s === 404
      })
      const ok = versioned()
      const missing = versioned({}, 404)
      const okApp = cache.wrap(ok.handler)
      const missingApp = cache.wrap(missing.handler)
      yield* call(okApp, "/ok")
      yield* call(missingApp, "/missing")
      yield* TestClock.adjust("6 seconds")
      expect((yield* call(okApp, "/ok")).text).toBe("v1")
      expect((yield* call(missingApp, "/missing")).text).toBe("v2")
      yield* TestClock.adjust("1 minute")
      expect((yield* call(okApp, "/ok")).text).toBe("v2")
    }))

  it.scoped("takes freshness from the handler's max-age when respecting Cache-Control", () =>
    Effect.gen(function*() {
      const cache = yield* cacheWith({ ttl: "1 hour" })
      const h = versioned({ "cache-control": "public, max-age=10" })
      const app = cache.wrap(h.handler)
      yield* call(app, "/x")
      yield* TestClock.adjust("9 seconds")
      expect((yield* call(app, "/x")).text).toBe("v1")
      yield* TestClock.adjust("2 seconds")
      expect((yield* call(app, "/x")).text).toBe("v2")
    }))

  it.scoped("serves stale inside stale-while-revalidate while one background refresh runs", () =>
    Effect.gen(function*() {
      const cache = yield* cacheWith({ ttl: "1 minute", staleWhileRevalidate: "5 minutes" })
      const h = versioned()
      const app = cache.wrap(h.handler)
      yield* call(app, "/swr")
      yield* TestClock.adjust("2 minutes")
      const stale1 = yield* call(app, "/swr")
      const stale2 = yield* call(app, "/swr")
      expect([stale1.text, stale2.text]).toEqual(["v1", "v1"])
      expect(stale1.response.headers["cache-status"]).toContain("stale-while-revalidate")
      yield* settle
      expect(h.state.calls).toBe(2)
      const fresh = yield* call(app, "/swr")
      expect(fresh.text).toBe("v2")
      expect(fresh.response.headers["cache-status"]).toMatch(/hit/)
      expect(h.state.calls).toBe(2)
    }))

  it.scoped("refreshes ahead of expiry without ever serving a miss", () =>
    Effect.gen(function*() {
      const cache = yield* cacheWith({ ttl: "1 minute", refreshAhead: "10 seconds" })
      const h = versioned()
      const app = cache.wrap(h.handler)
      yield* call(app, "/ahead")
      yield* TestClock.adjust("30 seconds")
      expect((yield* call(app, "/ahead")).text).toBe("v1")
      yield* settle
      expect(h.state.calls).toBe(1)
      yield* TestClock.adjust("25 seconds")
      expect((yield* call(app, "/ahead")).text).toBe("v1")
      yield* settle
      expect(h.state.calls).toBe(2)
      yield* TestClock.adjust("20 seconds")
      // 75 s after the first store: only the refreshed entry (stored at 55 s) is still fresh.
      expect((yield* call(app, "/ahead")).text).toBe("v2")
    }))

  it.scoped("keeps serving the stale entry when the background refresh fails", () =>
    Effect.gen(function*() {
      const cache = yield* cacheWith({ ttl: "1 minute", staleWhileRevalidate: "10 minutes" })
      const h = versioned()
      const app = cache.wrap(h.handler)
      yield* call(app, "/f")
      h.state.fail = true
      yield* TestClock.adjust("2 minutes")
      expect((yield* call(app, "/f")).text).toBe("v1")
      yield* settle
      expect(h.state.calls).toBe(2)
      expect((yield* call(app, "/f")).text).toBe("v1")
    }))

  it.scoped("serves the stale entry when the handler fails or answers 5xx inside stale-if-error, and fails after it", () =>
    Effect.gen(function*() {
      const cache = yield* cacheWith({ ttl: "1 minute", staleIfError: "1 hour" })
      const h = versioned()
      const app = cache.wrap(h.handler)
      yield* call(app, "/sie")
      h.state.fail = true
      yield* TestClock.adjust("5 minutes")
      const rescued = yield* call(app, "/sie")
      expect(rescued.text).toBe("v1")
      expect(rescued.response.headers["cache-status"]).toContain("stale-if-error")
      yield* TestClock.adjust("2 hours")
      const failed = yield* Effect.either(call(app, "/sie"))
      expect(failed._tag).toBe("Left")

      const fiveHundred = { calls: 0 }
      const flaky = cache.wrap(
        Effect.sync(() =>
          HttpServerResponse.text(`ok ${++fiveHundred.calls}`, { status: fiveHundred.calls === 1 ? 200 : 503 })
        )
      )
      yield* call(flaky, "/flaky")
      yield* TestClock.adjust("5 minutes")
      const stale = yield* call(flaky, "/flaky")
      expect(stale.response.status).toBe(200)
      expect(stale.text).toBe("ok 1")
    }))

  it.scoped("releases requests coalesced behind a stuck miss after coalesceTimeout", () =>
    Effect.gen(function*() {
      const cache = yield* cacheWith({ coalesceTimeout: "30 seconds" })
      let calls = 0
      const app = cache.wrap(
        Effect.suspend(() => ++calls === 1 ? Effect.never : Effect.succeed(HttpServerResponse.text(`call ${calls}`)))
      )
      const leader = yield* Effect.fork(call(app, "/stuck"))
      yield* settle
      const follower = yield* Effect.fork(call(app, "/stuck"))
      yield* settle
      yield* TestClock.adjust("29 seconds")
      expect(follower.unsafePoll()).toBeNull()
      yield* TestClock.adjust("2 seconds")
      const released = yield* Fiber.join(follower)
      expect(released.text).toBe("call 2")
      yield* Fiber.interrupt(leader)
    }))
})

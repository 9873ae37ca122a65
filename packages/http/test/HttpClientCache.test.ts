import { HttpServerResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import { cachedClient, fetchText, OriginTag } from "./HttpClientCacheFixtures.js"

const route = (path: string, handler: Parameters<OriginTag["Type"]["route"]>[1]) =>
  Effect.map(OriginTag, (origin) => origin.route(path, handler))
const calls = (path: string) => Effect.map(OriginTag, (origin) => origin.calls(path))

describe("HttpClientCache", () => {
  it.scoped("serves a fresh response from the cache after the first miss", () =>
    Effect.gen(function*() {
      yield* route("/fresh", ({ n }) =>
        Effect.succeed(HttpServerResponse.text(`body ${n}`, { headers: { "cache-control": "max-age=60" } })))
      const first = yield* fetchText("/fresh")
      const second = yield* fetchText("/fresh")
      expect(first.body).toBe("body 1")
      expect(second.body).toBe("body 1")
      expect(yield* calls("/fresh")).toBe(1)
      expect(first.headers["cache-status"]).toContain("fwd=uri-miss")
      expect(first.headers["cache-status"]).toContain("stored")
      expect(second.headers["cache-status"]).toMatch(/cachekit; hit/)
    }).pipe(Effect.provide(cachedClient())))

  it.scoped("goes upstream again once max-age has passed (RFC 9111 §4.2)", () =>
    Effect.gen(function*() {
      yield* route("/short", ({ n }) =>
        Effect.succeed(HttpServerResponse.text(`body ${n}`, { headers: { "cache-control": "max-age=10" } })))
      yield* fetchText("/short")
      yield* TestClock.adjust("9 seconds")
      expect((yield* fetchText("/short")).body).toBe("body 1")
      yield* TestClock.adjust("2 seconds")
      expect((yield* fetchText("/short")).body).toBe("body 2")
      expect(yield* calls("/short")).toBe(2)
    }).pipe(Effect.provide(cachedClient())))
})

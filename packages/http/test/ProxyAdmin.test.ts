/**
 * `cachekit proxy --admin`: the admin API on the proxy's port (or its own), over the proxy's tiers,
 * with the admin package's token rules.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import { runProxyCommand } from "../src/internal/cli.js"
import { parse } from "../src/internal/cliArgs.js"
import { fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"
import { itemRoutes, startProxy, tempDir, versions } from "./fixtures/proxyRun.js"

const ADMIN_TOKEN = "admin-token-0123456789abcdef"
const READ_TOKEN = "read-token-0123456789abcdef"
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

const withAdmin = (extra: Readonly<Record<string, string>> = {}) =>
  Effect.gen(function*() {
    const origin = yield* OriginTag
    return yield* startProxy(origin.url, {
      CACHEKIT_DISK_DIR: yield* tempDir,
      CACHEKIT_ADMIN: "true",
      CACHEKIT_ADMIN_TOKEN: ADMIN_TOKEN,
      CACHEKIT_ADMIN_READ_TOKEN: READ_TOKEN,
      CACHEKIT_OPLOG_SAMPLE_RATE: "0",
      ...extra
    })
  })

const stats = (adminUrl: string) =>
  Effect.map(fetchVia(`${adminUrl}/stats`, { headers: bearer(READ_TOKEN) }), (res) => {
    expect(res.status).toBe(200)
    return JSON.parse(res.text) as {
      hits: number
      misses: number
      tiers: ReadonlyArray<{ name: string; hits: number; misses: number; entries: number }>
    }
  })

describe("cachekit proxy --admin", () => {
  it("parses --admin as a switch, with an optional true/false, and checks --admin-prefix and --admin-port", () => {
    const settings = (argv: ReadonlyArray<string>) => {
      const command = parse(["proxy", ...argv])
      return Either.isRight(command) && command.right._tag === "Proxy" ? Object.fromEntries(command.right.settings) : {}
    }
    expect(settings(["--admin", "--port", "0"])).toEqual({ CACHEKIT_ADMIN: "true", CACHEKIT_PORT: "0" })
    expect(settings(["--admin", "false"])).toEqual({ CACHEKIT_ADMIN: "false" })
    expect(settings(["--admin=yes", "--admin-port", "9464", "--admin-prefix", "/ops/cache"])).toEqual({
      CACHEKIT_ADMIN: "true",
      CACHEKIT_ADMIN_PORT: "9464",
      CACHEKIT_ADMIN_PREFIX: "/ops/cache"
    })
    const badPrefix = parse(["proxy", "--admin-prefix", "/../x"])
    expect(Either.isLeft(badPrefix) && badPrefix.left.flag).toBe("admin-prefix")
    const badPort = parse(["proxy", "--admin-port", "http"])
    expect(Either.isLeft(badPort) && badPort.left.flag).toBe("admin-port")
  })

  it.live("the command exits 2 before listening when --admin has no token", () =>
    Effect.gen(function*() {
      const code = yield* runProxyCommand(
        new Map([
          ["CACHEKIT_UPSTREAM", "http://127.0.0.1:9"],
          ["CACHEKIT_BACKEND", "memory"],
          ["CACHEKIT_PORT", "0"],
          ["CACHEKIT_ADMIN", "true"],
          ["CACHEKIT_ADMIN_TOKEN", ""]
        ])
      )
      expect(code).toBe(2)
    }))

  it.scopedLive("refuses to start without a token, with a typed error that says what to set", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const error = yield* Effect.flip(startProxy(origin.url, { CACHEKIT_BACKEND: "memory", CACHEKIT_ADMIN: "true" }))
      expect(error._tag).toBe("AdminNotSecured")
      expect(error.message).toContain("CACHEKIT_ADMIN_TOKEN")
      const short = yield* Effect.flip(
        startProxy(origin.url, { CACHEKIT_BACKEND: "memory", CACHEKIT_ADMIN: "true", CACHEKIT_ADMIN_TOKEN: "short" })
      )
      expect(short._tag).toBe("AdminNotSecured")
      expect(short.message).toContain("at least 16 characters")
    }).pipe(Effect.provide(layerOrigin())))

  it.scopedLive("allows anonymous admin access only on a loopback address", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const anonymous = { CACHEKIT_BACKEND: "memory", CACHEKIT_ADMIN: "true", CACHEKIT_ADMIN_ALLOW_ANONYMOUS: "true" }
      const wide = yield* Effect.flip(startProxy(origin.url, { ...anonymous, CACHEKIT_HOST: "0.0.0.0" }))
      expect(wide._tag).toBe("AdminNotSecured")
      expect(wide.message).toContain("only allowed on loopback")
      const running = yield* startProxy(origin.url, anonymous)
      const res = yield* fetchVia(`${running.adminUrl}/stats`)
      expect(res.status).toBe(200)
    }).pipe(Effect.provide(layerOrigin())))

  it.scopedLive("mounts under /_cachekit on the proxy port; per-tier stats move with traffic", () =>
    Effect.gen(function*() {
      const running = yield* withAdmin()
      expect(running.adminUrl).toBe(`${running.proxy.url}/_cachekit`)
      const before = yield* stats(running.adminUrl!)
      expect(before.tiers.map((t) => t.name)).toEqual(["memory", "disk"])
      expect(before.hits).toBe(0)

      yield* fetchVia(`${running.proxy.url}/item?id=s`) // miss, stored in both tiers
      yield* fetchVia(`${running.proxy.url}/item?id=s`) // L1 hit
      yield* fetchVia(`${running.proxy.url}/item?id=s`) // L1 hit
      const after = yield* stats(running.adminUrl!)
      expect(after.hits).toBe(2)
      expect(after.tiers[0]!.hits).toBe(2)
      expect(after.tiers.map((t) => t.entries)).toEqual([1, 1])
      expect(after.misses).toBeGreaterThan(before.misses)

      const hot = yield* fetchVia(`${running.adminUrl}/hot-keys?limit=5`, { headers: bearer(READ_TOKEN) })
      expect(hot.text).toContain("/item?id=s")
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("an invalidate through the admin API makes the next request a miss that fetches the new version", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* withAdmin()
      const url = `${running.proxy.url}/item?id=inv`
      expect((yield* fetchVia(url)).text).toBe("inv:1")
      versions.set("inv", 2)
      expect((yield* fetchVia(url)).text).toBe("inv:1") // still cached
      // keys are "<METHOD> <upstream URL>"
      const keys = yield* fetchVia(`${running.adminUrl}/keys?pattern=*inv*`, { headers: bearer(READ_TOKEN) })
      expect(JSON.parse(keys.text).keys).toEqual([`GET ${origin.url}/item?id=inv`])
      const invalidated = yield* fetchVia(`${running.adminUrl}/invalidate`, {
        method: "POST",
        headers: { ...bearer(ADMIN_TOKEN), "content-type": "application/json" },
        body: JSON.stringify({ keys: [`GET ${origin.url}/item?id=inv`] })
      })
      expect(invalidated.status).toBe(200)
      expect(JSON.parse(invalidated.text)).toMatchObject({ removed: 1 })
      const next = yield* fetchVia(url)
      expect(next.text).toBe("inv:2")
      expect(next.headers["cache-status"]).not.toContain("hit")
      expect(yield* origin.count("/item")).toBe(2)
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("enforces auth: no or wrong token 401, read token 403 on invalidate; nothing is removed", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* withAdmin()
      yield* fetchVia(`${running.proxy.url}/item?id=auth`)
      expect((yield* fetchVia(`${running.adminUrl}/stats`)).status).toBe(401)
      expect((yield* fetchVia(`${running.adminUrl}/stats`, { headers: bearer("x".repeat(20)) })).status).toBe(401)
      const body = JSON.stringify({ keys: [`GET ${origin.url}/item?id=auth`] })
      const json = { "content-type": "application/json" }
      const anonymous = yield* fetchVia(`${running.adminUrl}/invalidate`, { method: "POST", headers: json, body })
      expect(anonymous.status).toBe(401)
      const reader = yield* fetchVia(`${running.adminUrl}/invalidate`, {
        method: "POST",
        headers: { ...json, ...bearer(READ_TOKEN) },
        body
      })
      expect(reader.status).toBe(403)
      const hit = yield* fetchVia(`${running.proxy.url}/item?id=auth`)
      expect(hit.headers["cache-status"]).toContain("hit")
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("--admin-prefix moves it; paths outside the prefix still go to the origin", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* withAdmin({ CACHEKIT_ADMIN_PREFIX: "/ops/cache" })
      expect((yield* fetchVia(`${running.proxy.url}/ops/cache/stats`, { headers: bearer(READ_TOKEN) })).status)
        .toBe(200)
      const other = yield* fetchVia(`${running.proxy.url}/_cachekit/stats`, { headers: bearer(READ_TOKEN) })
      expect(other.text).toBe("no such route")
      expect(yield* origin.count("/_cachekit/stats")).toBe(1)
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("--admin-port serves it on its own port and not on the proxy's", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* withAdmin({ CACHEKIT_ADMIN_PORT: "0" })
      const adminPort = new URL(running.adminUrl!).port
      expect(adminPort).not.toBe(String(running.proxy.port))
      expect((yield* fetchVia(`${running.adminUrl}/stats`, { headers: bearer(READ_TOKEN) })).status).toBe(200)
      yield* fetchVia(`${running.proxy.url}/_cachekit/stats`, { headers: bearer(READ_TOKEN) })
      expect(yield* origin.count("/_cachekit/stats")).toBe(1)
      // PURGE still answers on the proxy port
      yield* fetchVia(`${running.proxy.url}/item?id=port`)
      const purged = yield* fetchVia(`${running.proxy.url}/item?id=port`, {
        method: "PURGE",
        headers: bearer(ADMIN_TOKEN)
      })
      expect(JSON.parse(purged.text)).toMatchObject({ purged: 1 })
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))

  it.scopedLive("PURGE <path> on the proxy port needs the admin token, then removes the cached response", () =>
    Effect.gen(function*() {
      const origin = yield* OriginTag
      const running = yield* withAdmin()
      const url = `${running.proxy.url}/item?id=purge`
      expect((yield* fetchVia(url)).text).toBe("purge:1")
      versions.set("purge", 2)
      const anonymous = yield* fetchVia(url, { method: "PURGE" })
      expect([anonymous.status, anonymous.headers["www-authenticate"]]).toEqual([401, "Bearer"])
      const reader = yield* fetchVia(url, { method: "PURGE", headers: bearer(READ_TOKEN) })
      expect(reader.status).toBe(403)
      const stillCached = yield* fetchVia(url)
      expect([stillCached.text, stillCached.headers["cache-status"]?.includes("hit")]).toEqual(["purge:1", true])
      expect(yield* origin.count("/item")).toBe(1) // the PURGEs never reached the origin

      const purged = yield* fetchVia(url, { method: "PURGE", headers: bearer(ADMIN_TOKEN) })
      expect(purged.status).toBe(200)
      expect(JSON.parse(purged.text)).toEqual({ purged: 1, key: `GET ${origin.url}/item?id=purge` })
      const next = yield* fetchVia(url)
      expect(next.text).toBe("purge:2")
      expect(next.headers["cache-status"]).not.toContain("hit")
    }).pipe(Effect.provide(layerOrigin(itemRoutes))))
})

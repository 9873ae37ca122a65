/**
 * Bad input through the caching proxy, with fast-check: fuzzed Cache-Control / Vary / Age / Date /
 * Expires from the origin and Cache-Control / Range / conditionals / Authorization from the client.
 * The proxy never answers 5xx the origin did not send, never garbles a body, and never makes
 * reusable what must not be (no-store, private, Vary: *, Authorization without public).
 * Oversized headers and Vary with hundreds of names stay bounded.
 */
import { MemoryBackend } from "@cachekit/core"
import { HttpCachePolicy, Proxy } from "@cachekit/http"
import { NodeHttpClient } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, FastCheck as fc, Layer } from "effect"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { Pool } from "undici"

const MIB = 1024 * 1024
const RUNS = Number(process.env["CACHEKIT_SOAK_FUZZ_RUNS"] ?? "120")

/** An origin that answers with the response fields the request carries (base64 JSON in x-fuzz). */
const fuzzOrigin = Effect.acquireRelease(
  Effect.promise(async () => {
    const server = Http.createServer((req, res) => {
      const spec = req.headers["x-fuzz"]
      const fields = typeof spec === "string"
        ? JSON.parse(Buffer.from(spec, "base64").toString("utf8")) as Array<[string, string]>
        : []
      for (const [name, value] of fields) {
        try {
          res.appendHeader(name, value)
        } catch {
          // a value node refuses to send is not part of the test
        }
      }
      res.setHeader("x-auth-seen", String(req.headers["authorization"] ?? "-"))
      res.setHeader("x-user", "per-user-value")
      res.end(`fuzz-body ${req.url} auth=${String(req.headers["authorization"] ?? "-")}`)
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }
  }),
  ({ server }) =>
    Effect.promise(() =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
    )
)

const startProxy = (upstream: string, maxBytes = 16 * MIB) =>
  Effect.gen(function*() {
    const ctx = yield* Layer.build(
      Proxy.layerCaching({ upstream, port: 0 }).pipe(
        Layer.provideMerge(MemoryBackend.layer({ maxBytes })),
        Layer.provide(NodeHttpClient.layerUndici)
      )
    )
    return { proxy: Context.get(ctx, Proxy.ProxyTag), memory: Context.get(ctx, MemoryBackend.MemoryBackendTag) }
  })

// -- generators ------------------------------------------------------------------------------------

const caseOf = (s: string) => fc.constantFrom(s, s.toUpperCase(), ` ${s}`, `${s} `)
const num = fc.oneof(
  fc.nat({ max: 100_000 }).map(String),
  fc.constantFrom("-1", "1.5", "", "abc", "99999999999999999999", "0x10", "\"60\"", "1e3", "NaN", "Infinity")
)
const withValue = ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "max-stale", "min-fresh"]
const flags = [
  "no-store",
  "private",
  "public",
  "no-cache",
  "must-revalidate",
  "proxy-revalidate",
  "immutable",
  "no-transform",
  "only-if-cached",
  "must-understand"
]
const directive = fc.oneof(
  fc.tuple(fc.constantFrom(...withValue).chain(caseOf), num).map(([n, v]) => `${n}=${v}`),
  fc.constantFrom(...flags).chain(caseOf),
  fc.constantFrom("no-cache=\"set-cookie\"", "private=\"x-user\"", "no-store=\"\"", "max-age", "=", ",,", "\"", ";x"),
  fc.stringMatching(/^[a-z0-9=" ,;-]{0,12}$/)
)
const cacheControl = fc.array(directive, { maxLength: 6 }).chain((ds) =>
  fc.constantFrom(", ", ",", " , ").map((sep) => ds.join(sep))
)
const httpDate = fc.oneof(
  fc.integer({ min: -10_000_000, max: 10_000_000 }).map((s) => new Date(Date.now() + s * 1000).toUTCString()),
  fc.constantFrom("0", "-1", "yesterday", "Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", ""),
  fc.stringMatching(/^[A-Za-z0-9 ,:-]{0,30}$/)
)
const varyHeader = fc.oneof(
  fc.constantFrom("*", "accept-language", "Accept-Language, *", "", ",", "x-a, x-b", "ACCEPT-LANGUAGE "),
  fc.array(fc.stringMatching(/^[a-z-]{1,10}$/), { maxLength: 5 }).map((names) => names.join(", "))
)
const responseFields = fc.record({
  cacheControl: fc.option(cacheControl, { nil: undefined }),
  secondCacheControl: fc.option(cacheControl, { nil: undefined }),
  vary: fc.option(varyHeader, { nil: undefined }),
  age: fc.option(num, { nil: undefined }),
  date: fc.option(httpDate, { nil: undefined }),
  expires: fc.option(httpDate, { nil: undefined }),
  lastModified: fc.option(httpDate, { nil: undefined }),
  etag: fc.option(fc.constantFrom("\"v1\"", "W/\"v1\"", "v1", "\"\"", "*"), { nil: undefined })
})
const range = fc.oneof(
  fc.constantFrom("bytes=0-5", "bytes=-3", "bytes=5-", "bytes=5-1", "bytes=0-0,2-3", "bytes=99999-", "items=1-2"),
  fc.stringMatching(/^bytes=[0-9,-]{0,12}$/)
)
const requestFields = fc.record({
  cacheControl: fc.option(cacheControl, { nil: undefined }),
  range: fc.option(range, { nil: undefined }),
  ifNoneMatch: fc.option(fc.constantFrom("\"v1\"", "*", "garbage", "W/\"v1\", \"v2\""), { nil: undefined }),
  ifModifiedSince: fc.option(httpDate, { nil: undefined }),
  authorization: fc.option(fc.constantFrom("Bearer alice", "Basic Ym9iOnB3"), { nil: undefined }),
  acceptLanguage: fc.option(fc.constantFrom("en", "fr", "", "*"), { nil: undefined })
})

type ResponseFields = typeof responseFields extends fc.Arbitrary<infer A> ? A : never

const directiveNames = (value: string | undefined): Array<string> =>
  (value ?? "").split(",").map((d) => d.split("=")[0]!.trim().toLowerCase())

/** Whether a shared cache must not reuse this response for a plain request from another user. */
const mustNotReuse = (res: ResponseFields, authorized: boolean): boolean => {
  const names = [...directiveNames(res.cacheControl), ...directiveNames(res.secondCacheControl)]
  // RFC 9111 §5.2.2.3: a cache that understands the status code (200 here) ignores no-store when
  // must-understand is present
  if (names.includes("no-store") && !names.includes("must-understand")) return true
  // bare private only: private="x-user" lets a shared cache store the rest (§5.2.2.7), checked below
  const directives = [res.cacheControl ?? "", res.secondCacheControl ?? ""].join(",").split(",")
  if (directives.some((d) => d.trim().toLowerCase() === "private")) return true
  if ((res.vary ?? "").split(",").some((v) => v.trim() === "*")) return true
  // RFC 9111 §3.5: a response to an authorized request is shared only with public, s-maxage or must-revalidate
  if (authorized && !names.some((n) => n === "public" || n === "s-maxage" || n === "must-revalidate")) return true
  return false
}

const fieldsOf = (res: ResponseFields): Array<[string, string]> => {
  const out: Array<[string, string]> = []
  if (res.cacheControl !== undefined) out.push(["cache-control", res.cacheControl])
  if (res.secondCacheControl !== undefined) out.push(["cache-control", res.secondCacheControl])
  if (res.vary !== undefined) out.push(["vary", res.vary])
  if (res.age !== undefined) out.push(["age", res.age])
  if (res.date !== undefined) out.push(["date", res.date])
  if (res.expires !== undefined) out.push(["expires", res.expires])
  if (res.lastModified !== undefined) out.push(["last-modified", res.lastModified])
  if (res.etag !== undefined) out.push(["etag", res.etag])
  return out
}

describe("bad input through the caching proxy", () => {
  it("a stray or unterminated quote in Cache-Control never hides no-store or private (found by the fuzz below)", () => {
    for (
      const value of [
        "\", no-store=\"\"",
        "\", no-store",
        "x=\"a, no-store",
        "max-age=60, \"",
        "public, x=\"y, private"
      ]
    ) {
      const cc = HttpCachePolicy.parseCacheControl(value)
      expect(cc.noStore || cc.private !== false || value === "max-age=60, \"").toBe(true)
    }
    expect(HttpCachePolicy.parseCacheControl("max-age=60, \"").maxAge).toBe(60)
  })

  it.scopedLive(
    `${RUNS} fuzzed request/response header sets: no 5xx, no garbled body, nothing reused that must not be`,
    () =>
      Effect.gen(function*() {
        const origin = yield* fuzzOrigin
        const { proxy } = yield* startProxy(origin.url)
        const pool = new Pool(proxy.url, { connections: 8 })
        yield* Effect.addFinalizer(() => Effect.promise(() => pool.close()))
        let n = 0
        const statuses = new Map<number, number>()
        yield* Effect.promise(() =>
          fc.assert(
            fc.asyncProperty(responseFields, requestFields, async (res, req) => {
              const path = `/f/${n++}`
              const spec = Buffer.from(JSON.stringify(fieldsOf(res))).toString("base64")
              const headers: Record<string, string> = { "x-fuzz": spec }
              if (req.cacheControl !== undefined) headers["cache-control"] = req.cacheControl
              if (req.range !== undefined) headers["range"] = req.range
              if (req.ifNoneMatch !== undefined) headers["if-none-match"] = req.ifNoneMatch
              if (req.ifModifiedSince !== undefined) headers["if-modified-since"] = req.ifModifiedSince
              if (req.authorization !== undefined) headers["authorization"] = req.authorization
              if (req.acceptLanguage !== undefined) headers["accept-language"] = req.acceptLanguage
              const first = await pool.request({ path, method: "GET", headers })
              const firstBody = await first.body.text()
              statuses.set(first.statusCode, (statuses.get(first.statusCode) ?? 0) + 1)
              const onlyIfCached = directiveNames(req.cacheControl).includes("only-if-cached")
              if (first.statusCode >= 500 && !(onlyIfCached && first.statusCode === 504)) {
                throw new Error(`first answer ${first.statusCode}: ${firstBody}`)
              }
              const whole = `fuzz-body ${path} auth=${req.authorization ?? "-"}`
              if (first.statusCode === 200 && firstBody !== whole) throw new Error(`garbled 200 body: ${firstBody}`)
              if (first.statusCode === 206 && !whole.includes(firstBody)) throw new Error(`bad 206 part: ${firstBody}`)
              // another user, plain request, same URL
              const second = await pool.request({ path, method: "GET", headers: { "x-fuzz": spec } })
              const secondBody = await second.body.text()
              const cs = String(second.headers["cache-status"] ?? "")
              if (second.statusCode >= 500) throw new Error(`second answer ${second.statusCode}: ${secondBody}`)
              if (second.statusCode === 200 && /; hit/.test(cs)) {
                if (mustNotReuse(res, req.authorization !== undefined)) {
                  throw new Error(
                    `reused what must not be (${cs}): ${JSON.stringify(fieldsOf(res))} ${JSON.stringify(req)}`
                  )
                }
                // §5.2.2.7 qualified private: the named field is not stored for others
                const privateFields = [res.cacheControl ?? "", res.secondCacheControl ?? ""].join(",")
                if (/private\s*=\s*"?[^,]*x-user/i.test(privateFields) && second.headers["x-user"] !== undefined) {
                  throw new Error(`hit carries a private field (${cs}): ${JSON.stringify(fieldsOf(res))}`)
                }
                if (secondBody !== whole && secondBody !== `fuzz-body ${path} auth=-`) {
                  throw new Error(`hit with a foreign body: ${secondBody}`)
                }
              }
              if (second.statusCode === 200 && !/; hit/.test(cs) && secondBody !== `fuzz-body ${path} auth=-`) {
                throw new Error(`miss with a foreign body: ${secondBody}`)
              }
            }),
            { numRuns: RUNS, seed: 20261122 }
          )
        )
        console.log(`reliability/fuzz ${JSON.stringify({ runs: RUNS, statuses: Object.fromEntries(statuses) })}`)
        expect(n).toBeGreaterThanOrEqual(RUNS)
      }),
    120_000
  )

  // The secondary key spells out every Vary field, so 400 names make it longer than the 4096-byte key
  // limit: such responses are not stored at all (logged), which is bounded and safe.
  it.scopedLive(
    "a Vary with 400 field names and 60 variants: every answer right, memory stays under its bound",
    () =>
      Effect.gen(function*() {
        const origin = yield* fuzzOrigin
        const { memory, proxy } = yield* startProxy(origin.url, 2 * MIB)
        const names = Array.from({ length: 400 }, (_, i) => `x-v${i}`)
        const spec = Buffer.from(JSON.stringify([
          ["cache-control", "public, max-age=60"],
          ["vary", names.join(", ")]
        ])).toString("base64")
        const pool = new Pool(proxy.url, { connections: 8 })
        yield* Effect.addFinalizer(() => Effect.promise(() => pool.close()))
        let hits = 0
        for (let round = 0; round < 2; round++) {
          for (let v = 0; v < 60; v++) {
            const headers: Record<string, string> = { "x-fuzz": spec }
            // 25 of the 400 fields set per request, different per variant
            for (let j = 0; j < 25; j++) headers[names[(v * 7 + j * 13) % names.length]!] = `value-${v}-${j}`
            const res = yield* Effect.promise(() => pool.request({ path: "/vary-many", method: "GET", headers }))
            const body = yield* Effect.promise(() => res.body.text())
            expect(res.statusCode).toBe(200)
            expect(body).toBe("fuzz-body /vary-many auth=-")
            if (/; hit/.test(String(res.headers["cache-status"] ?? ""))) hits++
          }
        }
        console.log(`reliability/vary-400 ${JSON.stringify({ hits })}`)
        const stats = yield* memory.stats
        expect(stats.bytes).toBeLessThanOrEqual(2 * MIB)
      }),
    60_000
  )

  it.scopedLive("oversized request headers get 431 from the proxy, and it keeps serving", () =>
    Effect.gen(function*() {
      const origin = yield* fuzzOrigin
      const { proxy } = yield* startProxy(origin.url)
      const pool = new Pool(proxy.url, { connections: 2 })
      yield* Effect.addFinalizer(() => Effect.promise(() => pool.close()))
      const huge = yield* Effect.promise(async () => {
        try {
          const res = await pool.request({
            path: "/big-headers",
            method: "GET",
            headers: { "x-big": "a".repeat(64 * 1024) }
          })
          await res.body.dump()
          return res.statusCode
        } catch (error) {
          return String(error)
        }
      })
      expect(huge === 431 || /SocketError|other side closed/.test(String(huge))).toBe(true)
      const many: Record<string, string> = {}
      for (let i = 0; i < 3000; i++) many[`x-h${i}`] = "1"
      const lots = yield* Effect.promise(async () => {
        try {
          const res = await pool.request({ path: "/many-headers", method: "GET", headers: many })
          await res.body.dump()
          return res.statusCode
        } catch (error) {
          return String(error)
        }
      })
      expect(lots === 431 || lots === 200 || /SocketError|other side closed/.test(String(lots))).toBe(true)
      const after = yield* Effect.promise(() => pool.request({ path: "/after", method: "GET" }))
      expect(after.statusCode).toBe(200)
      expect(yield* Effect.promise(() => after.body.text())).toBe("fuzz-body /after auth=-")
    }), 30_000)
})

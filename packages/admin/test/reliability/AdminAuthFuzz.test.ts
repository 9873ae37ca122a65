/**
 * The admin API's auth under fuzzed requests (fast-check): any mix of path spelling (dot segments,
 * encoded slashes and dots, case, doubled slashes, suffixes), method, method-override and rewrite
 * headers, and Authorization values (missing, wrong, truncated, padded, other schemes, the token in
 * the query or a cookie) never mutates the cache without the admin token and never reads without a
 * token; no token ever appears in the operation log, and keys are hashed there when configured.
 */
import { OperationLog } from "@cachekit/admin"
import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck as fc } from "effect"
import type { Harness } from "../fixtures.js"
import { ADMIN_TOKEN, exists, harness, HarnessTag, raw, READ_TOKEN, seed } from "../fixtures.js"

const RUNS = Number(process.env["CACHEKIT_SOAK_FUZZ_RUNS"] ?? "150")
const SECRET_KEY = "user:4242:session-secret"

const segment = fc.constantFrom(
  "invalidate",
  "clear",
  "stats",
  "keys",
  `entries/${encodeURIComponent(SECRET_KEY)}`,
  "INVALIDATE",
  "invalidate/",
  "%69nvalidate",
  "clear%00",
  "invalidate;x=1",
  "invalidate?confirm=true"
)
const prefix = fc.oneof({ arbitrary: fc.constant("/admin/"), weight: 6 }, {
  arbitrary: fc.constantFrom(
    "/admin/",
    "/admin/../admin/",
    "/admin/%2e%2e/admin/",
    "/admin/./",
    "//admin/",
    "/ADMIN/",
    "/admin%2F",
    "/admin/%2F",
    "/x/../admin/",
    "/admin/stats/../",
    "/admin\\",
    "/"
  ),
  weight: 6
})
const method = fc.constantFrom("GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "post")
const overrides = fc.subarray(
  [
    ["x-http-method-override", "POST"],
    ["x-http-method", "POST"],
    ["x-method-override", "DELETE"],
    ["x-original-url", "/admin/clear"],
    ["x-rewrite-url", "/admin/invalidate"],
    ["x-forwarded-for", "127.0.0.1"],
    ["x-forwarded-user", "admin"],
    ["x-forwarded-prefix", "/admin"]
  ] as const
)
const badAuthorization = fc.oneof(
  fc.constant(undefined),
  fc.constantFrom(
    "Bearer",
    "Bearer ",
    `Bearer ${ADMIN_TOKEN.slice(0, -1)}`,
    `Bearer ${ADMIN_TOKEN}x`,
    `Bearer ${ADMIN_TOKEN.toUpperCase()}`,
    `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString("base64")}`,
    `Token ${ADMIN_TOKEN}`,
    `${ADMIN_TOKEN}`,
    `Bearer ${ADMIN_TOKEN} ${ADMIN_TOKEN}`,
    `Bearer\t${ADMIN_TOKEN}`,
    `Bearer ${READ_TOKEN.slice(1)}`
  ),
  fc.stringMatching(/^Bearer [A-Za-z0-9._~+/=-]{0,40}$/)
)
const smuggled = fc.constantFrom(
  {},
  { cookie: `token=${ADMIN_TOKEN}` },
  { "x-admin-token": ADMIN_TOKEN },
  { "proxy-authorization": `Bearer ${ADMIN_TOKEN}` }
)
const body = fc.constantFrom(
  JSON.stringify({ keys: [SECRET_KEY] }),
  JSON.stringify({ pattern: "*", confirm: true }),
  JSON.stringify({ confirm: true }),
  "",
  "{"
)

const isSeededGone = (h: Harness) => Effect.map(exists(h.backend, SECRET_KEY), (present) => !present)

describe("admin auth cannot be bypassed", () => {
  it.scopedLive(
    `${RUNS} fuzzed requests without a valid token: nothing read, nothing changed, no secret logged`,
    () =>
      Effect.gen(function*() {
        const h = yield* HarnessTag
        yield* seed(h.backend, SECRET_KEY, "secret-value", ["t1"])
        const statuses = new Map<number, number>()
        let runs = 0
        const property = fc.asyncProperty(
          prefix,
          segment,
          method,
          overrides,
          badAuthorization,
          smuggled,
          body,
          fc.boolean(),
          async (p, s, m, o, auth, extra, payload, tokenInQuery) => {
            const headers: Record<string, string> = { "content-type": "application/json", ...extra }
            for (const [name, value] of o) headers[name] = value
            if (auth !== undefined) headers["authorization"] = auth
            const path = `${p}${s}${tokenInQuery ? `${s.includes("?") ? "&" : "?"}token=${ADMIN_TOKEN}` : ""}`
            const send = raw({
              port: h.port,
              method: m,
              path,
              headers,
              ...(m === "GET" || m === "HEAD" ? {} : { body: payload })
            })
            const res = await Effect.runPromise(Effect.either(send))
            runs++
            if (res._tag === "Left") return // the server may refuse to parse a request at all
            statuses.set(res.right.status, (statuses.get(res.right.status) ?? 0) + 1)
            if (res.right.status >= 200 && res.right.status < 300 && m.toUpperCase() !== "OPTIONS") {
              throw new Error(`${m} ${path} answered ${res.right.status} without a valid token: ${res.right.body}`)
            }
            if (res.right.body.includes("secret-value")) throw new Error(`${m} ${path} leaked the entry`)
            if (await Effect.runPromise(isSeededGone(h))) throw new Error(`${m} ${path} removed the entry`)
          }
        )
        yield* Effect.promise(() => fc.assert(property, { numRuns: RUNS, seed: 424242 }))
        console.log(`reliability/admin-fuzz ${JSON.stringify({ runs, statuses: Object.fromEntries(statuses) })}`)
        expect(yield* exists(h.backend, SECRET_KEY)).toBe(true)
        expect(runs).toBe(RUNS)
        // rejected requests were logged (the admin owner's rule), but never with a token in them
        expect(h.lines.length).toBeGreaterThan(0)
        for (const line of h.lines) {
          expect(line).not.toContain(ADMIN_TOKEN)
          expect(line).not.toContain(ADMIN_TOKEN.slice(0, 12))
          expect(line).not.toContain(READ_TOKEN)
        }
      }).pipe(Effect.provide(harness({ log: { sampleRate: 1 } }))),
    120_000
  )

  it.scopedLive("with the read token, fuzzed mutations change nothing", () =>
    Effect.gen(function*() {
      const h = yield* HarnessTag
      yield* seed(h.backend, SECRET_KEY, "secret-value", ["t1"])
      yield* Effect.promise(() =>
        fc.assert(
          fc.asyncProperty(prefix, segment, method, overrides, body, async (p, s, m, o, payload) => {
            const headers: Record<string, string> = {
              "content-type": "application/json",
              authorization: `Bearer ${READ_TOKEN}`
            }
            for (const [name, value] of o) headers[name] = value
            await Effect.runPromise(Effect.either(raw({
              port: h.port,
              method: m,
              path: `${p}${s}`,
              headers,
              ...(m === "GET" || m === "HEAD" ? {} : { body: payload })
            })))
            if (await Effect.runPromise(isSeededGone(h))) throw new Error(`${m} ${p}${s} removed the entry`)
          }),
          { numRuns: Math.ceil(RUNS / 2), seed: 777 }
        )
      )
      expect(yield* exists(h.backend, SECRET_KEY)).toBe(true)
      for (const line of h.lines) expect(line).not.toContain(READ_TOKEN)
    }).pipe(Effect.provide(harness({ log: { sampleRate: 1 } }))), 120_000)

  it.scopedLive("with hashKeys, the operation log names keys only by their hash", () =>
    Effect.gen(function*() {
      const h = yield* HarnessTag
      yield* seed(h.backend, SECRET_KEY, "secret-value")
      const res = yield* raw({
        port: h.port,
        method: "POST",
        path: "/admin/invalidate",
        headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
        body: JSON.stringify({ keys: [SECRET_KEY] })
      })
      expect(res.status).toBe(200)
      expect(yield* exists(h.backend, SECRET_KEY)).toBe(false)
      const all = h.lines.join("\n")
      expect(all).toContain(OperationLog.hashKey(SECRET_KEY))
      expect(all).not.toContain(SECRET_KEY)
      expect(all).not.toContain("4242")
      expect(all).not.toContain(ADMIN_TOKEN)
    }).pipe(Effect.provide(harness({ log: { sampleRate: 1, hashKeys: true } }))))
})

import { HttpCachePolicy } from "@cachekit/http"
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"

type Options = HttpCachePolicy.PolicyOptions

const T0 = Date.UTC(2026, 0, 1)
const MODES: ReadonlyArray<HttpCachePolicy.CacheMode> = [
  "default",
  "no-store",
  "reload",
  "no-cache",
  "force-cache",
  "only-if-cached",
  "ignore-rules"
]

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/** Junk text without double quotes (a stray quote legitimately hides the directives after it). */
const junk = fc.string({ maxLength: 12 }).map((s) => s.replace(/"/g, ""))
const number = fc.oneof(
  fc.nat({ max: 100_000 }).map(String),
  fc.constantFrom("-1", "1.5", "", "abc", "99999999999999999999", "0x10", " 7 ", "\"60\"", "1e3"),
  junk
)
const caseOf = (s: string) => fc.constantFrom(s, s.toUpperCase(), ` ${s} `)
const NAMES = ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "max-stale", "min-fresh"]
const FLAGS = [
  "no-store",
  "no-cache",
  "private",
  "public",
  "must-revalidate",
  "proxy-revalidate",
  "must-understand",
  "immutable",
  "no-transform",
  "only-if-cached",
  "max-stale"
]
/** One Cache-Control directive: valid, malformed, quoted, odd case, or junk. Quotes are balanced. */
const directive = fc.oneof(
  fc.tuple(fc.constantFrom(...NAMES).chain(caseOf), number).map(([n, v]) => `${n}=${v}`),
  fc.constantFrom(...FLAGS).chain(caseOf),
  fc.constantFrom("no-cache=\"set-cookie\"", "private=\"x-user, set-cookie\"", "no-cache=\"\"", "no-cache=x-a"),
  junk
)
const directives = fc.array(directive, { maxLength: 6 })
const joinDirectives = (list: ReadonlyArray<string>) => list.join(",")
const cacheControl = fc.oneof(directives.map(joinDirectives), fc.string({ maxLength: 40 }))

const httpDate = fc.oneof(
  fc.integer({ min: T0 - 10 * 86_400_000, max: T0 + 10 * 86_400_000 }).map(HttpCachePolicy.formatHttpDate),
  fc.constantFrom(
    "0",
    "-1",
    "Thu, 31 Feb 2026 00:00:00 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994"
  ),
  fc.string({ maxLength: 30 })
)
const age = fc.oneof(fc.nat({ max: 10_000 }).map(String), number)
const VARY_FIELDS = ["accept", "accept-encoding", "Accept-Language", "x-tenant", "*", "__proto__", "constructor", ""]
const vary = fc.oneof(
  fc.array(fc.constantFrom(...VARY_FIELDS), { maxLength: 4 }).map((l) => l.join(", ")),
  fc.string({ maxLength: 20 })
)
/** Any UTF-16 code units, lone surrogates and control characters included. */
const anyUtf16 = fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 80 }).map((codes) =>
  String.fromCharCode(...codes)
)
const optional = <A>(arb: fc.Arbitrary<A>) => fc.option(arb, { nil: undefined })

/** A response header record built from the fields the policy reads, any of them missing. */
const responseHeaders = (cc: fc.Arbitrary<string> = cacheControl, targeted = true) =>
  fc.record({
    "cache-control": optional(cc),
    "cdn-cache-control": targeted ? optional(cacheControl) : fc.constant(undefined),
    vary: optional(vary),
    age: optional(age),
    date: optional(httpDate),
    expires: optional(httpDate),
    "last-modified": optional(httpDate),
    etag: optional(fc.oneof(fc.constantFrom("\"v1\"", "W/\"v1\"", "\"v2\""), junk)),
    "set-cookie": optional(fc.constant("sid=1")),
    connection: optional(fc.constantFrom("close", "x-a, keep-alive", "")),
    location: optional(fc.oneof(fc.constantFrom("/b", "http://origin.test/c", "http://evil.test/"), junk))
  }).map(defined)

const requestHeaders = fc.record({
  "cache-control": optional(cacheControl),
  pragma: optional(fc.constantFrom("no-cache", "x")),
  accept: optional(fc.constantFrom("text/html", "TEXT/HTML", " text/html ", "*/*")),
  "accept-encoding": optional(fc.constantFrom("gzip", "gzip, br", "GZIP,br", "br")),
  "accept-language": optional(fc.constantFrom("en", "fr", "")),
  "x-tenant": optional(fc.constantFrom("a", "A", "b")),
  authorization: optional(fc.constant("Bearer x")),
  "if-none-match": optional(fc.oneof(fc.constantFrom("*", "\"v1\"", "W/\"v1\", \"v2\"", "\"a,b\""), junk)),
  "if-modified-since": optional(httpDate)
}).map(defined)

function defined(record: Record<string, string | undefined>): Record<string, string> {
  const out: Array<[string, string]> = []
  for (const [k, v] of Object.entries(record)) if (v !== undefined) out.push([k, v])
  return Object.fromEntries(out)
}

const method = fc.oneof(fc.constantFrom("GET", "HEAD", "get", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"), junk)
const status = fc.oneof(
  fc.constantFrom(200, 203, 204, 206, 300, 301, 302, 304, 308, 404, 410, 500, 501, 503),
  fc.integer({ min: -10, max: 1000 })
)
const options: fc.Arbitrary<Options> = fc.record({
  shared: fc.boolean(),
  heuristicFraction: optional(fc.double({ min: 0, max: 1, noNaN: true })),
  maxTtlMillis: optional(fc.nat({ max: 10_000_000 })),
  targetedCacheControl: optional(
    fc.constantFrom(["cdn-cache-control"], ["Cachekit-Cache-Control", "cdn-cache-control"], [])
  )
}).map((o) => defined(o as never) as unknown as Options)
const url = fc.oneof(fc.constantFrom("http://origin.test/a?q=1", "/a?b=2#f", "https://x.test/"), junk)
const time = fc.integer({ min: T0 - 100_000, max: T0 + 100_000 })

const finite = (n: number) => Number.isFinite(n)

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

describe("header fuzzing (property tests)", () => {
  it("§5.2 parseCacheControl never throws on any string", () => {
    fc.assert(
      fc.property(fc.oneof(cacheControl, anyUtf16), (value) => {
        const cc = HttpCachePolicy.parseCacheControl(value)
        for (const n of [cc.maxAge, cc.sMaxage, cc.staleIfError, cc.staleWhileRevalidate, cc.minFresh]) {
          if (n !== undefined) expect(n >= 0 && n <= 2147483648).toBe(true)
        }
      }),
      { numRuns: 500 }
    )
  })

  it("§1.2.2 a valid delta-seconds parses to itself, capped at 2^31", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 10n ** 25n }), (n) => {
        expect(HttpCachePolicy.parseCacheControl(`max-age=${n}`).maxAge).toBe(Math.min(Number(n), 2147483648))
      })
    )
  })

  it("every policy function is total over fuzzed Cache-Control, Vary, Age, Date and Expires", () => {
    fc.assert(
      fc.property(
        method,
        url,
        requestHeaders,
        status,
        responseHeaders(),
        options,
        fc.constantFrom(...MODES),
        time,
        fc.nat({ max: 10_000_000 }),
        responseHeaders(),
        (m, u, reqHeaders, s, resHeaders, opts, mode, requestTime, elapsed, headers304) => {
          const req = { method: m, url: u, headers: reqHeaders }
          const res = { status: s, headers: resHeaders }
          const verdict = HttpCachePolicy.storability(req, res, opts, mode)
          expect(typeof verdict.reason).toBe("string")
          const stored = HttpCachePolicy.store(req, res, { requestTime, responseTime: requestTime + 10 }, opts)
          const now = requestTime + elapsed
          const result = HttpCachePolicy.lookup(stored, req, now, opts, mode)
          if (result._tag !== "VaryMismatch") {
            expect(result.age >= 0 && finite(result.age)).toBe(true)
            expect(Number.isNaN(result.ttl)).toBe(false)
            expect(result.headers.age).toMatch(/^\d+$/)
            expect(Number(result.headers.age)).toBeLessThanOrEqual(2147483648)
          }
          if (result._tag === "Stale" || result._tag === "MustRevalidate") {
            expect(Number.isNaN(result.serveIfErrorUntil)).toBe(false)
          }
          expect(Number.isNaN(HttpCachePolicy.retainUntil(stored, opts))).toBe(false)
          expect(HttpCachePolicy.freshnessLifetime(stored, opts)).toBeGreaterThanOrEqual(0)
          const merged = HttpCachePolicy.revalidated(
            stored,
            req,
            { status: 304, headers: headers304 },
            { requestTime: now, responseTime: now },
            opts
          )
          expect(["Updated", "Mismatch"]).toContain(merged._tag)
          for (const target of HttpCachePolicy.invalidates(req, res)) expect(typeof target).toBe("string")
          expect(HttpCachePolicy.decodeStoredPolicy(HttpCachePolicy.encodeStoredPolicy(stored))).toEqual(stored)
          HttpCachePolicy.cacheStatus(u, { hit: false, fwd: "miss", detail: m, key: u, ttl: elapsed })
          HttpCachePolicy.varyKey(resHeaders.vary, req)
          HttpCachePolicy.stripHopByHop(resHeaders)
          if (result._tag !== "VaryMismatch") {
            const notModified = HttpCachePolicy.notModified(result.headers, req)
            if (notModified !== undefined) expect(notModified["content-length"]).toBeUndefined()
          }
        }
      ),
      { numRuns: 250 }
    )
  })

  it("§5.2.2.5 a response with no-store is never storable (any other directives, either cache)", () => {
    fc.assert(
      fc.property(
        fc.tuple(directives, fc.nat({ max: 6 }), fc.constantFrom("no-store", "NO-STORE", " no-store ")).map(
          ([list, at, noStore]) =>
            joinDirectives(
              [...list.slice(0, at), noStore, ...list.slice(at)].filter((d) => !/must-understand/i.test(d))
            )
        ),
        responseHeaders(cacheControl, false),
        requestHeaders,
        fc.boolean(),
        fc.constantFrom("GET", "HEAD"),
        status,
        (cc, resHeaders, reqHeaders, shared, m, s) => {
          const res = { status: s, headers: { ...resHeaders, "cache-control": cc } }
          const req = { method: m, url: "http://origin.test/", headers: reqHeaders }
          expect(HttpCachePolicy.storability(req, res, { shared }).storable).toBe(false)
        }
      ),
      { numRuns: 300 }
    )
  })

  it("§5.2.2.7 a shared cache never stores a private response", () => {
    fc.assert(
      fc.property(
        fc.tuple(directives, fc.nat({ max: 6 }), fc.constantFrom("private", "Private", " private ")).map(
          ([list, at, priv]) => joinDirectives([...list.slice(0, at), priv, ...list.slice(at)])
        ),
        responseHeaders(cacheControl, false),
        requestHeaders,
        status,
        (cc, resHeaders, reqHeaders, s) => {
          const res = { status: s, headers: { ...resHeaders, "cache-control": cc } }
          const req = { method: "GET", url: "http://origin.test/", headers: reqHeaders }
          expect(HttpCachePolicy.storability(req, res, { shared: true }).storable).toBe(false)
        }
      ),
      { numRuns: 300 }
    )
  })

  it("RFC 9213 a targeted field with no-store is never stored by a shared cache, whatever Cache-Control says", () => {
    fc.assert(
      fc.property(
        fc.tuple(directives, fc.nat({ max: 6 })).map(([list, at]) =>
          joinDirectives(
            [...list.slice(0, at), "no-store", ...list.slice(at)].filter((d) => !/must-understand/i.test(d))
          )
        ),
        responseHeaders(cacheControl, false),
        status,
        (targeted, resHeaders, s) => {
          const res = { status: s, headers: { ...resHeaders, "cdn-cache-control": targeted } }
          const req = { method: "GET", url: "http://origin.test/", headers: {} }
          expect(HttpCachePolicy.storability(req, res, { shared: true }).storable).toBe(false)
        }
      ),
      { numRuns: 200 }
    )
  })

  it("§3 header name case never changes a decision", () => {
    const mixCase = (headers: Record<string, string>, pattern: ReadonlyArray<boolean>) =>
      Object.fromEntries(
        Object.entries(headers).map((
          [name, value],
          i
        ) => [pattern[i % pattern.length] ? name.toUpperCase() : name, value])
      )
    fc.assert(
      fc.property(
        requestHeaders,
        responseHeaders(),
        options,
        status,
        fc.array(fc.boolean(), { minLength: 1, maxLength: 5 }),
        fc.nat({ max: 100_000 }),
        (reqHeaders, resHeaders, opts, s, pattern, elapsed) => {
          const req = { method: "GET", url: "http://origin.test/", headers: reqHeaders }
          const res = { status: s, headers: resHeaders }
          const reqMixed = { ...req, headers: mixCase(reqHeaders, pattern) }
          const resMixed = { status: s, headers: mixCase(resHeaders, pattern) }
          expect(HttpCachePolicy.storability(reqMixed, resMixed, opts)).toEqual(
            HttpCachePolicy.storability(req, res, opts)
          )
          const times = { requestTime: T0, responseTime: T0 }
          const stored = HttpCachePolicy.store(req, res, times, opts)
          expect(HttpCachePolicy.store(reqMixed, resMixed, times, opts)).toEqual(stored)
          expect(HttpCachePolicy.lookup(stored, reqMixed, T0 + elapsed, opts)).toEqual(
            HttpCachePolicy.lookup(stored, req, T0 + elapsed, opts)
          )
        }
      ),
      { numRuns: 200 }
    )
  })

  it("§3.5 a shared cache never stores a response to Authorization without public, s-maxage or must-revalidate", () => {
    const allowing = /^\s*(public|s-maxage|must-revalidate)\s*(=|$)/i
    fc.assert(
      fc.property(
        directives.map((list) => joinDirectives(list.filter((d) => !allowing.test(d)))),
        responseHeaders(cacheControl, false),
        requestHeaders,
        status,
        (cc, resHeaders, reqHeaders, s) => {
          const res = { status: s, headers: { ...resHeaders, "cache-control": cc } }
          const req = {
            method: "GET",
            url: "http://origin.test/",
            headers: { ...reqHeaders, authorization: "Basic a" }
          }
          expect(HttpCachePolicy.storability(req, res, { shared: true }).storable).toBe(false)
        }
      ),
      { numRuns: 300 }
    )
  })

  it("§3 only GET and HEAD responses are ever storable, in every mode", () => {
    fc.assert(
      fc.property(
        method.filter((m) => !["GET", "HEAD"].includes(m.toUpperCase())),
        responseHeaders(),
        status,
        options,
        fc.constantFrom(...MODES),
        (m, resHeaders, s, opts, mode) => {
          const verdict = HttpCachePolicy.storability(
            { method: m, url: "http://origin.test/", headers: {} },
            { status: s, headers: resHeaders },
            opts,
            mode
          )
          expect(verdict.storable).toBe(false)
        }
      ),
      { numRuns: 300 }
    )
  })

  it("§4.1 a stored response is only selected for requests whose Vary-named fields are equivalent", () => {
    // Independent, looser oracle: equal after removing all whitespace and lower-casing.
    const own = (headers: Record<string, string>, name: string) =>
      Object.prototype.hasOwnProperty.call(headers, name) ? headers[name] : undefined
    const loose = (v: string | undefined) => (v === undefined ? undefined : v.replace(/\s+/g, "").toLowerCase())
    fc.assert(
      fc.property(vary, requestHeaders, requestHeaders, (varyValue, first, second) => {
        const stored = HttpCachePolicy.store(
          { method: "GET", url: "http://origin.test/", headers: first },
          { status: 200, headers: { "cache-control": "max-age=60", vary: varyValue } },
          { requestTime: T0, responseTime: T0 },
          { shared: true }
        )
        const second_ = { method: "GET", url: "http://origin.test/", headers: second }
        const matched = HttpCachePolicy.lookup(stored, second_, T0, { shared: true })._tag !== "VaryMismatch"
        const names = varyValue.split(",").map((n) => n.trim().toLowerCase()).filter((n) => n.length > 0)
        if (matched) {
          expect(names).not.toContain("*")
          for (const name of names) expect(loose(own(second, name))).toBe(loose(own(first, name)))
        }
        // Completeness: identical raw values always match (unless Vary: *).
        const identical = names.every((name) => own(first, name) === own(second, name))
        if (identical && !names.includes("*") && !names.includes("__proto__")) expect(matched).toBe(true)
        expect(matched).toBe(
          HttpCachePolicy.varyKey(varyValue, { method: "GET", url: "", headers: first }) ===
              HttpCachePolicy.varyKey(varyValue, second_) && !names.includes("*") && !names.includes("__proto__")
        )
      }),
      { numRuns: 300 }
    )
  })

  it("§4.1 Vary values are normalised like the reference: trim, collapse blanks, no blanks around , ; =", () => {
    const reference = (v: string) => v.trim().replace(/[ \t]+/g, " ").replace(/ ?([,;=]) ?/g, "$1")
    const text = fc.array(fc.constantFrom("a", "B", " ", "\t", ",", ";", "=", "q", "0.5"), { maxLength: 16 }).map((
      l
    ) => l.join(""))
    fc.assert(
      fc.property(text, (raw) => {
        const stored = HttpCachePolicy.store(
          { method: "GET", url: "/", headers: { "x-tenant": raw, "accept-language": raw } },
          { status: 200, headers: { vary: "x-tenant, accept-language" } },
          { requestTime: T0, responseTime: T0 },
          { shared: true }
        )
        expect(stored.vary).toEqual({ "x-tenant": reference(raw), "accept-language": reference(raw).toLowerCase() })
      }),
      { numRuns: 300 }
    )
  })

  it("§4.2.4 in default mode Fresh means fresh, or stale within an accepted max-stale, never no-cache", () => {
    fc.assert(
      fc.property(
        requestHeaders,
        responseHeaders(),
        options,
        time,
        fc.nat({ max: 1_000_000 }),
        (reqHeaders, resHeaders, opts, t, elapsed) => {
          const req = { method: "GET", url: "http://origin.test/", headers: reqHeaders }
          const stored = HttpCachePolicy.store(req, { status: 200, headers: resHeaders }, {
            requestTime: t,
            responseTime: t
          }, opts)
          const result = HttpCachePolicy.lookup(stored, req, t + elapsed, opts)
          if (result._tag !== "Fresh") return
          const requestCC = HttpCachePolicy.parseCacheControl(reqHeaders["cache-control"])
          expect(result.ttl > 0 || requestCC.maxStale !== undefined).toBe(true)
          expect(requestCC.noCache).toBe(false)
          const usesTargeted = opts.shared && (opts.targetedCacheControl ?? ["cdn-cache-control"]).length > 0 &&
            resHeaders["cdn-cache-control"] !== undefined
          if (!usesTargeted) {
            expect(HttpCachePolicy.parseCacheControl(resHeaders["cache-control"]).noCache).not.toBe(true)
          }
        }
      ),
      { numRuns: 400 }
    )
  })

  it("§4.2.3 the age of a stored response never decreases as time passes", () => {
    fc.assert(
      fc.property(
        responseHeaders(),
        time,
        fc.nat({ max: 5000 }),
        fc.nat({ max: 1_000_000 }),
        fc.nat({ max: 1_000_000 }),
        (
          resHeaders,
          t,
          delay,
          a,
          b
        ) => {
          const stored = HttpCachePolicy.store(
            { method: "GET", url: "/", headers: {} },
            { status: 200, headers: resHeaders },
            { requestTime: t, responseTime: t + delay },
            { shared: true }
          )
          const [early, late] = a < b ? [a, b] : [b, a]
          const ageEarly = HttpCachePolicy.currentAge(stored, t + delay + early)
          const ageLate = HttpCachePolicy.currentAge(stored, t + delay + late)
          expect(ageLate - ageEarly).toBeCloseTo((late - early) / 1000, 6)
          expect(ageEarly).toBeGreaterThanOrEqual(0)
        }
      )
    )
  })
})

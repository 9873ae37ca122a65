import { HttpCachePolicy } from "@cachekit/http"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, TestClock } from "effect"

type Req = HttpCachePolicy.RequestSnapshot
type Res = HttpCachePolicy.ResponseSnapshot
type Options = HttpCachePolicy.PolicyOptions

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0)
const httpDate = (ms: number) => HttpCachePolicy.formatHttpDate(ms)
const SHARED: Options = { shared: true }
const PRIVATE: Options = { shared: false }
const URL_A = "http://origin.test/a?q=1"

const request = (headers: Record<string, string> = {}, method = "GET", url = URL_A): Req => ({ method, url, headers })
/** A response with a Date of T0 unless the test gives another. */
const response = (headers: Record<string, string> = {}, status = 200): Res => ({
  status,
  headers: { date: httpDate(T0), ...headers }
})
const storable = (req: Req, res: Res, options: Options, mode?: HttpCachePolicy.CacheMode) =>
  HttpCachePolicy.storability(req, res, options, mode).storable
const storeAt = (req: Req, res: Res, options: Options, requestTime = T0, responseTime = requestTime) =>
  HttpCachePolicy.store(req, res, { requestTime, responseTime }, options)
/** Looks the stored response up `seconds` after T0. */
const lookupAfter = (
  stored: HttpCachePolicy.StoredPolicy,
  seconds: number,
  options: Options,
  req: Req = request(),
  mode?: HttpCachePolicy.CacheMode
) => HttpCachePolicy.lookup(stored, req, T0 + seconds * 1000, options, mode)
const cached = (resHeaders: Record<string, string>, options: Options = SHARED, req: Req = request(), status = 200) =>
  storeAt(req, response(resHeaders, status), options)

describe("RFC 9111 §3 storing responses in caches", () => {
  it("§3 responses to GET and HEAD are storable", () => {
    const res = response({ "cache-control": "max-age=60" })
    expect(storable(request({}, "GET"), res, SHARED)).toBe(true)
    expect(storable(request({}, "HEAD"), res, SHARED)).toBe(true)
    expect(storable(request({}, "get"), res, SHARED)).toBe(true)
  })

  it("§3 responses to other methods (POST, PUT, DELETE, PATCH, OPTIONS) are not stored", () => {
    const res = response({ "cache-control": "max-age=60, public" })
    for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "QUERY"]) {
      expect(storable(request({}, method), res, SHARED)).toBe(false)
      expect(storable(request({}, method), res, PRIVATE)).toBe(false)
    }
  })

  it("§3 heuristically cacheable statuses are stored without explicit freshness", () => {
    for (const status of [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501]) {
      expect(storable(request(), response({}, status), SHARED)).toBe(true)
    }
  })

  it("§3 other statuses are stored only with explicit freshness (max-age, s-maxage, Expires)", () => {
    for (const status of [201, 302, 307, 400, 403, 500, 503]) {
      expect(storable(request(), response({}, status), SHARED)).toBe(false)
      expect(storable(request(), response({ "cache-control": "public" }, status), SHARED)).toBe(false)
      expect(storable(request(), response({ "cache-control": "max-age=5" }, status), SHARED)).toBe(true)
      expect(storable(request(), response({ "cache-control": "s-maxage=5" }, status), SHARED)).toBe(true)
      expect(storable(request(), response({ expires: httpDate(T0 + 5000) }, status), SHARED)).toBe(true)
    }
  })

  it("§3 s-maxage alone does not make an unlisted status storable in a private cache", () => {
    expect(storable(request(), response({ "cache-control": "s-maxage=5" }, 500), PRIVATE)).toBe(false)
  })

  it("§3 a 304, 1xx or out-of-range status is never stored", () => {
    for (const status of [100, 101, 304, 600, 0, 200.5]) {
      expect(storable(request(), response({ "cache-control": "max-age=60" }, status), SHARED)).toBe(false)
    }
  })

  it("§3 the cacheableStatuses option replaces the default list", () => {
    const options: Options = { shared: true, cacheableStatuses: new Set([200, 302]) }
    expect(storable(request(), response({}, 302), options)).toBe(true)
    expect(storable(request(), response({}, 404), options)).toBe(false)
  })

  it("§3 header names are matched case-insensitively", () => {
    expect(storable(request(), { status: 200, headers: { "Cache-Control": "no-store" } }, SHARED)).toBe(false)
    expect(storable(request({ Authorization: "Bearer x" }), response({ "cache-control": "max-age=60" }), SHARED))
      .toBe(false)
  })

  it("§3 the reason names the deciding rule", () => {
    const result = HttpCachePolicy.storability(request(), response({ "cache-control": "no-store" }), SHARED)
    expect(result).toEqual({ storable: false, reason: expect.stringContaining("no-store") })
  })
})

describe("RFC 9111 §3.1 storing header fields", () => {
  it("§3.1 hop-by-hop fields and fields named by Connection are not stored", () => {
    const stored = cached({
      "cache-control": "max-age=60",
      connection: "close, x-hop",
      "x-hop": "1",
      "keep-alive": "timeout=5",
      "transfer-encoding": "chunked",
      "x-end": "kept"
    })
    expect(Object.keys(stored.responseHeaders).sort()).toEqual(["cache-control", "date", "x-end"])
  })

  it("§5.2.2.4 fields named by no-cache=\"...\" are stored without those fields", () => {
    const stored = cached({
      "cache-control": "max-age=60, no-cache=\"x-secret, X-Other\"",
      "x-secret": "s",
      "x-other": "o"
    })
    expect(stored.responseHeaders["x-secret"]).toBeUndefined()
    expect(stored.responseHeaders["x-other"]).toBeUndefined()
    expect(lookupAfter(stored, 1, SHARED)._tag).toBe("Fresh")
  })

  it("§5.2.2.7 private=\"...\" fields are dropped by a shared cache and kept by a private cache", () => {
    const headers = { "cache-control": "max-age=60, private=\"x-user\"", "x-user": "alice" }
    expect(storable(request(), response(headers), SHARED)).toBe(true)
    expect(cached(headers, SHARED).responseHeaders["x-user"]).toBeUndefined()
    expect(cached(headers, PRIVATE).responseHeaders["x-user"]).toBe("alice")
  })
})

describe("RFC 9111 §3.5 storing responses to authenticated requests", () => {
  const auth = request({ authorization: "Bearer alice" })

  it("§3.5 a shared cache does not store a response to a request with Authorization", () => {
    expect(storable(auth, response({ "cache-control": "max-age=60" }), SHARED)).toBe(false)
  })

  it("§3.5 a shared cache stores it with public", () => {
    expect(storable(auth, response({ "cache-control": "public, max-age=60" }), SHARED)).toBe(true)
  })

  it("§3.5 a shared cache stores it with s-maxage", () => {
    expect(storable(auth, response({ "cache-control": "s-maxage=60" }), SHARED)).toBe(true)
  })

  it("§3.5 a shared cache stores it with must-revalidate", () => {
    expect(storable(auth, response({ "cache-control": "must-revalidate, max-age=60" }), SHARED)).toBe(true)
  })

  it("§3.5 a private cache stores responses to Authorization requests", () => {
    expect(storable(auth, response({ "cache-control": "max-age=60" }), PRIVATE)).toBe(true)
  })
})

describe("RFC 9111 §5.2.2 response directives that restrict storing", () => {
  it("§5.2.2.5 no-store is never stored, in a shared or a private cache", () => {
    const res = response({ "cache-control": "public, max-age=60, no-store" })
    expect(storable(request(), res, SHARED)).toBe(false)
    expect(storable(request(), res, PRIVATE)).toBe(false)
  })

  it("§5.2.2.7 a shared cache does not store a private response", () => {
    expect(storable(request(), response({ "cache-control": "private, max-age=60" }), SHARED)).toBe(false)
  })

  it("§5.2.2.7 a private cache may store a private response", () => {
    expect(storable(request(), response({ "cache-control": "private, max-age=60" }), PRIVATE)).toBe(true)
    expect(storable(request(), response({ "cache-control": "private" }, 500), PRIVATE)).toBe(false)
  })

  it("§5.2.2.3 must-understand with an understood status overrides no-store", () => {
    expect(storable(request(), response({ "cache-control": "must-understand, no-store, max-age=60" }), SHARED))
      .toBe(true)
  })

  it("§5.2.2.3 must-understand with a status the cache does not understand is not stored", () => {
    expect(storable(request(), response({ "cache-control": "must-understand, max-age=60" }, 299), SHARED))
      .toBe(false)
  })

  it("§5.2.1.5 a request with no-store is not stored (the stored response may still be used)", () => {
    const req = request({ "cache-control": "no-store" })
    expect(storable(req, response({ "cache-control": "max-age=60" }), SHARED)).toBe(false)
    const stored = cached({ "cache-control": "max-age=60" })
    expect(lookupAfter(stored, 1, SHARED, req)._tag).toBe("Fresh")
  })
})

describe("Set-Cookie (RFC 6265 §8 and RFC 9111 §7.3: never replayed to another user)", () => {
  it("a shared cache does not store a response with Set-Cookie", () => {
    expect(storable(request(), response({ "cache-control": "public, max-age=60", "set-cookie": "sid=1" }), SHARED))
      .toBe(false)
  })

  it("a shared cache stores it when no-cache=\"set-cookie\" or private=\"set-cookie\" names it, without the field", () => {
    for (const cc of ["max-age=60, no-cache=\"Set-Cookie\"", "max-age=60, private=\"set-cookie\""]) {
      const headers = { "cache-control": cc, "set-cookie": "sid=1" }
      expect(storable(request(), response(headers), SHARED)).toBe(true)
      expect(cached(headers).responseHeaders["set-cookie"]).toBeUndefined()
    }
  })

  it("a private cache stores the response but never replays Set-Cookie", () => {
    const headers = { "cache-control": "max-age=60", "set-cookie": "sid=1" }
    expect(storable(request(), response(headers), PRIVATE)).toBe(true)
    const hit = lookupAfter(cached(headers, PRIVATE), 1, PRIVATE)
    expect(hit._tag === "Fresh" && hit.headers["set-cookie"]).toBe(undefined)
  })
})

describe("RFC 9111 §4.2.1 calculating freshness lifetime", () => {
  it("§4.2.1 s-maxage overrides max-age and Expires in a shared cache", () => {
    const stored = cached({ "cache-control": "max-age=10, s-maxage=100", expires: httpDate(T0 + 5_000) })
    expect(HttpCachePolicy.freshnessLifetime(stored, SHARED)).toBe(100)
  })

  it("§4.2.1 a private cache ignores s-maxage", () => {
    const stored = cached({ "cache-control": "max-age=10, s-maxage=100" }, PRIVATE)
    expect(HttpCachePolicy.freshnessLifetime(stored, PRIVATE)).toBe(10)
  })

  it("§4.2.1 max-age overrides Expires", () => {
    const stored = cached({ "cache-control": "max-age=10", expires: httpDate(T0 + 500_000) })
    expect(HttpCachePolicy.freshnessLifetime(stored, SHARED)).toBe(10)
  })

  it("§4.2.1 Expires minus Date gives the lifetime", () => {
    const stored = cached({ date: httpDate(T0 - 30_000), expires: httpDate(T0 + 30_000) })
    expect(HttpCachePolicy.freshnessLifetime(stored, SHARED)).toBe(60)
  })

  it("§4.2.1 Expires without Date is measured from the response time", () => {
    const stored = storeAt(request(), { status: 200, headers: { expires: httpDate(T0 + 42_000) } }, SHARED)
    expect(HttpCachePolicy.freshnessLifetime(stored, SHARED)).toBe(42)
  })

  it("§5.3 an invalid Expires such as \"0\" means already expired", () => {
    for (const expires of ["0", "-1", "tomorrow", "Thu, 31 Feb 2026 00:00:00 GMT"]) {
      const stored = cached({ expires })
      expect(HttpCachePolicy.freshnessLifetime(stored, SHARED)).toBe(0)
      expect(lookupAfter(stored, 0, SHARED)._tag).toBe("Stale")
    }
  })

  it("§5.3 Expires in the obsolete RFC 850 and asctime formats is understood", () => {
    expect(HttpCachePolicy.parseHttpDate("Sunday, 06-Nov-94 08:49:37 GMT")).toBe(Date.UTC(1994, 10, 6, 8, 49, 37))
    expect(HttpCachePolicy.parseHttpDate("Sun Nov  6 08:49:37 1994")).toBe(Date.UTC(1994, 10, 6, 8, 49, 37))
    expect(HttpCachePolicy.parseHttpDate("Sun, 06 Nov 1994 08:49:37 GMT")).toBe(Date.UTC(1994, 10, 6, 8, 49, 37))
  })

  it("§4.2.1 maxTtlMillis caps the lifetime", () => {
    const options: Options = { shared: true, maxTtlMillis: 5_000 }
    const stored = storeAt(request(), response({ "cache-control": "max-age=3600" }), options)
    expect(HttpCachePolicy.freshnessLifetime(stored, options)).toBe(5)
    expect(lookupAfter(stored, 6, options)._tag).toBe("Stale")
  })

  it("§4.2 a response is fresh while its lifetime exceeds its age, and stale from then on", () => {
    const stored = cached({ "cache-control": "max-age=60" })
    expect(lookupAfter(stored, 59.999, SHARED)._tag).toBe("Fresh")
    expect(lookupAfter(stored, 60, SHARED)._tag).toBe("Stale")
  })

  it("§4.2 a response without any freshness information is stale at once", () => {
    const stored = cached({})
    expect(lookupAfter(stored, 0, SHARED)._tag).toBe("Stale")
  })
})

describe("RFC 9111 §4.2.2 heuristic freshness", () => {
  const lastModified = httpDate(T0 - 1000 * 1000)

  it("§4.2.2 a 200 with Last-Modified is fresh for 10% of Date minus Last-Modified", () => {
    const stored = cached({ "last-modified": lastModified })
    expect(HttpCachePolicy.freshnessLifetime(stored, SHARED)).toBe(100)
    expect(lookupAfter(stored, 99, SHARED)._tag).toBe("Fresh")
    expect(lookupAfter(stored, 101, SHARED)._tag).toBe("Stale")
  })

  it("§4.2.2 the heuristicFraction option changes the fraction", () => {
    const options: Options = { shared: true, heuristicFraction: 0.5 }
    const stored = storeAt(request(), response({ "last-modified": lastModified }), options)
    expect(HttpCachePolicy.freshnessLifetime(stored, options)).toBe(500)
  })

  it("§4.2.2 no heuristic freshness without Last-Modified", () => {
    expect(HttpCachePolicy.freshnessLifetime(cached({}), SHARED)).toBe(0)
  })

  it("§4.2.2 no heuristic freshness when Expires is present, even an invalid one", () => {
    expect(HttpCachePolicy.freshnessLifetime(cached({ "last-modified": lastModified, expires: "0" }), SHARED)).toBe(0)
  })

  it("§4.2.2 a status that is not heuristically cacheable gets none, unless marked public", () => {
    const req = request()
    const plain = storeAt(req, response({ "last-modified": lastModified }, 500), SHARED)
    const pub = storeAt(req, response({ "last-modified": lastModified, "cache-control": "public" }, 500), SHARED)
    expect(HttpCachePolicy.freshnessLifetime(plain, SHARED)).toBe(0)
    expect(HttpCachePolicy.freshnessLifetime(pub, SHARED)).toBe(100)
  })

  it("§4.2.2 a Last-Modified after Date gives no heuristic freshness", () => {
    expect(HttpCachePolicy.freshnessLifetime(cached({ "last-modified": httpDate(T0 + 60_000) }), SHARED)).toBe(0)
  })
})

describe("RFC 9111 §4.2.3 calculating age", () => {
  it("§4.2.3 corrected age is the Age header plus the response delay", () => {
    const stored = storeAt(request(), response({ age: "30", "cache-control": "max-age=60" }), SHARED, T0 - 2000, T0)
    expect(HttpCachePolicy.currentAge(stored, T0)).toBe(32)
  })

  it("§4.2.3 apparent age (response time minus Date) wins when it is larger", () => {
    const res = response({ date: httpDate(T0 - 50_000), age: "10" })
    expect(HttpCachePolicy.currentAge(storeAt(request(), res, SHARED), T0)).toBe(50)
  })

  it("§4.2.3 age includes resident time", () => {
    const stored = cached({ age: "5", "cache-control": "max-age=60" })
    expect(HttpCachePolicy.currentAge(stored, T0 + 20_000)).toBe(25)
    const hit = lookupAfter(stored, 20, SHARED)
    expect(hit._tag === "Fresh" && [hit.age, hit.ttl]).toEqual([25, 35])
  })

  it("§4.2.3 a Date in the future (clock skew) gives an apparent age of 0", () => {
    const stored = cached({ date: httpDate(T0 + 3_600_000), "cache-control": "max-age=60" })
    expect(HttpCachePolicy.currentAge(stored, T0)).toBe(0)
  })

  it("§4.2.3 a missing or invalid Date counts as the response time", () => {
    const res: Res = { status: 200, headers: { date: "yesterday", "cache-control": "max-age=60" } }
    expect(HttpCachePolicy.currentAge(storeAt(request(), res, SHARED), T0 + 1000)).toBe(1)
  })

  it("§5.1 the Age sent on a hit is the current age in whole seconds", () => {
    const stored = cached({ age: "3", "cache-control": "max-age=60" })
    const hit = lookupAfter(stored, 1.9, SHARED)
    expect(hit._tag === "Fresh" && hit.headers.age).toBe("4")
  })

  it("§5.1 the Age advances between hits on the same stored policy", () => {
    const stored = cached({ "cache-control": "max-age=60" })
    const ages = [1.2, 1.7, 2.5, 1.1].map((s) => {
      const hit = lookupAfter(stored, s, SHARED)
      return hit._tag === "Fresh" ? hit.headers.age : undefined
    })
    expect(ages).toEqual(["1", "1", "2", "1"])
  })

  it("§5.1 an invalid Age is ignored and a repeated Age takes the largest value", () => {
    expect(HttpCachePolicy.currentAge(cached({ age: "abc" }), T0)).toBe(0)
    expect(HttpCachePolicy.currentAge(cached({ age: "-5" }), T0)).toBe(0)
    expect(HttpCachePolicy.currentAge(cached({ age: "1.5" }), T0)).toBe(0)
    expect(HttpCachePolicy.currentAge(cached({ age: "10, 40, x" }), T0)).toBe(40)
  })

  it("§5.1 an Age beyond 2^31 is capped at 2^31 seconds", () => {
    const stored = cached({ age: "99999999999999999999", "cache-control": "max-age=60" })
    expect(HttpCachePolicy.currentAge(stored, T0)).toBe(2147483648)
    const result = lookupAfter(stored, 0, SHARED)
    expect(result._tag === "Stale" && result.headers.age).toBe("2147483648")
  })

  it("§4.2.3 an Age from upstream makes the response stale sooner", () => {
    const stored = cached({ age: "50", "cache-control": "max-age=60" })
    expect(lookupAfter(stored, 9, SHARED)._tag).toBe("Fresh")
    expect(lookupAfter(stored, 11, SHARED)._tag).toBe("Stale")
  })
})

describe("RFC 9111 §4 constructing responses from caches", () => {
  it("§4 a stored GET response answers a HEAD request", () => {
    const stored = cached({ "cache-control": "max-age=60" })
    expect(lookupAfter(stored, 1, SHARED, request({}, "HEAD"))._tag).toBe("Fresh")
  })

  it("§4 a stored HEAD response does not answer a GET request", () => {
    const stored = storeAt(request({}, "HEAD"), response({ "cache-control": "max-age=60" }), SHARED)
    expect(stored.method).toBe("HEAD")
    expect(lookupAfter(stored, 1, SHARED, request({}, "HEAD"))._tag).toBe("Fresh")
    expect(lookupAfter(stored, 1, SHARED, request({}, "GET"))._tag).toBe("VaryMismatch")
  })

  it("§4 a fresh hit carries the stored headers plus Age", () => {
    const stored = cached({ "cache-control": "max-age=60", "content-type": "text/plain", etag: "\"a\"" })
    const hit = lookupAfter(stored, 2, SHARED)
    expect(hit._tag === "Fresh" && hit.headers).toEqual({ ...stored.responseHeaders, age: "2" })
  })

  it("§4 a stored 206 answers only a request for the same Range", () => {
    const req = request({ range: "bytes=0-99" })
    const stored = storeAt(
      req,
      response({ "cache-control": "max-age=60", "content-range": "bytes 0-99/1000" }, 206),
      SHARED
    )
    expect(lookupAfter(stored, 1, SHARED, req)._tag).toBe("Fresh")
    expect(lookupAfter(stored, 1, SHARED, request({ range: "bytes=100-199" }))._tag).toBe("VaryMismatch")
    expect(lookupAfter(stored, 1, SHARED, request())._tag).toBe("VaryMismatch")
  })
})

describe("RFC 9111 §4.1 calculating cache keys with Vary", () => {
  const varyOn = (vary: string, reqHeaders: Record<string, string>) =>
    cached({ "cache-control": "max-age=60", vary }, SHARED, request(reqHeaders))

  it("§4.1 a stored response is selected when the Vary-named request fields match", () => {
    const stored = varyOn("Accept-Encoding", { "accept-encoding": "gzip" })
    expect(lookupAfter(stored, 1, SHARED, request({ "accept-encoding": "gzip" }))._tag).toBe("Fresh")
  })

  it("§4.1 a request with different values of a Vary-named field does not match", () => {
    const stored = varyOn("Accept-Encoding", { "accept-encoding": "gzip" })
    expect(lookupAfter(stored, 1, SHARED, request({ "accept-encoding": "br" }))._tag).toBe("VaryMismatch")
  })

  it("§4.1 an absent field matches only an absent field", () => {
    const stored = varyOn("Accept-Language", {})
    expect(lookupAfter(stored, 1, SHARED, request())._tag).toBe("Fresh")
    expect(lookupAfter(stored, 1, SHARED, request({ "accept-language": "" }))._tag).toBe("VaryMismatch")
    expect(lookupAfter(stored, 1, SHARED, request({ "accept-language": "en" }))._tag).toBe("VaryMismatch")
  })

  it("§4.1 all Vary-named fields must match", () => {
    const stored = varyOn("Accept-Encoding, Accept-Language", { "accept-encoding": "gzip", "accept-language": "en" })
    expect(HttpCachePolicy.varyMatches(stored, request({ "accept-encoding": "gzip", "accept-language": "en" })))
      .toBe(true)
    expect(HttpCachePolicy.varyMatches(stored, request({ "accept-encoding": "gzip", "accept-language": "fr" })))
      .toBe(false)
    expect(HttpCachePolicy.varyMatches(stored, request({ "accept-encoding": "gzip" }))).toBe(false)
  })

  it("§4.1 whitespace is normalised in every field, and token case in content-negotiation fields", () => {
    const stored = varyOn("accept-encoding, x-tenant", { "accept-encoding": "gzip, br;q=0.5", "x-tenant": "Acme  Co" })
    const same = request({ "accept-encoding": "  GZIP,BR ; q=0.5 ", "x-tenant": "Acme Co" })
    expect(HttpCachePolicy.varyMatches(stored, same)).toBe(true)
    // x-tenant is not known to be case-insensitive: its case is kept.
    expect(HttpCachePolicy.varyMatches(stored, request({ "accept-encoding": "gzip, br;q=0.5", "x-tenant": "acme co" })))
      .toBe(false)
  })

  it("§4.1 Vary field names are case-insensitive", () => {
    const stored = varyOn("ACCEPT-Encoding", { "Accept-Encoding": "gzip" })
    expect(HttpCachePolicy.varyMatches(stored, request({ "accept-encoding": "gzip" }))).toBe(true)
  })

  it("§4.1 Vary: * never matches (and is not stored)", () => {
    const stored = varyOn("*", {})
    expect(stored.vary).toBe("*")
    expect(lookupAfter(stored, 1, SHARED)._tag).toBe("VaryMismatch")
    expect(storable(request(), response({ vary: "Accept, *", "cache-control": "max-age=60" }), SHARED)).toBe(false)
  })

  it("§4.1 varyKey gives equal keys for equivalent requests and different keys otherwise", () => {
    const key = (headers: Record<string, string>) =>
      HttpCachePolicy.varyKey("Accept-Encoding, Accept", request(headers))
    expect(key({ "accept-encoding": "gzip", accept: "text/html" })).toBe(
      key({ accept: "TEXT/HTML", "accept-encoding": " gzip" })
    )
    expect(key({ "accept-encoding": "gzip" })).not.toBe(key({ "accept-encoding": "br" }))
    expect(key({})).not.toBe(key({ "accept-encoding": "null" }))
    expect(HttpCachePolicy.varyKey(undefined, request())).toBe("")
    expect(HttpCachePolicy.varyKey("*", request())).toBe("*")
  })

  it("§4.1 Vary naming constructor reads only the request's own fields", () => {
    const stored = varyOn("constructor, toString", {})
    expect(stored.vary).toEqual({ constructor: null, tostring: null })
    expect(lookupAfter(stored, 1, SHARED, request())._tag).toBe("Fresh")
    const decoded = HttpCachePolicy.decodeStoredPolicy(HttpCachePolicy.encodeStoredPolicy(stored))!
    expect(decoded.vary).toEqual(stored.vary)
    expect(lookupAfter(decoded, 1, SHARED, request({ constructor: "x" }))._tag).toBe("VaryMismatch")
  })

  it("§4.1 Vary naming __proto__ (not representable as a stored key) never matches, like Vary: *", () => {
    expect(varyOn("accept, __proto__", {}).vary).toBe("*")
    expect(storable(request(), response({ vary: "__proto__", "cache-control": "max-age=60" }), SHARED)).toBe(false)
  })
})

describe("RFC 9111 §4.2.4 serving stale responses", () => {
  it("§4.2.4 a stale response without stale directives must be revalidated and not served on error", () => {
    const stored = cached({ "cache-control": "max-age=60", etag: "\"v1\"" })
    const result = lookupAfter(stored, 70, SHARED)
    expect(result).toMatchObject({
      _tag: "Stale",
      serveWhileRevalidate: false,
      serveIfErrorUntil: 0,
      conditional: { "if-none-match": "\"v1\"" },
      ttl: -10
    })
  })

  it("§5.2.2.2 must-revalidate forbids serving stale, even with stale-while-revalidate or stale-if-error", () => {
    const stored = cached({
      "cache-control": "max-age=60, must-revalidate, stale-while-revalidate=60, stale-if-error=60"
    })
    expect(lookupAfter(stored, 70, SHARED)).toMatchObject({ _tag: "MustRevalidate", serveIfErrorUntil: 0 })
  })

  it("§5.2.2.8 proxy-revalidate forbids stale in a shared cache, not in a private one", () => {
    const headers = { "cache-control": "max-age=60, proxy-revalidate, stale-while-revalidate=60" }
    expect(lookupAfter(cached(headers, SHARED), 70, SHARED)._tag).toBe("MustRevalidate")
    expect(lookupAfter(cached(headers, PRIVATE), 70, PRIVATE)).toMatchObject({
      _tag: "Stale",
      serveWhileRevalidate: true
    })
  })

  it("§5.2.2.10 s-maxage implies proxy-revalidate in a shared cache", () => {
    const headers = { "cache-control": "s-maxage=60, stale-while-revalidate=60, stale-if-error=60" }
    expect(lookupAfter(cached(headers, SHARED), 70, SHARED)).toMatchObject({
      _tag: "MustRevalidate",
      serveIfErrorUntil: 0
    })
  })

  it("§5.2.2.4 a no-cache response is revalidated even while fresh and never served on error", () => {
    const stored = cached({ "cache-control": "no-cache, max-age=600, stale-if-error=600", etag: "\"v1\"" })
    expect(lookupAfter(stored, 1, SHARED)).toMatchObject({
      _tag: "MustRevalidate",
      serveIfErrorUntil: 0,
      conditional: { "if-none-match": "\"v1\"" }
    })
  })
})

describe("RFC 5861 stale-while-revalidate and stale-if-error", () => {
  it("RFC 5861 §3 inside stale-while-revalidate the stale response is served while revalidating", () => {
    const stored = cached({ "cache-control": "max-age=60, stale-while-revalidate=30" })
    expect(lookupAfter(stored, 89, SHARED)).toMatchObject({ _tag: "Stale", serveWhileRevalidate: true })
  })

  it("RFC 5861 §3 after the stale-while-revalidate window the response is revalidated first", () => {
    const stored = cached({ "cache-control": "max-age=60, stale-while-revalidate=30" })
    expect(lookupAfter(stored, 91, SHARED)).toMatchObject({ _tag: "Stale", serveWhileRevalidate: false })
  })

  it("RFC 5861 §4 stale-if-error lets a stale response be served on error until expiry plus the window", () => {
    const stored = cached({ "cache-control": "max-age=60, stale-if-error=300" })
    expect(lookupAfter(stored, 100, SHARED)).toMatchObject({ _tag: "Stale", serveIfErrorUntil: T0 + 360_000 })
    expect(lookupAfter(stored, 400, SHARED)).toMatchObject({ _tag: "Stale", serveIfErrorUntil: 0 })
  })

  it("RFC 5861 §4 stale-if-error may come from the request", () => {
    const stored = cached({ "cache-control": "max-age=60" })
    const req = request({ "cache-control": "stale-if-error=100" })
    expect(lookupAfter(stored, 70, SHARED, req)).toMatchObject({ _tag: "Stale", serveIfErrorUntil: T0 + 160_000 })
  })

  it("RFC 5861 §4 stale-if-error does not apply with no-cache or must-revalidate", () => {
    for (const cc of ["max-age=60, stale-if-error=300, must-revalidate", "no-cache, stale-if-error=300"]) {
      expect(lookupAfter(cached({ "cache-control": cc }), 70, SHARED)).toMatchObject({ serveIfErrorUntil: 0 })
    }
  })

  it("RFC 5861 stale windows extend how long the entry is retained", () => {
    const stored = cached({ "cache-control": "max-age=60, stale-while-revalidate=30, stale-if-error=120" })
    expect(HttpCachePolicy.retainUntil(stored, SHARED)).toBe(T0 + 180_000)
    expect(HttpCachePolicy.retainUntil(cached({ "cache-control": "max-age=60" }), SHARED)).toBe(T0 + 60_000)
    // With a validator it stays an hour longer so it can be revalidated with a 304.
    expect(HttpCachePolicy.retainUntil(cached({ "cache-control": "max-age=60", etag: "\"x\"" }), SHARED))
      .toBe(T0 + 60_000 + 3_600_000)
    const options: Options = { shared: true, revalidationWindowMillis: 5_000 }
    const withTag = storeAt(request(), response({ "cache-control": "max-age=60", etag: "\"x\"" }), options)
    expect(HttpCachePolicy.retainUntil(withTag, options)).toBe(T0 + 65_000)
  })
})

describe("RFC 9111 §5.2.1 request directives", () => {
  const stored = cached({ "cache-control": "max-age=600", etag: "\"v1\"" })

  it("§5.2.1.1 max-age: a response older than the request's max-age is revalidated", () => {
    expect(lookupAfter(stored, 30, SHARED, request({ "cache-control": "max-age=20" }))).toMatchObject({
      _tag: "MustRevalidate",
      conditional: { "if-none-match": "\"v1\"" },
      // Still fresh for the origin: it may be served if revalidation fails.
      serveIfErrorUntil: T0 + 600_000
    })
    expect(lookupAfter(stored, 10, SHARED, request({ "cache-control": "max-age=20" }))._tag).toBe("Fresh")
  })

  it("§5.2.1.1 max-age=0 always revalidates", () => {
    expect(lookupAfter(stored, 0, SHARED, request({ "cache-control": "max-age=0" }))._tag).toBe("MustRevalidate")
  })

  it("§5.2.1.2 max-stale=N accepts a response stale by at most N seconds", () => {
    const short = cached({ "cache-control": "max-age=60" })
    const req = request({ "cache-control": "max-stale=30" })
    expect(lookupAfter(short, 85, SHARED, req)).toMatchObject({ _tag: "Fresh", ttl: -25 })
    expect(lookupAfter(short, 95, SHARED, req)._tag).toBe("Stale")
  })

  it("§5.2.1.2 max-stale without a value accepts any staleness", () => {
    const short = cached({ "cache-control": "max-age=60" })
    expect(lookupAfter(short, 1e6, SHARED, request({ "cache-control": "max-stale" }))._tag).toBe("Fresh")
  })

  it("§5.2.1.2 max-stale does not override must-revalidate", () => {
    const strict = cached({ "cache-control": "max-age=60, must-revalidate" })
    expect(lookupAfter(strict, 70, SHARED, request({ "cache-control": "max-stale" }))._tag).toBe("MustRevalidate")
  })

  it("§5.2.1.3 min-fresh: the response must stay fresh for at least N more seconds", () => {
    expect(lookupAfter(stored, 500, SHARED, request({ "cache-control": "min-fresh=50" }))._tag).toBe("Fresh")
    expect(lookupAfter(stored, 560, SHARED, request({ "cache-control": "min-fresh=50" }))._tag).toBe("MustRevalidate")
  })

  it("§5.2.1.4 no-cache: the stored response is used only after validation", () => {
    expect(lookupAfter(stored, 1, SHARED, request({ "cache-control": "no-cache" }))).toMatchObject({
      _tag: "MustRevalidate",
      conditional: { "if-none-match": "\"v1\"" }
    })
  })

  it("§5.4 Pragma: no-cache counts as no-cache when the request has no Cache-Control", () => {
    expect(lookupAfter(stored, 1, SHARED, request({ pragma: "no-cache" }))._tag).toBe("MustRevalidate")
    expect(lookupAfter(stored, 1, SHARED, request({ pragma: "no-cache", "cache-control": "max-stale" }))._tag)
      .toBe("Fresh")
  })

  it("§5.2.1.7 only-if-cached forbids the network", () => {
    expect(HttpCachePolicy.forbidsNetwork(request({ "cache-control": "only-if-cached" }))).toBe(true)
    expect(HttpCachePolicy.forbidsNetwork(request())).toBe(false)
  })
})

describe("RFC 9111 §4.3 validation", () => {
  const withValidators = {
    "cache-control": "max-age=60",
    etag: "\"v1\"",
    "last-modified": httpDate(T0 - 86_400_000),
    "content-length": "5",
    "content-type": "text/plain"
  }
  const later = { requestTime: T0 + 100_000, responseTime: T0 + 100_000 }
  const revalidate = (storedHeaders: Record<string, string>, headers304: Record<string, string>, options = SHARED) =>
    HttpCachePolicy.revalidated(
      cached(storedHeaders, options),
      request(),
      { status: 304, headers: headers304 },
      later,
      options
    )

  it("§4.3.1 the conditional request carries If-None-Match from ETag and If-Modified-Since from Last-Modified", () => {
    expect(HttpCachePolicy.conditionalHeaders(cached(withValidators))).toEqual({
      "if-none-match": "\"v1\"",
      "if-modified-since": withValidators["last-modified"]
    })
  })

  it("§4.3.1 without validators the request is unconditional", () => {
    expect(HttpCachePolicy.conditionalHeaders(cached({ "cache-control": "max-age=1" }))).toEqual({})
    expect(HttpCachePolicy.conditionalHeaders(cached({ "last-modified": "not a date" }))).toEqual({})
  })

  it("§4.3.1 a weak ETag is sent as is in If-None-Match", () => {
    expect(HttpCachePolicy.conditionalHeaders(cached({ etag: "W/\"w1\"" }))).toEqual({ "if-none-match": "W/\"w1\"" })
  })

  it("§4.3.4 a 304 with the same strong ETag updates the stored headers and times", () => {
    const result = revalidate(withValidators, {
      etag: "\"v1\"",
      "cache-control": "max-age=120",
      date: httpDate(T0 + 100_000),
      "x-new": "1"
    })
    expect(result._tag).toBe("Updated")
    if (result._tag !== "Updated") return
    expect(result.storable).toBe(true)
    expect(result.policy.responseHeaders).toMatchObject({
      "cache-control": "max-age=120",
      "x-new": "1",
      "content-type": "text/plain"
    })
    expect(result.policy.responseTime).toBe(T0 + 100_000)
    expect(lookupAfter(result.policy, 210, SHARED)._tag).toBe("Fresh")
    expect(lookupAfter(result.policy, 230, SHARED)._tag).toBe("Stale")
  })

  it("§4.3.4 a 304 with a different strong ETag does not update the stored response", () => {
    expect(revalidate(withValidators, { etag: "\"v2\"" })._tag).toBe("Mismatch")
  })

  it("§4.3.4 a strong ETag does not select a stored response with a weak ETag", () => {
    expect(revalidate({ etag: "W/\"v1\"" }, { etag: "\"v1\"" })._tag).toBe("Mismatch")
  })

  it("§4.3.4 a weak ETag selects by weak comparison", () => {
    expect(revalidate({ etag: "\"v1\"" }, { etag: "W/\"v1\"" })._tag).toBe("Updated")
    expect(revalidate({ etag: "W/\"v1\"" }, { etag: "W/\"v1\"" })._tag).toBe("Updated")
    expect(revalidate({ etag: "W/\"v1\"" }, { etag: "W/\"v2\"" })._tag).toBe("Mismatch")
  })

  it("§4.3.4 without an ETag, a matching Last-Modified selects the stored response", () => {
    expect(revalidate(withValidators, { "last-modified": withValidators["last-modified"] })._tag).toBe("Updated")
    expect(revalidate(withValidators, { "last-modified": httpDate(T0) })._tag).toBe("Mismatch")
  })

  it("§4.3.4 a 304 without any validator updates the response it was asked about", () => {
    expect(revalidate(withValidators, { "cache-control": "max-age=5" })._tag).toBe("Updated")
  })

  it("§3.2 a 304 does not overwrite Content-Length, Content-Encoding or Content-Range, nor add hop-by-hop fields", () => {
    const result = revalidate({ ...withValidators, "content-encoding": "gzip" }, {
      etag: "\"v1\"",
      "content-length": "0",
      "content-encoding": "br",
      connection: "x-hop",
      "x-hop": "1",
      "keep-alive": "timeout=1"
    })
    expect(result._tag === "Updated" && result.policy.responseHeaders).toMatchObject({
      "content-length": "5",
      "content-encoding": "gzip"
    })
    expect(result._tag === "Updated" && Object.keys(result.policy.responseHeaders)).not.toContain("x-hop")
  })

  it("§4.3.4 after a merge the age restarts from the 304 (its Date, or the receipt time)", () => {
    const noDate = revalidate(withValidators, { etag: "\"v1\"" })
    expect(noDate._tag === "Updated" && HttpCachePolicy.currentAge(noDate.policy, T0 + 100_000)).toBe(0)
    const aged = revalidate({ ...withValidators, age: "50" }, {
      etag: "\"v1\"",
      age: "7",
      date: httpDate(T0 + 100_000)
    })
    expect(aged._tag === "Updated" && HttpCachePolicy.currentAge(aged.policy, T0 + 100_000)).toBe(7)
  })

  it("§4.3.4 a 304 that makes the response no-store or private marks the merge not storable", () => {
    const noStore = revalidate(withValidators, { etag: "\"v1\"", "cache-control": "no-store" })
    expect(noStore._tag === "Updated" && noStore.storable).toBe(false)
    const priv = revalidate(withValidators, { etag: "\"v1\"", "cache-control": "private, max-age=60" })
    expect(priv._tag === "Updated" && priv.storable).toBe(false)
  })

  it("§3.5 a 304 to a request with Authorization keeps a stored public-less response stored (its content is not the user's)", () => {
    const stored = cached(withValidators)
    const authorized = request({ authorization: "Bearer b" })
    const result = HttpCachePolicy.revalidated(
      stored,
      authorized,
      { status: 304, headers: { etag: "\"v1\"" } },
      later,
      SHARED
    )
    expect(result._tag === "Updated" && result.storable).toBe(true)
    const noStore = request({ "cache-control": "no-store" })
    const refused = HttpCachePolicy.revalidated(
      stored,
      noStore,
      { status: 304, headers: { etag: "\"v1\"" } },
      later,
      SHARED
    )
    expect(refused._tag === "Updated" && refused.storable).toBe(false)
  })

  it("§4.3.4 a 304 cannot reintroduce Set-Cookie into the stored response", () => {
    const result = revalidate(withValidators, { etag: "\"v1\"", "set-cookie": "sid=2" })
    expect(result._tag === "Updated" && result.policy.responseHeaders["set-cookie"]).toBe(undefined)
  })

  it("§4.3.3 a non-304 answer is not a revalidation", () => {
    const stored = cached(withValidators)
    expect(HttpCachePolicy.revalidated(stored, request(), response({ etag: "\"v1\"" }), later, SHARED)._tag)
      .toBe("Mismatch")
  })
})

describe("RFC 9111 §4.3.5 freshening stored responses upon HEAD", () => {
  const stored = cached({ "cache-control": "max-age=60", etag: "\"v1\"", "content-length": "10", "x-a": "old" })
  const later = { requestTime: T0 + 100_000, responseTime: T0 + 100_000 }
  const head = request({}, "HEAD")
  const freshen = (headers: Record<string, string>) =>
    HttpCachePolicy.freshenedByHead(stored, head, { status: 200, headers }, later, SHARED)

  it("§4.3.5 a HEAD 200 with the same validators and Content-Length updates the stored GET response", () => {
    const result = freshen({ etag: "\"v1\"", "content-length": "10", "cache-control": "max-age=300", "x-a": "new" })
    expect(result._tag).toBe("Updated")
    if (result._tag !== "Updated") return
    expect(result.policy.responseHeaders).toMatchObject({ "cache-control": "max-age=300", "x-a": "new" })
    expect(lookupAfter(result.policy, 350, SHARED)._tag).toBe("Fresh")
  })

  it("§4.3.5 a different ETag or Content-Length means the stored response is stale", () => {
    expect(freshen({ etag: "\"v2\"", "content-length": "10" })._tag).toBe("Mismatch")
    expect(freshen({ etag: "\"v1\"", "content-length": "11" })._tag).toBe("Mismatch")
  })

  it("§4.3.5 only a 200 to HEAD freshens a stored GET", () => {
    expect(HttpCachePolicy.freshenedByHead(stored, request(), { status: 200, headers: {} }, later, SHARED)._tag)
      .toBe("Mismatch")
    expect(HttpCachePolicy.freshenedByHead(stored, head, { status: 404, headers: {} }, later, SHARED)._tag)
      .toBe("Mismatch")
  })
})

describe("RFC 9111 §4.3.2 handling a received validation request", () => {
  const lastModified = httpDate(T0 - 86_400_000)
  const hitHeaders = {
    "cache-control": "max-age=60",
    "cdn-cache-control": "max-age=600",
    etag: "W/\"v1\"",
    date: httpDate(T0),
    vary: "accept-encoding",
    "last-modified": lastModified,
    "content-type": "text/html",
    "content-length": "1000",
    age: "3"
  }

  it("§4.3.2 If-None-Match with a matching entity-tag (weak comparison) is answered with 304 headers", () => {
    expect(HttpCachePolicy.notModified(hitHeaders, request({ "if-none-match": "\"x\", \"v1\"" }))).toEqual({
      "cache-control": "max-age=60",
      "cdn-cache-control": "max-age=600",
      etag: "W/\"v1\"",
      date: httpDate(T0),
      vary: "accept-encoding",
      age: "3"
    })
  })

  it("§4.3.2 If-None-Match: * matches any stored response", () => {
    expect(HttpCachePolicy.notModified(hitHeaders, request({ "if-none-match": "*" }))).toBeDefined()
  })

  it("§4.3.2 a non-matching If-None-Match gets the full response, and If-Modified-Since is then ignored", () => {
    const req = request({ "if-none-match": "\"v2\"", "if-modified-since": httpDate(T0) })
    expect(HttpCachePolicy.notModified(hitHeaders, req)).toBeUndefined()
  })

  it("§4.3.2 If-Modified-Since at or after Last-Modified is answered with 304", () => {
    expect(HttpCachePolicy.notModified(hitHeaders, request({ "if-modified-since": lastModified }))).toBeDefined()
    expect(HttpCachePolicy.notModified(hitHeaders, request({ "if-modified-since": httpDate(T0 - 86_400_000 - 1000) })))
      .toBeUndefined()
  })

  it("§4.3.2 without Last-Modified, If-Modified-Since is compared with Date; a 304 then keeps Last-Modified only without ETag", () => {
    const headers = { date: httpDate(T0), "cache-control": "max-age=60" }
    expect(HttpCachePolicy.notModified(headers, request({ "if-modified-since": httpDate(T0) }))).toEqual(headers)
    expect(HttpCachePolicy.notModified(headers, request({ "if-modified-since": httpDate(T0 - 1000) }))).toBeUndefined()
    const lm = { "last-modified": lastModified }
    expect(HttpCachePolicy.notModified(lm, request({ "if-modified-since": lastModified }))).toEqual(lm)
  })

  it("§4.3.2 an invalid If-Modified-Since date, or a method other than GET/HEAD, gets the full response", () => {
    expect(HttpCachePolicy.notModified(hitHeaders, request({ "if-modified-since": "yesterday" }))).toBeUndefined()
    expect(HttpCachePolicy.notModified(hitHeaders, request({ "if-none-match": "*" }, "POST"))).toBeUndefined()
  })
})

describe("RFC 9111 §4.4 invalidating stored responses", () => {
  const post = (url: string, headers: Record<string, string> = {}) => request(headers, "POST", url)

  it("§4.4 a non-error response to an unsafe method invalidates the target URI (query included)", () => {
    expect(HttpCachePolicy.invalidates(post(URL_A), response({}, 201))).toEqual([URL_A])
    expect(HttpCachePolicy.invalidates(request({}, "DELETE", URL_A), response({}, 204))).toEqual([URL_A])
    expect(HttpCachePolicy.invalidates(request({}, "PUT", URL_A), response({}, 303))).toEqual([URL_A])
  })

  it("§4.4 methods of unknown safety invalidate too", () => {
    expect(HttpCachePolicy.invalidates(request({}, "PURGE-ISH", URL_A), response())).toEqual([URL_A])
  })

  it("§4.4 Location and Content-Location are invalidated when same-origin", () => {
    const res = response({ location: "/b?x=1#frag", "content-location": "http://origin.test/c" }, 201)
    expect(HttpCachePolicy.invalidates(post(URL_A), res)).toEqual([
      URL_A,
      "http://origin.test/b?x=1",
      "http://origin.test/c"
    ])
  })

  it("§4.4 Location and Content-Location on another origin are not invalidated", () => {
    const res = response({ location: "http://evil.test/a", "content-location": "https://origin.test/c" }, 201)
    expect(HttpCachePolicy.invalidates(post(URL_A), res)).toEqual([URL_A])
  })

  it("§4.4 a relative request URL is resolved against Host and gives relative results", () => {
    const res = response({ location: "http://origin.test/b", "content-location": "http://other.test/c" }, 200)
    expect(HttpCachePolicy.invalidates(post("/a?q=1", { host: "origin.test" }), res)).toEqual(["/a?q=1", "/b"])
  })

  it("§4.4 error responses invalidate nothing", () => {
    for (const status of [400, 404, 500, 503]) {
      expect(HttpCachePolicy.invalidates(post(URL_A), response({ location: "/b" }, status))).toEqual([])
    }
  })

  it("§4.4 safe methods invalidate nothing", () => {
    for (const method of ["GET", "HEAD", "OPTIONS", "TRACE"]) {
      expect(HttpCachePolicy.invalidates(request({}, method), response())).toEqual([])
    }
  })
})

describe("RFC 9111 §5.2 lenient Cache-Control parsing", () => {
  const parse = HttpCachePolicy.parseCacheControl

  it("§5.2 directive names are case-insensitive and whitespace is ignored", () => {
    expect(parse(" Max-Age=60 ,NO-STORE,  Public")).toMatchObject({ maxAge: 60, noStore: true, public: true })
  })

  it("§5.2 quoted values are accepted", () => {
    expect(parse("max-age=\"60\", s-maxage=\"5\"")).toMatchObject({ maxAge: 60, sMaxage: 5 })
  })

  it("§5.2 field lists in quotes may contain commas", () => {
    expect(parse("no-cache=\"Set-Cookie, X-A\", max-age=10, private=\"x-b\"")).toMatchObject({
      noCache: ["set-cookie", "x-a"],
      maxAge: 10,
      private: ["x-b"]
    })
  })

  it("§4.2.1 duplicate max-age / s-maxage resolve to the smallest value", () => {
    expect(parse("max-age=600, max-age=10, s-maxage=50, s-maxage=5")).toMatchObject({ maxAge: 10, sMaxage: 5 })
    expect(parse("max-age=10, max-age=600, s-maxage=5, s-maxage=50")).toMatchObject({ maxAge: 10, sMaxage: 5 })
    expect(parse("stale-while-revalidate=5, stale-while-revalidate=50, stale-if-error=1, stale-if-error=9"))
      .toMatchObject({ staleWhileRevalidate: 5, staleIfError: 1 })
  })

  it("§5.2 a bare no-cache or private wins over the field-name form", () => {
    expect(parse("no-cache=\"x\", no-cache").noCache).toBe(true)
    expect(parse("private, private=\"x\"").private).toBe(true)
    expect(parse("no-cache=\"\"").noCache).toBe(true)
  })

  it("§4.2.1 an invalid max-age (text, negative, decimal, empty) reads as 0: stale", () => {
    for (const bad of ["max-age=abc", "max-age=-1", "max-age=1.5", "max-age=", "max-age", "max-age=1e3"]) {
      expect(parse(bad).maxAge).toBe(0)
      expect(lookupAfter(cached({ "cache-control": bad }), 0, SHARED)._tag).toBe("Stale")
    }
  })

  it("§4.2.1 an invalid value anywhere among duplicates makes the result conservative", () => {
    expect(parse("max-age=600, max-age=oops").maxAge).toBe(0)
  })

  it("§1.2.2 delta-seconds beyond 2^31 are capped at 2^31", () => {
    expect(parse("max-age=99999999999999999999999").maxAge).toBe(2147483648)
  })

  it("§5.2 stale allowances with bad values read as 0 and min-fresh takes the largest", () => {
    expect(parse("max-stale=x, stale-while-revalidate=?, stale-if-error=-3")).toMatchObject({
      maxStale: 0,
      staleWhileRevalidate: 0,
      staleIfError: 0
    })
    expect(parse("max-stale").maxStale).toBe(Number.POSITIVE_INFINITY)
    expect(parse("max-stale, max-stale=5").maxStale).toBe(5)
    expect(parse("min-fresh=5, min-fresh=50").minFresh).toBe(50)
  })

  it("§5.2.3 unknown directives and stray commas are ignored", () => {
    expect(parse(",, foo=bar, ,max-age=5,\"junk\", x-ext")).toMatchObject({ maxAge: 5, noStore: false })
    expect(parse(undefined)).toMatchObject({ noStore: false, noCache: false, public: false })
  })

  it("§5.2 an unterminated quote does not throw and hides what follows it", () => {
    expect(parse("no-cache=\"x, max-age=60")).toMatchObject({ noCache: ["x", "max-age=60"] })
    expect(parse("no-cache=\"x, max-age=60").maxAge).toBeUndefined()
  })
})

describe("RFC 9213 targeted cache-control fields", () => {
  it("RFC 9213 §2.2 a shared cache uses CDN-Cache-Control over Cache-Control", () => {
    const stored = cached({ "cache-control": "no-cache", "cdn-cache-control": "max-age=600" })
    expect(lookupAfter(stored, 10, SHARED)._tag).toBe("Fresh")
    const res = response({ "cache-control": "max-age=600", "cdn-cache-control": "no-store" })
    expect(storable(request(), res, SHARED)).toBe(false)
  })

  it("RFC 9213 §2.2 the first configured target present wins (cachekit-cache-control before cdn-cache-control)", () => {
    const options: Options = { shared: true, targetedCacheControl: ["Cachekit-Cache-Control", "cdn-cache-control"] }
    const headers = {
      "cache-control": "max-age=1",
      "cdn-cache-control": "max-age=10",
      "cachekit-cache-control": "max-age=100"
    }
    expect(HttpCachePolicy.freshnessLifetime(storeAt(request(), response(headers), options), options)).toBe(100)
  })

  it("RFC 9213 §2.2 a targeted field overrides Expires as well", () => {
    const stored = cached({ expires: httpDate(T0 + 600_000), "cdn-cache-control": "must-revalidate" })
    expect(HttpCachePolicy.freshnessLifetime(stored, SHARED)).toBe(0)
  })

  it("RFC 9213 §2.1 an empty targeted field is ignored", () => {
    const stored = cached({ "cache-control": "max-age=60", "cdn-cache-control": " , " })
    expect(HttpCachePolicy.freshnessLifetime(stored, SHARED)).toBe(60)
  })

  it("RFC 9213 a private cache ignores targeted fields", () => {
    const stored = cached({ "cache-control": "max-age=60", "cdn-cache-control": "no-cache" }, PRIVATE)
    expect(lookupAfter(stored, 1, PRIVATE)._tag).toBe("Fresh")
  })

  it("RFC 9213 targeting can be disabled with an empty list", () => {
    const options: Options = { shared: true, targetedCacheControl: [] }
    const stored = storeAt(
      request(),
      response({ "cache-control": "max-age=60", "cdn-cache-control": "max-age=1" }),
      options
    )
    expect(HttpCachePolicy.freshnessLifetime(stored, options)).toBe(60)
  })

  it("RFC 9213 §2.3 stripTargeted removes the targeted fields for the next hop", () => {
    const headers = { "cache-control": "max-age=1", "cdn-cache-control": "max-age=10", "cachekit-cache-control": "x" }
    expect(HttpCachePolicy.stripTargeted(headers)).toEqual({
      "cache-control": "max-age=1",
      "cachekit-cache-control": "x"
    })
    expect(HttpCachePolicy.stripTargeted(headers, ["cachekit-cache-control", "CDN-Cache-Control"])).toEqual({
      "cache-control": "max-age=1"
    })
  })
})

describe("Cache modes (Fetch cache modes / Rust http-cache CacheMode)", () => {
  const fresh = cached({ "cache-control": "max-age=60", etag: "\"v1\"" })
  const stale = cached({ "cache-control": "max-age=1, must-revalidate", etag: "\"v1\"" })

  it("default follows RFC 9111", () => {
    expect(lookupAfter(fresh, 1, SHARED, request(), "default")._tag).toBe("Fresh")
    expect(lookupAfter(stale, 10, SHARED, request(), "default")._tag).toBe("MustRevalidate")
    expect(HttpCachePolicy.modeRules("default")).toEqual({ read: true, network: true })
  })

  it("no-store neither reads nor stores", () => {
    expect(HttpCachePolicy.modeRules("no-store")).toEqual({ read: false, network: true })
    expect(storable(request(), response({ "cache-control": "max-age=60" }), SHARED, "no-store")).toBe(false)
    expect(lookupAfter(fresh, 1, SHARED, request(), "no-store")).toMatchObject({
      _tag: "MustRevalidate",
      conditional: {},
      serveIfErrorUntil: 0
    })
  })

  it("reload goes to the network unconditionally and stores by the rules", () => {
    expect(HttpCachePolicy.modeRules("reload")).toEqual({ read: false, network: true })
    expect(lookupAfter(fresh, 1, SHARED, request(), "reload")).toMatchObject({
      _tag: "MustRevalidate",
      conditional: {}
    })
    expect(storable(request(), response({ "cache-control": "max-age=60" }), SHARED, "reload")).toBe(true)
  })

  it("no-cache revalidates even a fresh response, conditionally", () => {
    expect(lookupAfter(fresh, 1, SHARED, request(), "no-cache")).toMatchObject({
      _tag: "MustRevalidate",
      conditional: { "if-none-match": "\"v1\"" }
    })
  })

  it("force-cache serves any matching response regardless of staleness", () => {
    expect(lookupAfter(stale, 10_000, SHARED, request(), "force-cache")).toMatchObject({ _tag: "Fresh", age: 10_000 })
    expect(HttpCachePolicy.modeRules("force-cache").network).toBe(true)
  })

  it("only-if-cached serves any matching response and never uses the network", () => {
    expect(lookupAfter(stale, 10_000, SHARED, request(), "only-if-cached")._tag).toBe("Fresh")
    expect(HttpCachePolicy.forbidsNetwork(request(), "only-if-cached")).toBe(true)
  })

  it("ignore-rules stores any 200 to GET/HEAD and serves it regardless of staleness", () => {
    const noStore = response({ "cache-control": "no-store, private" })
    expect(storable(request(), noStore, SHARED, "ignore-rules")).toBe(true)
    expect(storable(request(), response({}, 404), SHARED, "ignore-rules")).toBe(false)
    expect(storable(request({}, "POST"), noStore, SHARED, "ignore-rules")).toBe(false)
    expect(lookupAfter(storeAt(request(), noStore, SHARED), 99, SHARED, request(), "ignore-rules")._tag).toBe("Fresh")
  })

  it("no mode serves another Vary variant", () => {
    const varied = cached(
      { "cache-control": "max-age=60", vary: "accept-language" },
      SHARED,
      request({ "accept-language": "en" })
    )
    for (const mode of ["force-cache", "only-if-cached", "ignore-rules", "default"] as const) {
      expect(lookupAfter(varied, 1, SHARED, request({ "accept-language": "fr" }), mode)._tag).toBe("VaryMismatch")
    }
  })
})

describe("RFC 9211 Cache-Status", () => {
  it("RFC 9211 §2 a hit with its remaining ttl", () => {
    expect(HttpCachePolicy.cacheStatus("cachekit", { hit: true, ttl: 42.9 })).toBe("cachekit; hit; ttl=42")
  })

  it("RFC 9211 §2.2 a forwarded miss with fwd-status and stored", () => {
    expect(HttpCachePolicy.cacheStatus("cachekit", { hit: false, fwd: "miss", fwdStatus: 200, stored: true }))
      .toBe("cachekit; fwd=miss; fwd-status=200; stored")
  })

  it("RFC 9211 §2.4 a stale hit has a negative ttl", () => {
    expect(HttpCachePolicy.cacheStatus("cachekit", { hit: true, ttl: -10.5 })).toBe("cachekit; hit; ttl=-10")
  })

  it("RFC 9211 §2.7-2.8 collapsed, key and detail parameters; strings are sf-strings", () => {
    expect(HttpCachePolicy.cacheStatus("cachekit", {
      hit: false,
      fwd: "vary-miss",
      collapsed: true,
      key: "GET http://a/\"x\"",
      detail: "coalesced"
    })).toBe("cachekit; fwd=vary-miss; collapsed; key=\"GET http://a/\\\"x\\\"\"; detail=coalesced")
    expect(HttpCachePolicy.cacheStatus("cachekit", { hit: true, detail: "two words" })).toBe(
      "cachekit; hit; detail=\"two words\""
    )
  })

  it("RFC 9211 §2 a cache name that is not a token is sent as an sf-string", () => {
    expect(HttpCachePolicy.cacheStatus("my cache é", { hit: true })).toBe("\"my cache ?\"; hit")
    expect(HttpCachePolicy.cacheStatus("proxy.example:8080", { hit: true })).toBe("proxy.example:8080; hit")
  })
})

describe("HEAD requests and empty bodies", () => {
  it("RFC 9110 §15.3.5 a 204 is stored and served while fresh", () => {
    const stored = cached({ "cache-control": "max-age=60", "content-length": "0" }, SHARED, request(), 204)
    expect(stored.status).toBe(204)
    expect(lookupAfter(stored, 1, SHARED)._tag).toBe("Fresh")
  })

  it("RFC 9110 §9.3.2 a HEAD response is stored and answers later HEAD requests", () => {
    const head = request({}, "HEAD")
    const res = response({ "cache-control": "max-age=60", "content-length": "1234" })
    expect(storable(head, res, SHARED)).toBe(true)
    expect(lookupAfter(storeAt(head, res, SHARED), 1, SHARED, head)).toMatchObject({
      _tag: "Fresh",
      headers: { "content-length": "1234" }
    })
  })
})

describe("Hop-by-hop fields (RFC 9110 §7.6.1)", () => {
  it("RFC 9110 §7.6.1 stripHopByHop removes Connection, its named fields, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding and Upgrade", () => {
    const headers = {
      connection: "X-Custom, keep-alive",
      "x-custom": "1",
      "keep-alive": "timeout=5",
      "proxy-connection": "keep-alive",
      "proxy-authenticate": "Basic",
      "proxy-authorization": "Basic x",
      te: "trailers",
      trailer: "x-t",
      "transfer-encoding": "chunked",
      upgrade: "h2c",
      "content-type": "text/plain",
      etag: "\"1\""
    }
    expect(HttpCachePolicy.stripHopByHop(headers)).toEqual({ "content-type": "text/plain", etag: "\"1\"" })
  })

  it("RFC 9110 §7.6.1 a record without hop-by-hop fields is returned unchanged", () => {
    const headers = { "content-type": "text/plain" }
    expect(HttpCachePolicy.stripHopByHop(headers)).toBe(headers)
  })
})

describe("StoredPolicy wire format", () => {
  it("round-trips through JSON with the Schema", () => {
    const stored = cached({ "cache-control": "max-age=60", vary: "accept" }, SHARED, request({ accept: "text/html" }))
    expect(HttpCachePolicy.decodeStoredPolicy(HttpCachePolicy.encodeStoredPolicy(stored))).toEqual(stored)
  })

  it("decodes another version or garbage as undefined (treated as a miss)", () => {
    const stored = cached({ "cache-control": "max-age=60" })
    const future = JSON.stringify({ ...stored, version: 2 })
    expect(HttpCachePolicy.decodeStoredPolicy(future)).toBeUndefined()
    expect(HttpCachePolicy.decodeStoredPolicy("{not json")).toBeUndefined()
    expect(HttpCachePolicy.decodeStoredPolicy(JSON.stringify({ ...stored, status: "200" }))).toBeUndefined()
  })

  it("a decoded policy gives the same lookup as the original", () => {
    const stored = cached({ "cache-control": "max-age=60, stale-while-revalidate=30", age: "3" })
    const decoded = HttpCachePolicy.decodeStoredPolicy(HttpCachePolicy.encodeStoredPolicy(stored))!
    for (const seconds of [0, 50, 70, 100]) {
      expect(lookupAfter(decoded, seconds, SHARED)).toEqual(lookupAfter(stored, seconds, SHARED))
    }
  })
})

describe("Driven by Effect's Clock (the policy takes `now`; TestClock moves it)", () => {
  it.effect("§4.2 a response stored at the clock's time goes stale when TestClock passes max-age", () =>
    Effect.gen(function*() {
      const requestTime = yield* Clock.currentTimeMillis
      yield* TestClock.adjust("200 millis")
      const responseTime = yield* Clock.currentTimeMillis
      const stored = HttpCachePolicy.store(
        request(),
        { status: 200, headers: { "cache-control": "max-age=60, stale-while-revalidate=10" } },
        { requestTime, responseTime },
        SHARED
      )
      yield* TestClock.adjust("59 seconds")
      expect(HttpCachePolicy.lookup(stored, request(), yield* Clock.currentTimeMillis, SHARED)._tag).toBe("Fresh")
      yield* TestClock.adjust("1 second")
      // 60.2 s: the 200 ms response delay counts towards the age (§4.2.3).
      expect(HttpCachePolicy.lookup(stored, request(), yield* Clock.currentTimeMillis, SHARED)).toMatchObject({
        _tag: "Stale",
        serveWhileRevalidate: true
      })
      yield* TestClock.adjust("10 seconds")
      expect(HttpCachePolicy.lookup(stored, request(), yield* Clock.currentTimeMillis, SHARED)).toMatchObject({
        _tag: "Stale",
        serveWhileRevalidate: false
      })
    }))
})

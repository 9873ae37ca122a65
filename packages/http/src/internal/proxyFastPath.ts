/**
 * The proxy's synchronous hit path: a GET whose fresh response sits in an in-process backend is
 * answered inside Node's "request" event with one `end(bytes)`, without an Effect fiber, an
 * `HttpClientRequest`, a response stream or an `HttpServerResponse`. Everything else (misses,
 * stale entries, conditionals, Range, HEAD, request bodies, Set-Cookie, a backend without
 * `unsafeGetSync`) goes on to the Effect server as before. The cache decision itself is the
 * client's own (`syncLookupOf` in client.ts runs the same key, Vary and `Policy.lookup`).
 *
 * @internal
 */
import type { HttpClient } from "@effect/platform"
import { Effect } from "effect"
import type * as Http from "node:http"
import { type SyncHit, type SyncLookup, syncLookupOf } from "./client.js"
import type { Resolved, Tracker } from "./proxy.js"
import { forwardHeaders, hasRequestBody, NO_BODY_STATUS, targetPath, track } from "./proxy.js"
import { appendVia, stripHopByHop } from "./proxyHeaders.js"

/**
 * Answers `req` from the cache if it is a fresh hit; returns false (nothing written) otherwise.
 * `now` is the clock reading the Effect path would use.
 */
export const tryHit = (
  lookup: SyncLookup,
  resolved: Resolved,
  upstreamBase: string,
  tracker: Tracker,
  now: number,
  req: Http.IncomingMessage,
  res: Http.ServerResponse
): boolean => {
  if (req.method !== "GET" || hasRequestBody(req.headers)) return false
  const headers = forwardHeaders(req, resolved)
  let url: string
  try {
    // The client keys requests by `new URL(target).href` (HttpClientRequest.make + UrlParams.makeUrl).
    url = new URL(upstreamBase + targetPath(req.url ?? "/")).href
  } catch {
    return false
  }
  let hit: SyncHit | undefined
  try {
    hit = lookup("GET", url, headers, now)
  } catch {
    // A backend or key function that throws is the Effect path's business (it logs and treats it as a miss).
    return false
  }
  if (hit === undefined || NO_BODY_STATUS(hit.status) || hit.headers["set-cookie"] !== undefined) return false
  // The same rewriting as the Effect path's `toServerResponse`.
  const out = stripHopByHop(hit.headers, resolved.stripResponseFields)
  out["via"] = appendVia(hit.headers["via"], "1.1", resolved.via)
  out["content-length"] = String(hit.body.byteLength)
  track(tracker, res)
  res.writeHead(hit.status, out)
  if (hit.body.byteLength <= SLICE) res.end(hit.body)
  else writeSlices(res, hit.body, 0)
  return true
}

/**
 * Bodies up to this size go out in one `end` (head and body in one writev, the stored bytes
 * themselves: no copy); larger ones in views of this size with back-pressure (see `writeSlices`).
 * Each view costs a JS round (write, uncork on the next tick, "drain"): 64 KiB views made a 1 MiB
 * hit cost more proxy CPU than one `end` (bench/README.md, "Proxy").
 */
const SLICE = 1024 * 1024

/** Writes `body` from `offset` in `SLICE`-sized views, waiting for "drain" when the socket is full. */
const writeSlices = (res: Http.ServerResponse, body: Uint8Array, offset: number): void => {
  let at = offset
  while (at < body.byteLength) {
    const end = Math.min(at + SLICE, body.byteLength)
    const view = body.subarray(at, end)
    at = end
    if (at === body.byteLength) {
      res.end(view)
      return
    }
    if (!res.write(view)) {
      if (res.destroyed) return
      const next = at
      res.once("drain", () => writeSlices(res, body, next))
      return
    }
  }
}

/**
 * Puts the hit path in front of every "request" listener of `server` (the Effect server's
 * included) when `client` is a cache over an in-process backend and tracing is off. The clock is
 * the one in context, as for the Effect path (TestClock in tests).
 */
export const install = (
  server: Http.Server,
  tracker: Tracker,
  client: HttpClient.HttpClient,
  resolved: Resolved
): Effect.Effect<void> =>
  Effect.clockWith((clock) =>
    Effect.sync(() => {
      const lookup = syncLookupOf(client)
      if (lookup === undefined || resolved.tracing) return
      const upstreamBase = resolved.origin + resolved.basePath
      const emit = server.emit
      server.emit = function(this: Http.Server, event: string | symbol, ...args: Array<unknown>): boolean {
        if (
          event === "request" &&
          tryHit(
            lookup,
            resolved,
            upstreamBase,
            tracker,
            clock.unsafeCurrentTimeMillis(),
            args[0] as Http.IncomingMessage,
            args[1] as Http.ServerResponse
          )
        ) return true
        return Reflect.apply(emit, this, [event, ...args]) as boolean
      } as Http.Server["emit"]
    })
  )

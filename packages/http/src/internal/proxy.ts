/**
 * Machinery of the reverse proxy: the forwarding app, request tracking and the drain on shutdown.
 *
 * @internal
 */
import type { CacheError } from "@cachekit/core"
import type { HttpApp, HttpClientResponse } from "@effect/platform"
import {
  HttpBody,
  HttpClient,
  HttpClientError,
  HttpClientRequest,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Cause, Config, ConfigError, Data, Duration, Effect, Either, Stream } from "effect"
import type * as Http from "node:http"
import { type Lend, lentBody } from "./clientResponse.js"
import { appendForwardedFor, appendVia, REQUEST_DROP, stripHopByHop } from "./proxyHeaders.js"
import { parseDurationMillis } from "./units.js"

/** Options resolved once when the layer is built (never per request). */
export interface Resolved {
  readonly upstream: URL
  /** `http://host:port` of the upstream. */
  readonly origin: string
  /** Path prefix of the upstream without trailing slash ("" for none). */
  readonly basePath: string
  readonly upstreamTimeoutMillis: number
  readonly shutdownGraceMillis: number
  readonly via: string
  readonly tracing: boolean
  /** Lower-cased response fields never passed downstream. */
  readonly stripResponseFields: ReadonlySet<string> | undefined
}

export const resolve = (options: {
  readonly upstream: URL
  readonly upstreamTimeout?: Duration.DurationInput | undefined
  readonly shutdownGrace?: Duration.DurationInput | undefined
  readonly via?: string | undefined
  readonly tracing?: boolean | undefined
  readonly stripResponseFields?: ReadonlyArray<string> | undefined
}): Resolved => ({
  upstream: options.upstream,
  origin: options.upstream.origin,
  basePath: options.upstream.pathname.replace(/\/+$/, ""),
  upstreamTimeoutMillis: Duration.toMillis(Duration.decode(options.upstreamTimeout ?? 30_000)),
  shutdownGraceMillis: Duration.toMillis(Duration.decode(options.shutdownGrace ?? 10_000)),
  via: options.via ?? "cachekit",
  tracing: options.tracing ?? false,
  stripResponseFields: options.stripResponseFields === undefined || options.stripResponseFields.length === 0
    ? undefined
    : new Set(options.stripResponseFields.map((name) => name.trim().toLowerCase()))
})

/** A port setting (0 = any free port), with a default. */
export const portConfig = (name: string, defaultPort: number): Config.Config<number> =>
  Config.integer(name).pipe(
    Config.validate({
      message: `${name} must be a port number from 0 to 65535`,
      validation: (n) => n >= 0 && n <= 65535
    }),
    Config.withDefault(defaultPort)
  )

/** A duration setting in milliseconds (no default: wrap in `Config.withDefault` or `Config.option`). */
export const millisConfig = (name: string): Config.Config<number> =>
  Config.string(name).pipe(
    Config.mapOrFail((text) => {
      const millis = parseDurationMillis(text)
      return millis === undefined
        ? Either.left(ConfigError.InvalidData([], `${name}: "${text}" is not a duration (examples: 500ms, 5s, 2m)`))
        : Either.right(millis)
    })
  )

/** A duration setting in milliseconds, with a default. */
export const durationConfig = (name: string, defaultMillis: number): Config.Config<number> =>
  millisConfig(name).pipe(Config.withDefault(defaultMillis))

// ---------------------------------------------------------------------------------------------
// In-flight tracking and graceful drain
// ---------------------------------------------------------------------------------------------

export interface Tracker {
  inFlight: number
  draining: boolean
  readonly responses: Set<Http.ServerResponse>
  onResponseClosed: (() => void) | undefined
}

/** Counts requests from arrival until their response is finished or their connection is gone. */
export const trackRequests = (server: Http.Server): Tracker => {
  const tracker: Tracker = { inFlight: 0, draining: false, responses: new Set(), onResponseClosed: undefined }
  server.on("request", (_req: Http.IncomingMessage, res: Http.ServerResponse) => track(tracker, res))
  return tracker
}

/** Counts one response until it closes (the "request" listener of `trackRequests`, also called by the fast path). */
export const track = (tracker: Tracker, res: Http.ServerResponse): void => {
  tracker.inFlight++
  tracker.responses.add(res)
  // While draining, every answer closes its connection so clients reconnect elsewhere.
  if (tracker.draining) res.setHeader("connection", "close")
  res.once("close", () => {
    tracker.inFlight--
    tracker.responses.delete(res)
    tracker.onResponseClosed?.()
  })
}

/**
 * Graceful shutdown: stop accepting, close idle keep-alive connections, let in-flight requests
 * finish (their responses carry `Connection: close`), and after `graceMillis` cut what is left.
 */
export const drain = (server: Http.Server, tracker: Tracker, graceMillis: number): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    tracker.draining = true
    for (const res of tracker.responses) {
      if (!res.headersSent) res.setHeader("connection", "close")
    }
    let finished = false
    const finish = () => {
      if (finished) return
      finished = true
      clearTimeout(timer)
      tracker.onResponseClosed = undefined
      server.closeAllConnections()
      resume(Effect.void)
    }
    const timer = setTimeout(finish, graceMillis)
    tracker.onResponseClosed = () => server.closeIdleConnections()
    if (!server.listening) return finish()
    server.close(finish)
    server.closeIdleConnections()
  })

// ---------------------------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------------------------

/** The upstream did not send a response head in time. */
export class UpstreamTimeout extends Data.TaggedError("UpstreamTimeout")<{ readonly millis: number }> {}

/**
 * Times out each request `client` sends (until its response head arrives) with a `RequestError`
 * whose cause is `UpstreamTimeout`. Put under a cache, only real upstream trips pay for the timer,
 * and a timed-out revalidation is an upstream error the cache may answer with stale-if-error.
 */
export const withUpstreamTimeout = (client: HttpClient.HttpClient, millis: number): HttpClient.HttpClient =>
  HttpClient.transform(client, (effect, request) =>
    Effect.timeoutFail(Effect.interruptible(effect), {
      duration: millis,
      onTimeout: () =>
        new HttpClientError.RequestError({
          request,
          reason: "Transport",
          cause: new UpstreamTimeout({ millis }),
          description: `no response head within ${millis} ms`
        })
    }))

/** Path and query of the request target; absolute-form targets (`http://h/p?q`) keep only `/p?q`. */
export const targetPath = (url: string): string => {
  if (url.startsWith("/")) return url
  if (URL.canParse(url)) {
    const parsed = new URL(url)
    return parsed.pathname + parsed.search
  }
  return "/"
}

export const NO_BODY_STATUS = (status: number) => status === 204 || status === 304 || (status >= 100 && status < 200)

/** The request fields sent upstream: hop-by-hop ones out, `Via` and `X-Forwarded-*` added. */
export const forwardHeaders = (source: Http.IncomingMessage, resolved: Resolved): Record<string, string> => {
  const incoming = source.headers
  const headers = stripHopByHop(incoming, REQUEST_DROP)
  headers["via"] = appendVia(headers["via"], source.httpVersion, resolved.via)
  const forwardedFor = appendForwardedFor(headers["x-forwarded-for"], source.socket.remoteAddress)
  if (forwardedFor !== undefined) headers["x-forwarded-for"] = forwardedFor
  headers["x-forwarded-proto"] = "http"
  if (incoming.host !== undefined) headers["x-forwarded-host"] = incoming.host
  return headers
}

/** Whether a request carries a body (chunked, or a Content-Length other than 0). */
export const hasRequestBody = (incoming: Http.IncomingHttpHeaders): boolean => {
  const contentLength = incoming["content-length"]
  return incoming["transfer-encoding"] !== undefined || (contentLength !== undefined && contentLength !== "0")
}

/** The app: every request is forwarded through `client`; failures of the upstream become 502 / 504. */
export const makeApp = (
  client: HttpClient.HttpClient,
  resolved: Resolved,
  /** false when `client` already times out its upstream requests (see `withUpstreamTimeout`). */
  timeoutInApp: boolean
): HttpApp.Default => {
  const timed = timeoutInApp
    ? <A, E>(effect: Effect.Effect<A, E>) =>
      Effect.timeoutFail(effect, {
        duration: resolved.upstreamTimeoutMillis,
        onTimeout: () => new UpstreamTimeout({ millis: resolved.upstreamTimeoutMillis })
      })
    : <A, E>(effect: Effect.Effect<A, E>) => effect
  // Spans cost allocations on every hit; they are opt-in.
  const upstreamClient = resolved.tracing ? client : HttpClient.withTracerDisabledWhen(client, () => true)
  const upstreamBase = resolved.origin + resolved.basePath
  return Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const source = NodeHttpServerRequest.toIncomingMessage(request)
    const incoming = source.headers
    const headers = forwardHeaders(source, resolved)
    const contentLength = incoming["content-length"]
    const hasBody = hasRequestBody(incoming)
    // The Node request is handed to the upstream client as is: it streams up with back-pressure.
    const body = hasBody
      ? HttpBody.raw(source, {
        contentType: incoming["content-type"],
        contentLength: contentLength === undefined ? undefined : Number(contentLength)
      })
      : HttpBody.empty
    const method = request.method
    const upstreamRequest = HttpClientRequest.make(method)(upstreamBase + targetPath(request.url)).pipe(
      HttpClientRequest.setHeaders(headers),
      HttpClientRequest.setBody(body)
    )
    return timed(upstreamClient.execute(upstreamRequest)).pipe(
      // Server apps run uninterruptibly; waiting on the upstream must yield to the timeout and to
      // a client that goes away (both abort the upstream request).
      Effect.interruptible,
      Effect.flatMap((response) => toServerResponse(request, response, method, resolved)),
      Effect.catchAll((error) => Effect.succeed(errorResponse(error, resolved)))
    )
  })
}

/**
 * Bodies up to this size (by their Content-Length) are read whole, then written with the head in
 * one `end`: a streamed write lets the client's next request on the connection wait for the
 * stream's teardown, which dominated small responses (measured in bench/proxy.bench.ts).
 */
const SMALL_BODY = 64 * 1024

const toServerResponse = (
  request: HttpServerRequest.HttpServerRequest,
  response: HttpClientResponse.HttpClientResponse,
  method: string,
  resolved: Resolved
): Effect.Effect<HttpServerResponse.HttpServerResponse, HttpClientError.ResponseError> => {
  const upstreamHeaders = response.headers
  const headers = stripHopByHop(upstreamHeaders, resolved.stripResponseFields)
  headers["via"] = appendVia(upstreamHeaders["via"], "1.1", resolved.via)
  const setCookie = headers["set-cookie"] !== undefined
  if (setCookie) delete headers["set-cookie"]
  const options = setCookie
    ? { status: response.status, headers, cookies: response.cookies }
    : { status: response.status, headers }
  if (method === "HEAD" || NO_BODY_STATUS(response.status)) {
    return Effect.succeed(HttpServerResponse.empty(options))
  }
  const lend = setCookie ? undefined : lentBody(response)
  if (lend !== undefined) {
    return serveLent(NodeHttpServerRequest.toServerResponse(request), response.status, headers, lend)
  }
  // An empty content type keeps the platform from inventing `application/octet-stream`.
  const contentType = headers["content-type"] ?? ""
  const length = headers["content-length"] === undefined ? Number.NaN : Number(headers["content-length"])
  if (length <= SMALL_BODY) {
    return Effect.map(response.arrayBuffer, (bytes) =>
      HttpServerResponse.setBody(
        HttpServerResponse.empty(options),
        HttpBody.uint8Array(new Uint8Array(bytes), contentType)
      ))
  }
  const nodeResponse = NodeHttpServerRequest.toServerResponse(request)
  // An upstream body that breaks mid-way must not look complete downstream: cut the connection.
  const body = response.stream.pipe(
    Stream.tapErrorCause(() => Effect.sync(() => nodeResponse.destroy()))
  )
  return Effect.succeed(
    HttpServerResponse.setBody(HttpServerResponse.empty(options), HttpBody.stream(body, contentType, undefined))
  )
}

/** The connection closed (or failed) before a lent chunk was written to it. */
class SocketGone extends Data.TaggedError("SocketGone")<{ readonly cause: unknown }> {}

/**
 * Writes one lent chunk and completes only when the socket took it (the write callback: from then
 * on the chunk's buffer may be reused), or fails when the connection goes away first. One chunk
 * in flight at a time is the back-pressure.
 */
const writeLent = (res: Http.ServerResponse, chunk: Uint8Array): Effect.Effect<void, SocketGone> =>
  Effect.async<void, SocketGone>((resume) => {
    if (res.destroyed) return resume(Effect.fail(new SocketGone({ cause: "destroyed" })))
    let settled = false
    const settle = (error: unknown) => {
      if (settled) return
      settled = true
      res.off("close", onClose)
      resume(error === undefined || error === null ? Effect.void : Effect.fail(new SocketGone({ cause: error })))
    }
    const onClose = () => settle("closed")
    res.once("close", onClose)
    res.write(chunk, settle)
  })

/**
 * Serves a stored body through its backend's lending read (the disk): the head, then each chunk
 * straight to the socket, the next read starting once the socket took the previous chunk. The read
 * buffer is reused, so peak memory stays flat whatever the body size (an Effect stream of fresh
 * chunks leaves each one to the garbage collector). `StreamedEntry.lendTo` is taken when offered: it
 * runs no effect per chunk, whose garbage made the young generation grow back over long bodies
 * (bench/README.md, "Proxy"); `readInto` otherwise. A body that fails mid-way (the backend's
 * integrity check removed it) cuts the connection: the client never sees a clean end.
 * The response is ended here; the returned one is never written (the platform skips an ended one).
 */
const serveLent = (
  res: Http.ServerResponse,
  status: number,
  headers: Record<string, string>,
  lend: Lend
): Effect.Effect<HttpServerResponse.HttpServerResponse> => {
  let last: Uint8Array | undefined
  return Effect.suspend(() => {
    res.writeHead(status, headers)
    // The backend verifies a body after its last chunk: with a Content-Length, the last byte waits
    // for that verdict (a copy of one byte), or a client would take a corrupt body as complete.
    // Without one, the body is chunked and only `end` writes its terminator.
    const declared = headers["content-length"] === undefined ? Number.NaN : Number(headers["content-length"])
    let sent = 0
    /** What of `chunk` goes out now: all of it but the body's last byte, which is kept in `last`. */
    const toSend = (chunk: Uint8Array): Uint8Array => {
      sent += chunk.byteLength
      if (sent !== declared || chunk.byteLength === 0) return chunk
      // a copy: `slice` of a Buffer (what the disk lends) is a view of the reused buffer
      last = new Uint8Array(chunk.subarray(chunk.byteLength - 1))
      return chunk.subarray(0, chunk.byteLength - 1)
    }
    if (lend.lendTo === undefined) {
      return lend.readInto((chunk) => {
        const out = toSend(chunk)
        return out.byteLength === 0 && chunk.byteLength > 0 ? Effect.void : writeLent(res, out)
      })
    }
    return writeLentTo(res, lend.lendTo, toSend)
  }).pipe(
    Effect.matchCauseEffect({
      onSuccess: () => Effect.sync(() => void (last === undefined ? res.end() : res.end(last))),
      onFailure: (cause) =>
        Effect.zipRight(
          Effect.sync(() => {
            res.destroy()
            // marks the response ended, so the platform does not write a second head
            res.end()
          }),
          Cause.failureOption(cause).pipe(
            (failure) =>
              failure._tag === "Some" && failure.value instanceof SocketGone
                ? Effect.void
                : Effect.logWarning("cachekit proxy: a stored body failed while being sent; connection cut", cause)
          )
        )
    }),
    Effect.as(HttpServerResponse.empty())
  )
}

/**
 * `writeLent` for a `lendTo` read: each chunk goes to `res.write`, whose callback gives it back
 * (`done`), or the connection's close does with `SocketGone`. One close listener and one write
 * callback per response, nothing allocated per chunk but what the socket write itself needs.
 */
const writeLentTo = (
  res: Http.ServerResponse,
  lendTo: NonNullable<Lend["lendTo"]>,
  toSend: (chunk: Uint8Array) => Uint8Array
): Effect.Effect<void, SocketGone | CacheError.CacheError> => {
  /** The `done` of the chunk the socket holds, if any. */
  let pending: ((error: SocketGone | undefined) => void) | undefined
  const settle = (error: unknown) => {
    const done = pending
    if (done === undefined) return
    pending = undefined
    done(error === undefined || error === null ? undefined : new SocketGone({ cause: error }))
  }
  const onClose = () => settle("closed")
  res.once("close", onClose)
  return Effect.ensuring(
    lendTo<SocketGone>((chunk, done) => {
      const out = toSend(chunk)
      if (out.byteLength === 0 && chunk.byteLength > 0) return done(undefined)
      if (res.destroyed) return done(new SocketGone({ cause: "destroyed" }))
      pending = done
      res.write(out, settle)
    }),
    Effect.sync(() => res.off("close", onClose))
  )
}

const errorResponse = (
  error: HttpClientError.HttpClientError | UpstreamTimeout,
  resolved: Resolved
): HttpServerResponse.HttpServerResponse => {
  const upstream = resolved.origin + resolved.basePath
  let status: number
  let proxyStatus: string
  let text: string
  switch (error._tag) {
    case "UpstreamTimeout": {
      status = 504
      proxyStatus = "http_response_timeout"
      text = `upstream ${upstream} did not answer within ${error.millis} ms`
      break
    }
    case "RequestError": {
      if (error.cause instanceof UpstreamTimeout) {
        status = 504
        proxyStatus = "http_response_timeout"
        text = `upstream ${upstream} did not answer within ${error.cause.millis} ms`
        break
      }
      status = error.reason === "InvalidUrl" ? 400 : 502
      proxyStatus = error.reason === "InvalidUrl" ? "http_request_error" : "destination_unavailable"
      text = error.reason === "InvalidUrl"
        ? `request target cannot be forwarded to ${upstream}`
        : `upstream ${upstream} is unreachable (${describe(error.cause)})`
      break
    }
    case "ResponseError": {
      status = 502
      proxyStatus = "http_protocol_error"
      text = `upstream ${upstream} sent a broken response (${describe(error.cause)})`
      break
    }
  }
  return HttpServerResponse.text(`cachekit: ${text}\n`, {
    status,
    headers: {
      "cache-control": "no-store",
      via: `1.1 ${resolved.via}`,
      // RFC 9209: which hop failed and why, for machines.
      "proxy-status": `${resolved.via}; error=${proxyStatus}`
    }
  })
}

const describe = (cause: unknown): string => {
  if (cause instanceof Error) {
    const code = (cause as Error & { code?: unknown }).code
    const inner = (cause as Error & { cause?: unknown }).cause
    const message = cause.message !== "" ? cause.message : typeof code === "string" ? code : cause.name
    return inner instanceof Error && inner.message !== "" && inner.message !== message
      ? `${message}: ${inner.message}`
      : message
  }
  return cause === undefined ? "unknown cause" : String(cause)
}

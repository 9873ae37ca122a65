/**
 * An `HttpClientResponse` whose body is any `Stream<Uint8Array>` or bytes already in memory: a
 * stored body read from the backend, an upstream body tee'd into the backend, or nothing (a 504).
 *
 * Every body accessor (`text`, `json`, `arrayBuffer`...) reads through `stream`, so the tee that
 * stores a miss sees the body however the caller consumes it.
 *
 * @internal
 */
import type { CacheBackend } from "@cachekit/core"
import { Cookies, HttpClientError, HttpClientResponse, HttpIncomingMessage, UrlParams } from "@effect/platform"
import type { Headers, HttpClientRequest } from "@effect/platform"
import { Chunk, Effect, Inspectable, Option, Stream } from "effect"
import { concat } from "./bodyStore.js"

const decoder = new TextDecoder()

/** A body: whole bytes (an in-memory hit, no stream machinery needed) or a stream. */
export type Body = Uint8Array | Stream.Stream<Uint8Array, unknown>

/** A stored body that offers a lending read (`CacheBackend.StreamedEntry.readInto`, maybe `lendTo`). */
export type Lend = CacheBackend.StreamedEntry & {
  readonly readInto: NonNullable<CacheBackend.StreamedEntry["readInto"]>
}

/** Stored bodies with lending reads, by their stream (see `storedBody`). */
const lenders = new WeakMap<object, Lend>()

/** The body of a stored entry read as a stream; remembers its lending reads when the backend has them. */
export const storedBody = (stored: CacheBackend.StreamedEntry): Stream.Stream<Uint8Array, unknown> => {
  if (stored.readInto !== undefined) lenders.set(stored.body, stored as Lend)
  return stored.body
}

export class StreamResponse extends Inspectable.Class implements HttpClientResponse.HttpClientResponse {
  readonly [HttpIncomingMessage.TypeId]: HttpIncomingMessage.TypeId = HttpIncomingMessage.TypeId
  readonly [HttpClientResponse.TypeId]: HttpClientResponse.TypeId = HttpClientResponse.TypeId
  readonly stream: Stream.Stream<Uint8Array, HttpClientError.ResponseError>
  /** The whole body when it is already in memory (a hit from an in-process backend). */
  readonly whole: Uint8Array | undefined
  /**
   * A stored body's lending reads, when its backend offers them (the disk): the same bytes as
   * `stream`, each chunk lent until the consumer is done with it. Consume one of them, once.
   */
  readonly lend: Lend | undefined

  constructor(
    readonly request: HttpClientRequest.HttpClientRequest,
    readonly status: number,
    readonly headers: Headers.Headers,
    body: Body
  ) {
    super()
    if (body instanceof Uint8Array) {
      this.whole = body
      this.lend = undefined
      this.stream = body.byteLength === 0 ? Stream.empty : Stream.succeed(body)
      this.bytesBody = Effect.succeed(body)
      return
    }
    this.whole = undefined
    this.lend = lenders.get(body)
    this.stream = Stream.mapError(
      body,
      (cause) =>
        cause instanceof HttpClientError.ResponseError ? cause : new HttpClientError.ResponseError({
          request,
          response: this,
          reason: "Decode",
          cause,
          description: "reading the cached body failed"
        })
    )
  }

  get remoteAddress(): Option.Option<string> {
    return Option.none()
  }

  private cachedCookies: Cookies.Cookies | undefined
  get cookies(): Cookies.Cookies {
    if (this.cachedCookies === undefined) {
      const setCookie = this.headers["set-cookie"]
      this.cachedCookies = setCookie === undefined ? Cookies.empty : Cookies.fromSetCookie(setCookie)
    }
    return this.cachedCookies
  }

  private bytesBody: Effect.Effect<Uint8Array, HttpClientError.ResponseError> | undefined
  /** The whole body, read once (the stream of a miss may only be consumed once). */
  get bytes(): Effect.Effect<Uint8Array, HttpClientError.ResponseError> {
    return this.bytesBody ??= Stream.runCollect(this.stream).pipe(
      Effect.map((chunks) => {
        const arrays = Chunk.toReadonlyArray(chunks)
        let size = 0
        for (const a of arrays) size += a.byteLength
        return concat(arrays, size)
      }),
      Effect.cached,
      Effect.runSync
    )
  }

  get arrayBuffer(): Effect.Effect<ArrayBuffer, HttpClientError.ResponseError> {
    return Effect.map(
      this.bytes,
      (bytes) => bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer
    )
  }

  get text(): Effect.Effect<string, HttpClientError.ResponseError> {
    return Effect.map(this.bytes, (bytes) => decoder.decode(bytes))
  }

  get json(): Effect.Effect<unknown, HttpClientError.ResponseError> {
    return Effect.flatMap(this.text, (text) =>
      Effect.try({
        try: () => text === "" ? null : JSON.parse(text) as unknown,
        catch: (cause) => this.decodeError(cause)
      }))
  }

  get urlParamsBody(): Effect.Effect<UrlParams.UrlParams, HttpClientError.ResponseError> {
    return Effect.flatMap(this.text, (text) =>
      Effect.try({
        try: () => UrlParams.fromInput(new URLSearchParams(text)),
        catch: (cause) => this.decodeError(cause)
      }))
  }

  get formData(): Effect.Effect<FormData, HttpClientError.ResponseError> {
    return Effect.flatMap(this.bytes, (bytes) =>
      Effect.tryPromise({
        try: () => new Response(bytes, { headers: { "content-type": this.headers["content-type"] ?? "" } }).formData(),
        catch: (cause) => this.decodeError(cause)
      }))
  }

  private decodeError(cause: unknown): HttpClientError.ResponseError {
    return new HttpClientError.ResponseError({ request: this.request, response: this, reason: "Decode", cause })
  }

  toJSON(): unknown {
    return HttpIncomingMessage.inspect(this, {
      _id: "@effect/platform/HttpClientResponse",
      request: this.request.toJSON(),
      status: this.status
    })
  }
}

/** The in-memory body of a response built by the cache, if it has one (see `HttpClientCache.wholeBody`). */
export const wholeBody = (response: HttpClientResponse.HttpClientResponse): Uint8Array | undefined =>
  response instanceof StreamResponse ? response.whole : undefined

/** The lending read of a stored body served by the cache, if its backend offers one. */
export const lentBody = (response: HttpClientResponse.HttpClientResponse): Lend | undefined =>
  response instanceof StreamResponse ? response.lend : undefined

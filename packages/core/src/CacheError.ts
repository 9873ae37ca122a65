/**
 * The typed failures of cache backends and of the cache itself. Every operation fails with one of
 * these (never `unknown`, never a thrown exception); handle them with `Effect.catchTag`.
 *
 * @since 0.1.0
 */
import { Data } from "effect"

/** The backend could not be reached or refused the operation (connection refused, reset, closed). */
export class BackendUnavailable extends Data.TaggedError("BackendUnavailable")<{
  readonly backend: string
  readonly operation: string
  readonly cause: unknown
  readonly message: string
}> {}

/** The backend did not answer within the operation timeout. */
export class BackendTimeout extends Data.TaggedError("BackendTimeout")<{
  readonly backend: string
  readonly operation: string
  readonly timeoutMillis: number
  readonly message: string
}> {}

/** Stored bytes could not be decoded (corrupted, or written by an incompatible format or schema). */
export class DecodeError extends Data.TaggedError("DecodeError")<{
  readonly key: string
  readonly cause: unknown
  readonly message: string
}> {}

/** A value could not be encoded by its codec (the Schema rejected it). */
export class EncodeError extends Data.TaggedError("EncodeError")<{
  readonly key: string
  readonly cause: unknown
  readonly message: string
}> {}

/** An entry is larger than the backend (or tier) accepts. */
export class EntryTooLarge extends Data.TaggedError("EntryTooLarge")<{
  readonly key: string
  readonly size: number
  readonly maxSize: number
  readonly message: string
}> {}

/** A key is empty, too long, or otherwise not storable. */
export class InvalidKey extends Data.TaggedError("InvalidKey")<{
  readonly key: string
  readonly reason: string
  readonly message: string
}> {}

/** A TTL (or grace, timeout, ...) that is negative, NaN or otherwise not usable. */
export class InvalidTtl extends Data.TaggedError("InvalidTtl")<{
  readonly field: string
  readonly value: unknown
  readonly reason: string
  readonly message: string
}> {}

/** Every failure a backend operation can have. */
export type CacheError =
  | BackendUnavailable
  | BackendTimeout
  | DecodeError
  | EncodeError
  | EntryTooLarge
  | InvalidKey
  | InvalidTtl

/** Builds a `BackendUnavailable` whose message says what failed and what to do. */
export const backendUnavailable = (
  backend: string,
  operation: string,
  cause: unknown,
  hint?: string
): BackendUnavailable =>
  new BackendUnavailable({
    backend,
    operation,
    cause,
    message: `${backend}: ${operation} failed: ${describeCause(cause)}${hint === undefined ? "" : `; ${hint}`}`
  })

/** Builds a `BackendTimeout` with a readable message. */
export const backendTimeout = (backend: string, operation: string, timeoutMillis: number): BackendTimeout =>
  new BackendTimeout({
    backend,
    operation,
    timeoutMillis,
    message: `${backend}: ${operation} did not answer within ${timeoutMillis} ms`
  })

/** A short human text for any thrown value. */
export const describeCause = (cause: unknown): string => {
  if (cause instanceof Error) return cause.message
  if (typeof cause === "string") return cause
  try {
    return JSON.stringify(cause) ?? String(cause)
  } catch {
    return String(cause)
  }
}

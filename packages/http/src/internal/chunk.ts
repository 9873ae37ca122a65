/**
 * Stored layout of `HttpServerCache` responses.
 *
 * Every cached response has a manifest entry under its key: `entry.meta["http.server"]` is the
 * JSON `Manifest` (status, stored headers, validators, times, layout). Small bodies are the
 * manifest entry's own value (`inline`: a hit is one backend read). Bodies over the chunk
 * threshold are cut into fixed-size chunks, each its own entry under
 * `key#<generation>#chunk-<n>`; a range reads only the chunks it covers, and chunks can be missing
 * (never fetched, or evicted) and are then filled from the handler on demand. The generation
 * changes whenever a new representation is stored, so chunks of an older one are never mixed in.
 *
 * @internal
 */
import type { CacheEntry } from "@cachekit/core"
import type { Scope } from "effect"
import { Chunk, Effect, Option, Stream } from "effect"

export const META_MANIFEST = "http.server"

export interface Manifest {
  readonly v: 1
  readonly status: number
  /** Stored response headers (the allowlist), lower-case names, without Content-Length. */
  readonly headers: Readonly<Record<string, string>>
  /** Bytes of the identity body (for chunked bodies: the whole representation, cached or not). */
  readonly size: number
  /** The validator served with hits (the handler's, or a generated strong digest). */
  readonly etag?: string | undefined
  readonly layout: "inline" | "chunked"
  /** Inline only: the stored value is this content coding of the body. */
  readonly encoding?: "gzip" | "br" | undefined
  readonly chunkSize?: number | undefined
  readonly generation?: string | undefined
  readonly storedAt: number
  readonly expiresAt: number
  /** Stale responses may be served while revalidating in the background until then. */
  readonly staleUntil: number
  /** Stale responses may be served when the handler fails until then. */
  readonly errorUntil: number
}

const manifests = new WeakMap<CacheEntry.CacheEntry, Manifest>()

/** The entry's manifest (memoised per entry object: in-process backends return the same object). */
export const manifestOf = (entry: CacheEntry.CacheEntry): Manifest | undefined => {
  const cached = manifests.get(entry)
  if (cached !== undefined) return cached
  const json = entry.meta?.[META_MANIFEST]
  if (json === undefined) return undefined
  let parsed: unknown
  try {
    parsed = JSON.parse(json)
  } catch {
    return undefined
  }
  if (!isManifest(parsed)) return undefined
  manifests.set(entry, parsed)
  return parsed
}

const isManifest = (u: unknown): u is Manifest => {
  if (typeof u !== "object" || u === null) return false
  const m = u as Record<string, unknown>
  return m["v"] === 1 && typeof m["status"] === "number" && typeof m["size"] === "number" &&
    typeof m["headers"] === "object" && m["headers"] !== null &&
    (m["layout"] === "inline" || (m["layout"] === "chunked" && typeof m["chunkSize"] === "number" &&
      (m["chunkSize"] as number) > 0 && typeof m["generation"] === "string")) &&
    typeof m["storedAt"] === "number" && typeof m["expiresAt"] === "number" &&
    typeof m["staleUntil"] === "number" && typeof m["errorUntil"] === "number"
}

export const encodeManifest = (manifest: Manifest): Record<string, string> => ({
  [META_MANIFEST]: JSON.stringify(manifest)
})

export const chunkKey = (key: string, generation: string, index: number): string =>
  `${key}#${generation}#chunk-${index}`

export const chunkCount = (size: number, chunkSize: number): number => Math.ceil(size / chunkSize)

export const newGeneration = (): string => Math.random().toString(36).slice(2, 10)

/**
 * Reads exact byte counts from a stream: `skip(n)` drops bytes, `take(n)` returns the next `n`
 * (fewer at the end). Holds at most one upstream piece beyond what `take` asked for.
 */
export interface ByteReader<E> {
  readonly position: () => number
  readonly skip: (n: number) => Effect.Effect<void, E>
  readonly take: (n: number) => Effect.Effect<Uint8Array, E>
}

export const byteReader = <E, R>(
  stream: Stream.Stream<Uint8Array, E, R>
): Effect.Effect<ByteReader<E>, never, Scope.Scope | R> =>
  Effect.map(Stream.toPull(stream), (pull) => {
    let pending: Array<Uint8Array> = []
    let ended = false
    let position = 0
    const next: Effect.Effect<Uint8Array | undefined, E, R> = Effect.suspend(() => {
      if (pending.length > 0) return Effect.succeed(pending.shift())
      if (ended) return Effect.succeed(undefined)
      return pull.pipe(
        Effect.map((chunk) => {
          pending = Chunk.toArray(chunk).filter((piece) => piece.byteLength > 0)
          return pending.shift()
        }),
        Effect.catchAll((error) => {
          if (Option.isNone(error)) {
            ended = true
            return Effect.succeed(undefined)
          }
          return Effect.fail(error.value)
        }),
        Effect.flatMap((piece) => piece === undefined && !ended ? next : Effect.succeed(piece))
      )
    })
    const take = (n: number, keep: boolean): Effect.Effect<Uint8Array, E, R> =>
      Effect.gen(function*() {
        const out = keep ? new Uint8Array(n) : undefined
        let filled = 0
        while (filled < n) {
          const piece = yield* next
          if (piece === undefined) break
          const room = n - filled
          if (piece.byteLength > room) {
            out?.set(piece.subarray(0, room), filled)
            pending.unshift(piece.subarray(room))
            filled = n
          } else {
            out?.set(piece, filled)
            filled += piece.byteLength
          }
        }
        position += filled
        return out === undefined ? EMPTY : filled === n ? out : out.subarray(0, filled)
      })
    return {
      position: () => position,
      skip: (n) => Effect.asVoid(take(n, false)),
      take: (n) => take(n, true)
    } as ByteReader<E>
  })

const EMPTY = new Uint8Array(0)

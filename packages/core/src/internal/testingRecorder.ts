/**
 * Machinery of `@cachekit/core/testing`: a `CacheBackend` decorator that records every operation
 * and remembers the last entry written per key, so a test can list entries without touching the
 * wrapped backend's frequency counters.
 *
 * @internal
 */
import type { Clock } from "effect"
import { Effect, Option } from "effect"
import type { CacheBackend, ScanCapability, TagCapability } from "../CacheBackend.js"
import { syncMissIsFinal } from "../CacheBackend.js"
import type { CacheEntry } from "../CacheEntry.js"

/** @internal */
export type Outcome = "hit" | "stale" | "miss"

/** @internal */
export type Operation =
  | { readonly op: "get"; readonly key: string; readonly outcome: Outcome; readonly at: number }
  | { readonly op: "set"; readonly key: string; readonly tags: ReadonlyArray<string>; readonly at: number }
  | { readonly op: "delete"; readonly key: string; readonly removed: boolean; readonly at: number }
  | { readonly op: "clear"; readonly at: number }
  | { readonly op: "deleteByTags"; readonly tags: ReadonlyArray<string>; readonly removed: number; readonly at: number }
  | { readonly op: "deletePattern"; readonly pattern: string; readonly removed: number; readonly at: number }

/** State shared by the recording and the silent (seeding) views of one backend. @internal */
export interface RecorderState {
  readonly log: Array<Operation>
  /** The last entry written through the recorder per key (pruned against the backend when listed). */
  readonly written: Map<string, CacheEntry>
  readonly maxOperations: number
  dropped: number
}

/** @internal */
export const makeState = (maxOperations: number): RecorderState => ({
  log: [],
  written: new Map(),
  maxOperations,
  dropped: 0
})

/** @internal */
export const outcomeOf = (entry: CacheEntry | undefined, now: number): Outcome =>
  entry === undefined ? "miss" : now < entry.expiresAt ? "hit" : "stale"

/**
 * Wraps `inner`; when `record` is false the wrapper only keeps `written` up to date (seeding).
 * The log is bounded: past `maxOperations` the oldest operations are dropped and counted.
 *
 * @internal
 */
export const wrap = (
  inner: CacheBackend,
  state: RecorderState,
  clock: Clock.Clock,
  record: boolean
): CacheBackend => {
  const push = (operation: Operation) => {
    if (!record) return
    if (state.log.length >= state.maxOperations) {
      state.log.shift()
      state.dropped++
    }
    state.log.push(operation)
  }
  const now = () => clock.unsafeCurrentTimeMillis()

  const tags: TagCapability | undefined = inner.tags === undefined ? undefined : {
    deleteByTags: (tagList) =>
      Effect.tap(inner.tags!.deleteByTags(tagList), (removed) =>
        Effect.sync(() => {
          for (const [key, entry] of state.written) {
            if (entry.tags.some((tag) => tagList.includes(tag))) state.written.delete(key)
          }
          push({ op: "deleteByTags", tags: tagList, removed, at: now() })
        })),
    keysForTag: inner.tags.keysForTag,
    listTags: inner.tags.listTags
  }

  const scan: ScanCapability | undefined = inner.scan === undefined ? undefined : {
    keys: inner.scan.keys,
    deletePattern: (pattern) =>
      Effect.tap(
        inner.scan!.deletePattern(pattern),
        (removed) => Effect.sync(() => push({ op: "deletePattern", pattern, removed, at: now() }))
      )
  }

  const syncGet = inner.unsafeGetSync
  const syncFinal = syncMissIsFinal(inner)
  return {
    name: inner.name,
    get: (key) =>
      Effect.tap(
        inner.get(key),
        (found) =>
          Effect.sync(() =>
            push({ op: "get", key, outcome: outcomeOf(Option.getOrUndefined(found), now()), at: now() })
          )
      ),
    set: (key, entry) =>
      Effect.tap(inner.set(key, entry), () =>
        Effect.sync(() => {
          state.written.set(key, entry)
          push({ op: "set", key, tags: entry.tags, at: now() })
        })),
    delete: (key) =>
      Effect.tap(inner.delete(key), (removed) =>
        Effect.sync(() => {
          state.written.delete(key)
          push({ op: "delete", key, removed, at: now() })
        })),
    clear: Effect.tap(inner.clear, () =>
      Effect.sync(() => {
        state.written.clear()
        push({ op: "clear", at: now() })
      })),
    health: inner.health,
    tags,
    scan,
    // Streaming writes would bypass `written`; the test layer runs on memory, which has none.
    streaming: undefined,
    stats: inner.stats,
    // Kept so a Cache on the test layer takes the same synchronous hot path as on MemoryBackend.
    unsafeGetSync: syncGet === undefined ? undefined : (key, t) => {
      const entry = syncGet(key, t)
      // a non-final sync miss is followed by `get`, which records the read
      if (entry !== undefined || syncFinal) push({ op: "get", key, outcome: outcomeOf(entry, t), at: t })
      return entry
    },
    unsafeSyncMissIsFinal: inner.unsafeSyncMissIsFinal,
    maxEntrySize: inner.maxEntrySize
  }
}

import type { CacheBackend as CB } from "@cachekit/core"
import { CacheBackend, CacheEntry, CacheError } from "@cachekit/core"
import { Clock, Effect, Either } from "effect"
import type { Option, Scope } from "effect"
import type { Cluster, Redis } from "ioredis"
import type { Result } from "ioredis"
import type { ResolvedOptions } from "../RedisBackend.js"
import { groupByNode, makeClient, scanTargets } from "./redisCluster.js"
import { authOptions } from "./redisConnection.js"
import { decodeStored, encodeWithin, storedAnswer, UNDECODABLE } from "./wireEntry.js"

declare module "ioredis" {
  interface RedisCommander<Context> {
    /** SADD member to a tag set and make its TTL at least `ttl` ms (`-1`: persist). */
    cachekitTagLink(tagSetKey: string, member: string, ttl: string): Result<number, Context>
    /** Writes an entry and its tag links atomically; returns the links it replaced. */
    cachekitSet(
      entryKey: string,
      linksKey: string,
      value: Buffer,
      ttl: string,
      ...tags: Array<string>
    ): Result<Array<string>, Context>
  }
}

/**
 * Adds a key to a tag set and keeps the set alive at least as long as the entry:
 * a new set gets the entry's TTL, an existing set is only ever extended, an entry without
 * expiry makes the set persistent. The set therefore never outlives its longest member by
 * more than that member's TTL, and expired members are pruned lazily on read.
 */
const TAG_LINK_LUA = `
local before = redis.call('PTTL', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl < 0 then
  redis.call('PERSIST', KEYS[1])
elseif before == -2 or (before >= 0 and before < ttl) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
`

/**
 * Writes an entry (KEYS[1]) and replaces its tag links (KEYS[2]) in one step, returning the old
 * links so the caller can unlink the key from tags it lost. Both keys share a hash slot, so this
 * stays valid on Redis Cluster. ARGV: value, TTL in ms (-1: none), tags...
 */
const SET_LUA = `
local old = redis.call('SMEMBERS', KEYS[2])
local ttl = tonumber(ARGV[2])
if ttl < 0 then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
end
if #old > 0 then redis.call('DEL', KEYS[2]) end
if #ARGV > 2 then
  redis.call('SADD', KEYS[2], unpack(ARGV, 3))
  if ttl >= 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return old
`

/**
 * Commands of one batch. Recorded rather than sent, so that on a Cluster they can be split into
 * one pipeline per node (ioredis rejects a cluster pipeline whose keys live on different nodes).
 * Every command's first argument is its key.
 */
class Batch {
  readonly commands: Array<Array<string>> = []
  srem(key: string, ...members: Array<string>) {
    this.commands.push(["srem", key, ...members])
  }
  smembers(key: string) {
    this.commands.push(["smembers", key])
  }
  /** Keys of one call must share a slot on a Cluster (an entry and its links do). */
  unlink(...keys: Array<string>) {
    this.commands.push(["unlink", ...keys])
  }
  sismember(key: string, member: string) {
    this.commands.push(["sismember", key, member])
  }
  cachekitTagLink(key: string, member: string, ttl: string) {
    this.commands.push(["cachekitTagLink", key, member, ttl])
  }
}

/** Escapes glob metacharacters so a literal string can be used in SCAN MATCH. */
const escapeGlob = (s: string) => s.replace(/[*?[\]\\]/g, "\\$&")

export const makeRedisBackend = (
  options: ResolvedOptions
): Effect.Effect<CB.CacheBackend, CacheError.CacheError, Scope.Scope> =>
  Effect.gen(function*() {
    const { name, prefix } = options
    if (/[{}]/.test(prefix)) {
      return yield* Effect.fail(
        CacheError.backendUnavailable(
          name,
          "configure",
          `prefix "${prefix}" contains { or }`,
          "use a prefix without braces (they are Redis Cluster hash tags)"
        )
      )
    }
    const isCluster = options.cluster !== undefined
    const where = isCluster
      ? `Redis Cluster (seeds ${options.cluster!.map((n) => `${n.host}:${n.port}`).join(", ")})`
      : `Redis at ${options.host}:${options.port}`
    const hint = `set CACHEKIT_REDIS_URL or start redis-server`

    // the socket error behind a failure ("Connection is closed." alone does not say why)
    let lastSocketError: unknown = undefined
    const client = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const redisOptions = {
            lazyConnect: true,
            // fail fast instead of queueing commands while disconnected
            enableOfflineQueue: false,
            maxRetriesPerRequest: 0,
            autoResendUnfulfilledCommands: false,
            commandTimeout: options.commandTimeoutMillis,
            connectTimeout: options.connectTimeoutMillis,
            // keep reconnecting in the background; operations fail typed until it is back
            retryStrategy: (times: number) => Math.min(50 * times, 1000),
            ...authOptions(options)
          }
          const c = makeClient({
            host: options.host,
            port: options.port,
            url: options.url,
            cluster: options.cluster,
            redisOptions
          })
          // errors are reported through the commands that fail; without a listener ioredis logs them
          c.on("error", (error: unknown) => {
            lastSocketError = error
          })
          c.on("node error", (error: unknown) => {
            lastSocketError = error
          })
          c.defineCommand("cachekitTagLink", { numberOfKeys: 1, lua: TAG_LINK_LUA })
          c.defineCommand("cachekitSet", { numberOfKeys: 2, lua: SET_LUA })
          try {
            await c.connect()
          } catch (cause) {
            c.disconnect()
            throw cause
          }
          return c
        },
        catch: (cause) => {
          const why = lastSocketError ?? cause
          return CacheError.backendUnavailable(
            name,
            "connect",
            why,
            `${where} ${/ECONNREFUSED/.test(String(why)) ? "refused the connection" : "is not reachable"}; ${hint}`
          )
        }
      }),
      (c) =>
        Effect.promise(async () => {
          if (c.status === "ready") {
            await Promise.race([c.quit().catch(() => "failed"), new Promise((r) => setTimeout(r, 1000))])
          }
          c.disconnect()
        })
    )

    const toError = (operation: string) => (cause: unknown): CacheError.CacheError => {
      if (cause instanceof Error && /Command timed out/i.test(cause.message)) {
        return CacheError.backendTimeout(name, operation, options.commandTimeoutMillis)
      }
      return CacheError.backendUnavailable(
        name,
        operation,
        cause,
        `${where} is ${client.status === "ready" ? "connected" : client.status}; ${hint}`
      )
    }
    const call = <A>(operation: string, f: () => Promise<A>): Effect.Effect<A, CacheError.CacheError> =>
      Effect.tryPromise({ try: f, catch: toError(operation) })

    /**
     * Runs a batch as one pipeline (one per node on a Cluster, in parallel); the first command error
     * fails the whole operation. Results come back in the order the commands were added.
     */
    const pipeline = (
      operation: string,
      build: (p: Batch) => void
    ): Effect.Effect<Array<unknown>, CacheError.CacheError> =>
      call(operation, async () => {
        const batch = new Batch()
        build(batch)
        const { commands } = batch
        if (commands.length === 0) return []
        const results: Array<unknown> = new Array(commands.length)
        const groups = groupByNode(client, commands.map((c) => c[1]!))
        await Promise.all(groups.map(async (indexes) => {
          const replies = (await client.pipeline(indexes.map((i) => commands[i]!)).exec()) ?? []
          replies.forEach(([err, value], j) => {
            if (err) throw err
            results[indexes[j]!] = value
          })
        }))
        return results
      })

    const entryKey = (key: string) => `${prefix}e{${key}}`
    const linksKey = (key: string) => `${prefix}l{${key}}`
    const tagKey = (tag: string) => `${prefix}t{${tag}}`
    const entryPrefixLength = prefix.length + 2
    const userKeyOfEntryKey = (k: string) => k.slice(entryPrefixLength, -1)

    const validate = (key: string) => CacheBackend.validateKey(key)

    /** Removes `key` from the sets of tags it no longer carries. */
    const unlinkTags = (key: string, tags: ReadonlyArray<string>) =>
      tags.length === 0
        ? Effect.void
        : Effect.asVoid(pipeline("unlink tags", (p) => {
          for (const t of tags) p.srem(tagKey(t), key)
        }))

    const removeKeys = (keys: ReadonlyArray<string>, operation: string) =>
      Effect.gen(function*() {
        if (keys.length === 0) return 0
        const results = yield* pipeline(operation, (p) => {
          for (const k of keys) {
            p.smembers(linksKey(k))
            p.unlink(entryKey(k), linksKey(k))
          }
        })
        let removed = 0
        const unlinks: Array<Effect.Effect<void, CacheError.CacheError>> = []
        for (let i = 0; i < keys.length; i++) {
          const tags = results[2 * i] as Array<string>
          const count = results[2 * i + 1] as number
          // UNLINK counts the links key too; the entry existed if more keys than links went away
          if (count > (tags.length > 0 ? 1 : 0)) removed++
          if (tags.length > 0) unlinks.push(unlinkTags(keys[i]!, tags))
        }
        yield* Effect.all(unlinks, { discard: true })
        return removed
      })

    const getFailed = toError("get")
    const removeUndecodable = (key: string) => () => removeKeys([key], "delete undecodable")
    /**
     * The L2 hit path, kept to one asynchronous step: the reply is decoded in the promise callback
     * and the fiber resumes once with the answer (an `Effect.gen` + `tryPromise` + a second step
     * for the decode cost about as much as the round trip itself). The command's own timeout
     * (`commandTimeout`) bounds the wait.
     */
    const get = (key: string): Effect.Effect<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError> =>
      Effect.flatMap(validate(key), () =>
        Effect.clockWith((clock) =>
          Effect.async<Option.Option<CacheEntry.CacheEntry>, CacheError.CacheError>((resume) => {
            let reply: Promise<Buffer | null>
            try {
              reply = client.getBuffer(entryKey(key))
            } catch (cause) {
              return resume(Effect.fail(getFailed(cause)))
            }
            reply.then(
              (bytes) =>
                resume(
                  storedAnswer(decodeStored(key, bytes, clock.unsafeCurrentTimeMillis()), removeUndecodable(key))
                ),
              (cause) =>
                resume(Effect.fail(getFailed(cause)))
            )
          })
        ))

    /**
     * `get` as a Promise (the `unsafeGetPromise` capability), for `TieredCache`'s L2 read path. An
     * undecodable entry is deleted (the rare path runs the Effect of `get`'s own removal) and is a miss.
     */
    const unsafeGetPromise = (key: string, clock: Clock.Clock): Promise<CacheEntry.CacheEntry | undefined> => {
      const invalid = CacheBackend.invalidKey(key)
      if (invalid !== undefined) {
        return Promise.reject(invalid)
      }
      let reply: Promise<Buffer | null>
      try {
        reply = client.getBuffer(entryKey(key))
      } catch (cause) {
        return Promise.reject(getFailed(cause))
      }
      return reply.then(
        (bytes) => {
          const stored = decodeStored(key, bytes, clock.unsafeCurrentTimeMillis())
          if (stored !== UNDECODABLE) {
            return stored
          }
          return Effect.runPromise(Effect.either(removeKeys([key], "delete undecodable"))).then((removed) =>
            Either.isLeft(removed) ? Promise.reject(removed.left) : undefined
          )
        },
        (cause) =>
          Promise.reject(getFailed(cause))
      )
    }

    const set = (key: string, entry: CacheEntry.CacheEntry): Effect.Effect<void, CacheError.CacheError> =>
      Effect.gen(function*() {
        yield* validate(key)
        const value = yield* encodeWithin(key, entry, options.maxEntrySize, "the Redis backend's", "raise maxEntrySize")
        const now = yield* Clock.currentTimeMillis
        const ttl = CacheEntry.retainMillis(entry, now)
        const tags = [...new Set(entry.tags)]
        // Entry and links in one script (one round trip, atomic, both in the entry's hash slot); tag
        // sets live in other slots and are updated in a second pipeline, only when tags are involved.
        const oldTags = yield* call(
          "set",
          () => client.cachekitSet(entryKey(key), linksKey(key), value, String(ttl ?? -1), ...tags)
        )
        const dropped = oldTags.filter((t) => !tags.includes(t))
        if (tags.length > 0 || dropped.length > 0) {
          yield* pipeline("set tags", (p) => {
            for (const t of tags) p.cachekitTagLink(tagKey(t), key, String(ttl ?? -1))
            for (const t of dropped) p.srem(tagKey(t), key)
          })
        }
      })

    const del = (key: string): Effect.Effect<boolean, CacheError.CacheError> =>
      Effect.flatMap(validate(key), () => Effect.map(removeKeys([key], "delete"), (n) => n > 0))

    /** Visits every key matching `match`, a page at a time (on every master of a Cluster). */
    const scanAll = (
      operation: string,
      match: string,
      onPage: (keys: Array<string>) => Effect.Effect<void, CacheError.CacheError>
    ) =>
      Effect.gen(function*() {
        for (const node of scanTargets(client)) {
          let cursor = "0"
          do {
            const [next, keys] = yield* call(
              operation,
              () => node.scan(cursor, "MATCH", match, "COUNT", options.scanCount)
            )
            cursor = next
            if (keys.length > 0) yield* onPage(keys)
          } while (cursor !== "0")
        }
      })

    const clear = scanAll("clear", `${escapeGlob(prefix)}*`, (keys) =>
      Effect.asVoid(pipeline("clear", (p) => {
        // one UNLINK per key on a Cluster: keys of one page live in many slots (no CROSSSLOT)
        if (isCluster) { for (const k of keys) p.unlink(k) }
        else p.unlink(...keys)
      })))

    /**
     * One SCAN page. On a Cluster the cursor is `<master index>:<node cursor>`, walking the masters
     * (sorted by address) one after the other; a failover between pages may repeat or skip keys, as
     * SCAN itself may when a node changes.
     */
    const scanPage = (match: string, cursor: string | undefined, count: number) =>
      Effect.gen(function*() {
        if (!isCluster) {
          const [next, keys] = yield* call("scan", () => client.scan(cursor ?? "0", "MATCH", match, "COUNT", count))
          return { keys, cursor: next === "0" ? undefined : next }
        }
        const masters = scanTargets(client)
        const colon = cursor === undefined ? -1 : cursor.indexOf(":")
        let index = colon < 0 ? 0 : Number(cursor!.slice(0, colon))
        let nodeCursor = colon < 0 ? "0" : cursor!.slice(colon + 1)
        const node = masters[index]
        if (node === undefined) return { keys: [], cursor: undefined }
        const [next, keys] = yield* call("scan", () => node.scan(nodeCursor, "MATCH", match, "COUNT", count))
        nodeCursor = next
        if (nodeCursor === "0") index++
        return { keys, cursor: index >= masters.length ? undefined : `${index}:${nodeCursor}` }
      })

    /** Members of a tag set whose entries still carry the tag; stale members are pruned. */
    const liveMembers = (tag: string) =>
      Effect.gen(function*() {
        const members = yield* call("tag members", () => client.smembers(tagKey(tag)))
        if (members.length === 0) return members
        const checks = yield* pipeline("tag members", (p) => {
          for (const m of members) p.sismember(linksKey(m), tag)
        })
        const live: Array<string> = []
        const stale: Array<string> = []
        members.forEach((m, i) => (checks[i] === 1 ? live : stale).push(m))
        if (stale.length > 0) yield* call("prune tag", () => client.srem(tagKey(tag), ...stale))
        return live
      })

    const tagCapability: CB.TagCapability = {
      deleteByTags: (tags) =>
        Effect.gen(function*() {
          let removed = 0
          for (const tag of new Set(tags)) {
            const live = yield* liveMembers(tag)
            removed += yield* removeKeys(live, "delete by tag")
            yield* call("delete by tag", () => client.unlink(tagKey(tag)))
          }
          return removed
        }),
      keysForTag: (tag) => liveMembers(tag),
      listTags: Effect.gen(function*() {
        const tags: Array<string> = []
        const tagPrefixLength = prefix.length + 2
        yield* scanAll("list tags", `${escapeGlob(prefix)}t{*}`, (keys) =>
          Effect.sync(() => {
            for (const k of keys) tags.push(k.slice(tagPrefixLength, -1))
          }))
        return tags
      })
    }

    const scanCapability: CB.ScanCapability = {
      keys: (pattern, page) =>
        Effect.map(
          scanPage(`${escapeGlob(prefix)}e{${pattern}}`, page?.cursor, page?.count ?? options.scanCount),
          ({ cursor, keys }) => ({ keys: keys.map(userKeyOfEntryKey), cursor })
        ),
      deletePattern: (pattern) =>
        Effect.gen(function*() {
          let removed = 0
          yield* scanAll("delete pattern", `${escapeGlob(prefix)}e{${pattern}}`, (keys) =>
            Effect.map(removeKeys(keys.map(userKeyOfEntryKey), "delete pattern"), (n) => {
              removed += n
            }))
          return removed
        })
    }

    /** PING (every master on a Cluster: some down is `degraded`, all down or none known is `down`). */
    const health: Effect.Effect<CB.Health> = Effect.gen(function*() {
      const start = yield* Clock.currentTimeNanos
      const targets = isCluster ? scanTargets(client) : [client]
      const results = yield* Effect.forEach(
        targets,
        (node) => Effect.either(call("ping", () => node.ping())),
        { concurrency: "unbounded" }
      )
      const latencyMillis = Number((yield* Clock.currentTimeNanos) - start) / 1e6
      const failures = results.filter(Either.isLeft).map((e) => e.left.message)
      if (targets.length === 0) {
        return { backend: name, status: "down", latencyMillis, detail: `${where}: no master is known` }
      }
      if (failures.length === 0) return { backend: name, status: "up", latencyMillis }
      return {
        backend: name,
        status: failures.length === targets.length ? "down" : "degraded",
        latencyMillis,
        detail: failures.join("; ")
      }
    })

    return {
      name,
      get,
      set,
      delete: del,
      clear,
      health,
      tags: tagCapability,
      scan: scanCapability,
      unsafeGetPromise,
      maxEntrySize: options.maxEntrySize
    } satisfies CB.CacheBackend
  })

/** The ioredis client type, for tests and benchmarks that want the raw client. */
export type RedisClient = Redis | Cluster

import { RedisBackend } from "@cachekit/backends"
import { CacheBackend, CacheEntry } from "@cachekit/core"
import { describe, expect, inject, it } from "@effect/vitest"
import { Clock, ConfigProvider, Effect, Option } from "effect"
import { Cluster } from "ioredis"

// the 3-master / 3-replica cluster started by globalSetup (test/cluster.ts)
const nodes = inject("redisClusterNodes")
let counter = 0
const freshPrefix = () => `cluster-test:${process.pid}:${++counter}:`

const rawCluster = Effect.acquireRelease(
  Effect.promise(async () => {
    const c = new Cluster([...nodes], { lazyConnect: true })
    await c.connect()
    return c
  }),
  (c) => Effect.promise(() => c.quit())
)

/** Keys under `prefix` on each master (SCAN on every master). */
const keysPerMaster = (raw: Cluster, prefix: string) =>
  Effect.promise(() =>
    Promise.all(
      raw.nodes("master").map(async (node) => {
        const found: Array<string> = []
        let cursor = "0"
        do {
          const [next, keys] = await node.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000)
          found.push(...keys)
          cursor = next
        } while (cursor !== "0")
        return found
      })
    )
  )

const entry = (value: string, tags: ReadonlyArray<string> = []) =>
  Effect.map(Clock.currentTimeMillis, (now) =>
    CacheEntry.make({
      value: new TextEncoder().encode(value),
      createdAt: now,
      expiresAt: now + 60_000,
      tags
    }))

describe.skipIf(nodes.length === 0)("RedisBackend on Redis Cluster", () => {
  const backend = (prefix: string) => RedisBackend.make({ cluster: nodes, prefix, scanCount: 10 })

  it.scopedLive("spreads entries over every master and finds them all with keys(), page by page", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const redis = yield* backend(prefix)
      const raw = yield* rawCluster
      const written = Array.from({ length: 60 }, (_, i) => `user:${i}`)
      yield* Effect.forEach(written, (k) => Effect.flatMap(entry(k), (e) => redis.set(k, e)), { concurrency: 10 })
      yield* redis.set("other", yield* entry("o"))
      const perMaster = yield* keysPerMaster(raw, prefix)
      expect(perMaster).toHaveLength(3)
      for (const keys of perMaster) expect(keys.length).toBeGreaterThan(0)
      // keys() walks the masters one after the other through its cursor
      const scan = redis.scan!
      const found: Array<string> = []
      let cursor: string | undefined = undefined
      let pages = 0
      do {
        const page: CacheBackend.KeyPage = yield* scan.keys(
          "user:*",
          cursor === undefined ? { count: 10 } : {
            cursor,
            count: 10
          }
        )
        found.push(...page.keys)
        cursor = page.cursor
        pages++
      } while (cursor !== undefined)
      expect(found.sort()).toEqual([...written].sort())
      expect(pages).toBeGreaterThanOrEqual(3)
      expect(yield* scan.deletePattern("user:*")).toBe(60)
      expect(Option.isSome(yield* redis.get("other"))).toBe(true)
      expect((yield* keysPerMaster(raw, `${prefix}e{user:`)).flat()).toEqual([])
    }))

  it.scopedLive("clear empties its prefix on every master and leaves other prefixes alone", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const neighbour = freshPrefix()
      const redis = yield* backend(prefix)
      const other = yield* backend(neighbour)
      const raw = yield* rawCluster
      yield* Effect.forEach(
        Array.from({ length: 40 }, (_, i) => `k${i}`),
        (k) => Effect.flatMap(entry(k, [`tag${k.length}`]), (e) => redis.set(k, e)),
        { concurrency: 10 }
      )
      yield* other.set("kept", yield* entry("kept"))
      yield* redis.clear
      expect((yield* keysPerMaster(raw, prefix)).flat()).toEqual([])
      expect(Option.isSome(yield* other.get("kept"))).toBe(true)
    }))

  it.scopedLive("keeps an entry and its tag links in one slot, and deletes by a tag whose keys live in many slots", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const redis = yield* backend(prefix)
      const raw = yield* rawCluster
      const slot = (key: string) => Effect.promise(() => raw.cluster("KEYSLOT", key) as Promise<number>)
      expect(yield* slot(`${prefix}e{user:1}`)).toBe(yield* slot(`${prefix}l{user:1}`))
      expect(yield* slot(`${prefix}e{user:1}`)).not.toBe(yield* slot(`${prefix}t{team-a}`))
      const keys = Array.from({ length: 30 }, (_, i) => `member:${i}`)
      yield* Effect.forEach(
        keys,
        (k) => Effect.flatMap(entry(k, ["team-a", "everyone"]), (e) => redis.set(k, e)),
        { concurrency: 10 }
      )
      const slots = new Set(yield* Effect.forEach(keys, (k) => slot(`${prefix}e{${k}}`)))
      expect(slots.size).toBeGreaterThan(10)
      const tags = redis.tags!
      expect([...(yield* tags.keysForTag("team-a"))].sort()).toEqual([...keys].sort())
      expect([...(yield* tags.listTags)].sort()).toEqual(["everyone", "team-a"])
      // a retag moves the key out of a tag set in another slot
      yield* redis.set("member:0", yield* entry("member:0", ["everyone"]))
      expect(yield* tags.keysForTag("team-a")).toHaveLength(29)
      expect(yield* tags.deleteByTags(["team-a"])).toBe(29)
      expect(yield* tags.keysForTag("everyone")).toEqual(["member:0"])
    }))

  it.scopedLive("reports health from every master", () =>
    Effect.gen(function*() {
      const redis = yield* backend(freshPrefix())
      const health = yield* redis.health
      expect(health.status).toBe("up")
      expect(health.backend).toBe("redis")
    }))

  it.live("layerConfig reads the seed nodes from CACHEKIT_REDIS_CLUSTER", () =>
    Effect.gen(function*() {
      expect(RedisBackend.parseClusterNodes("10.0.0.1:7000, redis-b ,[::1]:7001")).toEqual([
        { host: "10.0.0.1", port: 7000 },
        { host: "redis-b", port: 6379 },
        { host: "::1", port: 7001 }
      ])
      const env = new Map([
        ["CACHEKIT_REDIS_CLUSTER", nodes.map((n) => `${n.host}:${n.port}`).join(",")],
        ["CACHEKIT_REDIS_PREFIX", freshPrefix()]
      ])
      const health = yield* Effect.flatMap(CacheBackend.CacheBackendTag, (b) => b.health).pipe(
        Effect.provide(RedisBackend.layerConfig()),
        Effect.withConfigProvider(ConfigProvider.fromMap(env))
      )
      expect(health.status).toBe("up")
    }))
})

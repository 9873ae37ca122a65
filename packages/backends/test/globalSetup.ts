/**
 * Starts one redis-server and three memcached processes on free loopback ports for the test run
 * and passes their ports to the tests with provide/inject. A missing binary skips the suites that
 * need it, unless CACHEKIT_REQUIRE_SERVERS=1 (set by CI), which makes it a failure.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import type { TestProject } from "vitest/node"
import { type ClusterNode, type RedisClusterProcess, startRedisCluster } from "./cluster.js"
import { hasBinary, type ServerProcess, startMemcached, startRedis } from "./servers.js"

declare module "vitest" {
  export interface ProvidedContext {
    /** Port of the shared redis-server, or 0 when it is not available. */
    redisPort: number
    /** Ports of the memcached servers (two for the conformance ring, one for the memcached tests), or []. */
    memcachedPorts: ReadonlyArray<number>
    /** Nodes of the 3-master / 3-replica Redis Cluster, or [] when it was not started. */
    redisClusterNodes: ReadonlyArray<ClusterNode>
  }
}

/** Options of the vitest CLI that take a separate value (so that value is not a file filter). */
const OPTIONS_WITH_VALUE = new Set([
  "--project",
  "--config",
  "-c",
  "--root",
  "-r",
  "--dir",
  "-t",
  "--testNamePattern",
  "--reporter",
  "--outputFile",
  "--pool",
  "--environment",
  "--shard",
  "--maxWorkers",
  "--minWorkers",
  "--mode",
  "--testTimeout",
  "--hookTimeout",
  "--sequence.seed",
  "--bail",
  "--retry"
])

/**
 * The cluster costs about 2.5 s to start, so it starts only when a cluster test file can run: a full
 * run, or file filters of which one matches a `*Cluster*` test (CACHEKIT_REDIS_CLUSTER=1/0 forces it).
 */
const wantsCluster = (): boolean => {
  const forced = process.env["CACHEKIT_REDIS_CLUSTER"]
  if (forced === "1") return true
  if (forced === "0") return false
  const args = process.argv.slice(2)
  const filters: Array<string> = []
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg.startsWith("-")) {
      if (OPTIONS_WITH_VALUE.has(arg)) i++
      continue
    }
    if (["run", "watch", "dev", "related", "bench"].includes(arg) && filters.length === 0) continue
    filters.push(arg)
  }
  if (filters.length === 0) return true
  // vitest keeps the files whose path contains a filter
  const here = path.dirname(fileURLToPath(import.meta.url))
  const clusterFiles = fs.readdirSync(here).filter((f) => /Cluster.*\.test\.ts$/.test(f)).map((f) => path.join(here, f))
  return filters.some((f) => clusterFiles.some((file) => file.includes(f.replace(/^\.\//, ""))))
}

export default async function setup(project: TestProject) {
  const required = process.env["CACHEKIT_REQUIRE_SERVERS"] === "1"
  const started: Array<ServerProcess> = []
  let cluster: RedisClusterProcess | undefined
  // the cluster starts while the single servers start
  const clusterStart = hasBinary("redis-server") && hasBinary("redis-cli") && wantsCluster()
    ? startRedisCluster().then((c) => {
      cluster = c
    })
    : Promise.resolve()
  let redisPort = 0
  let memcachedPorts: Array<number> = []
  if (hasBinary("redis-server")) {
    const redis = await startRedis()
    started.push(redis)
    redisPort = redis.port
  } else if (required) {
    throw new Error(
      "redis-server is not installed and CACHEKIT_REQUIRE_SERVERS=1; install it (apt-get install redis-server)"
    )
  }
  if (hasBinary("memcached")) {
    const servers = await Promise.all([startMemcached(), startMemcached(), startMemcached()])
    started.push(...servers)
    memcachedPorts = servers.map((s) => s.port)
  } else if (required) {
    throw new Error("memcached is not installed and CACHEKIT_REQUIRE_SERVERS=1; install it (apt-get install memcached)")
  }
  try {
    await clusterStart
  } catch (error) {
    await Promise.all(started.map((s) => s.kill()))
    throw error
  }
  project.provide("redisPort", redisPort)
  project.provide("memcachedPorts", memcachedPorts)
  project.provide("redisClusterNodes", cluster?.nodes ?? [])
  return async () => {
    await Promise.all([...started.map((s) => s.kill()), cluster?.stop()])
  }
}

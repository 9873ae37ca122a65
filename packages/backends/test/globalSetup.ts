/**
 * Starts one redis-server and three memcached processes on free loopback ports for the test run
 * and passes their ports to the tests with provide/inject. A missing binary skips the suites that
 * need it, unless CACHEKIT_REQUIRE_SERVERS=1 (set by CI), which makes it a failure.
 */
import type { TestProject } from "vitest/node"
import { hasBinary, type ServerProcess, startMemcached, startRedis } from "./servers.js"

declare module "vitest" {
  export interface ProvidedContext {
    /** Port of the shared redis-server, or 0 when it is not available. */
    redisPort: number
    /** Ports of the memcached servers (two for the conformance ring, one for the memcached tests), or []. */
    memcachedPorts: ReadonlyArray<number>
  }
}

export default async function setup(project: TestProject) {
  const required = process.env["CACHEKIT_REQUIRE_SERVERS"] === "1"
  const started: Array<ServerProcess> = []
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
  project.provide("redisPort", redisPort)
  project.provide("memcachedPorts", memcachedPorts)
  return async () => {
    await Promise.all(started.map((s) => s.kill()))
  }
}

/**
 * Runs every program in examples/ as a user would (`node --import tsx examples/<name>.ts` from the
 * repository root, whose tsconfig maps @cachekit/* to the sources) and checks what it prints, so an
 * example cannot rot when an API changes. The examples run concurrently: most of their time is
 * process start-up and TypeScript transpiling.
 */
import { describe, expect, it } from "@effect/vitest"
import { Data, Effect, Schedule } from "effect"
import { spawn } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { canConnect } from "../../backends/test/servers.js"
import { freePort } from "./fixtures/proxyRun.js"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..")
const examplesDir = path.join(root, "examples")

class ExampleFailed extends Data.TaggedError("ExampleFailed")<{ readonly message: string }> {}

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs one example to completion (killed after `timeout`). */
const runExample = (name: string, env: Record<string, string> = {}) =>
  Effect.async<Run, ExampleFailed>((resume) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join("examples", name)], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.once("error", (cause) => resume(Effect.fail(new ExampleFailed({ message: `${name}: ${cause.message}` }))))
    child.once("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    return Effect.sync(() => child.kill("SIGKILL"))
  }).pipe(
    Effect.timeoutFail({
      duration: "150 seconds",
      onTimeout: () => new ExampleFailed({ message: `${name} did not finish within 150 s` })
    })
  )

const expectClean = (run: Run) => {
  if (run.code !== 0) expect.fail(`exit code ${run.code}\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`)
}

const redisUp = Effect.promise(() => canConnect(6379))

describe.concurrent("examples", () => {
  it("every example file is covered by a test here", () => {
    const covered = [
      "admin.ts",
      "backends.ts",
      "cache-basics.ts",
      "http-client.ts",
      "http-server.ts",
      "proxy-admin.ts",
      "tiered-redis.ts"
    ]
    const files = readdirSync(examplesDir).filter((f) => f.endsWith(".ts")).sort()
    expect(files).toEqual(covered)
  })

  it("every docs/ excerpt marked `// examples/<name>.ts` is still in that example, line for line", () => {
    const docsDir = path.join(root, "docs")
    const stale: Array<string> = []
    let excerpts = 0
    for (const doc of readdirSync(docsDir).filter((f) => f.endsWith(".md"))) {
      const text = readFileSync(path.join(docsDir, doc), "utf8")
      for (const block of text.matchAll(/```ts\n\/\/ (examples\/[\w-]+\.ts)\n([\s\S]*?)```/g)) {
        excerpts++
        const source = new Set(readFileSync(path.join(root, block[1]!), "utf8").split("\n").map((l) => l.trim()))
        for (const line of block[2]!.split("\n")) {
          const trimmed = line.trim()
          if (trimmed !== "" && trimmed !== "// ..." && !source.has(trimmed)) {
            stale.push(`${doc} (${block[1]}): ${trimmed}`)
          }
        }
      }
    }
    expect(excerpts).toBeGreaterThan(10)
    expect(stale).toEqual([])
  })

  it.live(
    "cache-basics: one compute for ten concurrent misses, a stale read while refreshing, tag invalidation",
    () =>
      Effect.gen(function*() {
        const run = yield* runExample("cache-basics.ts")
        expectClean(run)
        expect(run.stdout).toContain("10 concurrent reads -> 1 query; joined is a Date: true")
        expect(run.stdout).toContain("a second read is a hit -> still 1 query")
        expect(run.stdout).toMatch(/after the ttl: served "user 2 \(v2\)" without waiting/)
        expect(run.stdout).toContain(`a moment later: "user 2 (v3)"`)
        expect(run.stdout).toContain(`removed 1; user:1 is now gone`)
      }),
    160_000
  )

  it.live(
    "backends: the same typed program runs unchanged on memory, disk, Redis and Memcached",
    () =>
      Effect.gen(function*() {
        const run = yield* runExample("backends.ts")
        expectClean(run)
        const same = "computes=1, bigint kept=true, date kept=true, tag invalidation removed="
        expect(run.stdout).toContain(`memory     ${same}1`)
        expect(run.stdout).toContain(`disk       ${same}n/a (no tag index)`)
        if (yield* redisUp) expect(run.stdout).toContain(`redis      ${same}1`)
        expect(run.stdout).toMatch(/memcached {2}(computes=1, bigint kept=true, date kept=true|skipped)/)
        expect(run.stdout).not.toContain("failed")
      }),
    160_000
  )

  it.live(
    "tiered-redis: an instance's write drops the other process's L1 copy over the Redis bus",
    () =>
      Effect.gen(function*() {
        if (!(yield* redisUp)) {
          if (process.env["CACHEKIT_REQUIRE_SERVERS"] === "1") expect.fail("redis-server is not listening on 6379")
          return
        }
        const run = yield* runExample("tiered-redis.ts")
        expectClean(run)
        expect(run.stdout).toContain("[B] read price:42 = 1999 cents (now in my L1: true)")
        expect(run.stdout).toContain("[B] A's write reached me over the bus: my L1 copy was dropped")
        expect(run.stdout).toContain("[B] read price:42 = 1499 cents")
        expect(run.stdout).toContain("[A] B exited with 0")
      }),
    160_000
  )

  it.live(
    "http-client: miss, hit, 304 revalidation and Cache-Status against a local JSON API",
    () =>
      Effect.gen(function*() {
        const run = yield* runExample("http-client.ts")
        expectClean(run)
        const lines = run.stdout.trim().split("\n")
        expect(lines[0]).toMatch(/first call.*cache-status: cachekit; fwd=uri-miss; fwd-status=200; stored.*1 requests/)
        expect(lines[1]).toMatch(/second call.*cache-status: cachekit; hit;.*\(origin: 1 requests, 0 x 304\)/)
        expect(lines[2]).toMatch(/no-cache.*fwd=stale; fwd-status=304.*\(origin: 2 requests, 1 x 304\)/)
        expect(lines[3]).toMatch(/cache-status: cachekit; hit;.*\(origin: 2 requests, 1 x 304\)/)
      }),
    160_000
  )

  it.live(
    "http-server: the router's handler runs once for concurrent misses; 304; tag purge",
    () =>
      Effect.gen(function*() {
        const run = yield* runExample("http-server.ts")
        expectClean(run)
        expect(run.stdout).toMatch(/concurrent miss #5 .*handler ran 1x/)
        expect(run.stdout).toMatch(/later request \(hit\) +200 +cache-status: cachekit; hit/)
        expect(run.stdout).toMatch(/If-None-Match\) 304/)
        expect(run.stdout).toContain(`purged 1 response(s)`)
        expect(run.stdout).toMatch(/after the purge \(miss\) .*fwd=uri-miss.*handler ran 2x/)
      }),
    160_000
  )

  it.live(
    "proxy-admin: the proxy caches, the admin API lists, counts and invalidates, the next request misses",
    () =>
      Effect.gen(function*() {
        const run = yield* runExample("proxy-admin.ts")
        expectClean(run)
        expect(run.stdout).toMatch(/2\. again \(from cache\) .*cache-status: cachekit; hit.*origin called 1x/)
        expect(run.stdout).toMatch(
          /admin GET \/keys -> 200 \{"keys":\["GET http:\/\/127\.0\.0\.1:\d+\/reports\/daily"\]/
        )
        expect(run.stdout).toMatch(/admin GET \/stats -> 200 \{"hits":1,"misses":1/)
        expect(run.stdout).toContain(`admin POST /invalidate -> 200 {"removed":1`)
        expect(run.stdout).toContain("admin GET /stats without the token -> 401")
        expect(run.stdout).toMatch(/3\. after the invalidation .*"daily report #2".*origin called 2x/)
      }),
    160_000
  )

  it.live(
    "admin: the long-running dashboard example serves its admin API (then is stopped)",
    () =>
      Effect.gen(function*() {
        const port = yield* freePort
        const token = "example-test-token-0123456789"
        const child = spawn(process.execPath, ["--import", "tsx", path.join("examples", "admin.ts")], {
          cwd: root,
          env: { ...process.env, CACHEKIT_ADMIN_PORT: String(port), CACHEKIT_ADMIN_TOKEN: token },
          stdio: ["ignore", "pipe", "pipe"]
        })
        let output = ""
        child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
        child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
        yield* Effect.addFinalizer(() => Effect.sync(() => child.kill("SIGKILL")))
        const stats = yield* Effect.tryPromise({
          try: async () => {
            const response = await fetch(`http://127.0.0.1:${port}/admin/stats`, {
              headers: { authorization: `Bearer ${token}` }
            })
            if (response.status !== 200) throw new Error(`status ${response.status}`)
            const body = await response.json() as { readonly hits: number; readonly misses: number }
            // Traffic runs every 20 ms: wait until it has produced reads.
            if (!(body.hits + body.misses > 0)) throw new Error(`no traffic yet: ${JSON.stringify(body)}`)
            return body
          },
          catch: (cause) => new ExampleFailed({ message: `admin not answering yet: ${String(cause)}\n${output}` })
        }).pipe(
          Effect.retry({ schedule: Schedule.spaced("500 millis"), times: 280 })
        )
        expect(output).toContain(`dashboard: http://127.0.0.1:${port}/admin/`)
        expect(stats.hits + stats.misses).toBeGreaterThan(0)
      }).pipe(Effect.scoped),
    160_000
  )
})

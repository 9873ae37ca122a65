/**
 * Several `cachekit proxy` processes on one Redis (`npm run bench -- scale-out`). The README section
 * "## Scale-out" is made of the parts below, in this order:
 *
 * 1. Stampede (distributed single-flight): two proxy processes (`--backend memory+redis`) with
 *    `--single-flight redis` and two with `--single-flight none`, all four running at once. Each
 *    round sends 200 concurrent requests for 10 fresh keys (20 per key, every key at both processes)
 *    to one pair, then to the other, and counts the requests that reached the origin (which answers
 *    after `BENCH_ORIGIN_MS`, default 100 ms). Then the extra latency the gate costs on an
 *    uncontended miss: fresh keys one at a time, alternating between the two pairs (origin delay 0).
 * 2. Hit throughput, 1 vs 2 processes (`hits`): one proxy process, `--instances 2` (a node:cluster
 *    primary dealing the connections to two workers on one port) and two separate processes (the
 *    load split between their ports), all `--backend memory+redis`. autocannon (in this process)
 *    keeps 64 connections busy on one cached 1 KiB URL per setup; the setups take turns
 *    `BENCH_ROUNDS` times for `BENCH_SECONDS` each and each keeps its best round.
 *
 * Everything runs in child processes on loopback: a redis-server on a free port, the origin (this
 * file with `--role origin`) and the proxies (the CLI through tsx). `BENCH_PART=stampede` runs one
 * part and leaves bench/README.md alone (the section is written from all parts).
 */
import type { ChildProcess } from "node:child_process"
import { readFileSync } from "node:fs"
import * as Http from "node:http"
import * as Net from "node:net"
import type { AddressInfo } from "node:net"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { Agent, request } from "undici"
import { autocannon, type AutocannonResult } from "./lib/autocannon.js"
import { type StartedProcess, startUntilUrl } from "./lib/processes.js"
import { writeReadmeSection } from "./lib/readme.js"

const self = fileURLToPath(import.meta.url)
const root = Path.join(Path.dirname(self), "..")

// ---------------------------------------------------------------------------------------------
// Origin role (a child process)
// ---------------------------------------------------------------------------------------------

/**
 * `/slow?ms=N&...`: answers after N ms, cacheable for an hour, the body names the URL (padded to
 * `kib` KiB when given). Requests
 * are counted per full URL at `/__count?prefix=...` (the sum over URLs starting with the prefix).
 */
const runOrigin = () => {
  const counts = new Map<string, number>()
  const server = Http.createServer((req, res) => {
    const url = req.url ?? "/"
    const parsed = new URL(url, "http://origin")
    if (parsed.pathname === "/__count") {
      const prefix = parsed.searchParams.get("prefix") ?? ""
      let total = 0
      for (const [u, n] of counts) if (u.startsWith(prefix)) total += n
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" })
      res.end(JSON.stringify({ total }))
      return
    }
    counts.set(url, (counts.get(url) ?? 0) + 1)
    const ms = Number(parsed.searchParams.get("ms") ?? "0")
    setTimeout(() => {
      res.writeHead(200, { "content-type": "text/plain", "cache-control": "public, max-age=3600" })
      const kib = Number(parsed.searchParams.get("kib") ?? "0")
      res.end(kib > 0 ? `body of ${url}`.padEnd(kib * 1024, ".") : `body of ${url}`)
    }, ms)
  })
  server.keepAliveTimeout = 60_000
  server.listen(0, "127.0.0.1", () => console.log(JSON.stringify({ port: (server.address() as AddressInfo).port })))
}

// ---------------------------------------------------------------------------------------------
// Shared setup: processes
// ---------------------------------------------------------------------------------------------

type Started = StartedProcess

const children: Array<ChildProcess> = []
process.on("exit", () => children.forEach((c) => c.exitCode === null && c.kill("SIGKILL")))

const start = (
  name: string,
  command: string,
  args: ReadonlyArray<string>,
  env: Readonly<Record<string, string>>,
  parseUrl: (output: string) => string | undefined
): Promise<Started> => startUntilUrl(name, command, args, parseUrl, { cwd: root, env, track: (c) => children.push(c) })

const freePort = () =>
  new Promise<number>((resolve) => {
    const server = Net.createServer()
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as AddressInfo).port
      server.close(() => resolve(port))
    })
  })

const startRedis = async (): Promise<string> => {
  const port = await freePort()
  await start(
    "redis-server",
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    {},
    (out) => out.includes("Ready to accept connections") ? "ok" : undefined
  )
  return `redis://127.0.0.1:${port}`
}

const startOrigin = () =>
  start("origin", process.execPath, ["--import", "tsx", self, "--role", "origin"], {}, (out) => {
    const match = /\{"port":(\d+)\}/.exec(out)
    return match === null ? undefined : `http://127.0.0.1:${match[1]}`
  })

/** One `cachekit proxy` process over `--backend memory+redis`; `flags` are added (`--instances 2`: the primary). */
const startProxy = (name: string, origin: string, redisUrl: string, prefix: string, flags: ReadonlyArray<string>) =>
  start(
    name,
    process.execPath,
    [
      "--import",
      "tsx",
      "packages/http/src/bin/cachekit.ts",
      "proxy",
      "--port",
      "0",
      "--upstream",
      origin,
      "--backend",
      "memory+redis",
      "--redis-url",
      redisUrl,
      ...flags
    ],
    { CACHEKIT_REDIS_PREFIX: prefix },
    (out) => /cachekit proxy listening on (http:\/\/\S+)/.exec(out)?.[1]
  )

const dispatcher = new Agent({ connections: 512, keepAliveTimeout: 30_000 })

const get = async (url: string): Promise<{ status: number; body: string }> => {
  const res = await request(url, { dispatcher })
  return { status: res.statusCode, body: await res.body.text() }
}

const originCount = async (origin: string, prefix: string): Promise<number> => {
  const res = await request(`${origin}/__count?prefix=${encodeURIComponent(prefix)}`, { dispatcher })
  return ((await res.body.json()) as { total: number }).total
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })
const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? Number.NaN : s[Math.floor((s.length - 1) / 2)]!
}
const percentile = (xs: ReadonlyArray<number>, p: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!
}

interface Env {
  readonly origin: Started
  readonly redisUrl: string
}

// ---------------------------------------------------------------------------------------------
// Part 1: stampede (distributed single-flight)
// ---------------------------------------------------------------------------------------------

const stampede = async ({ origin, redisUrl }: Env): Promise<string> => {
  const rounds = Number(process.env["BENCH_ROUNDS"] ?? "5")
  const requests = 200
  const keys = 10
  const originMs = Number(process.env["BENCH_ORIGIN_MS"] ?? "100")
  const misses = Number(process.env["BENCH_MISSES"] ?? "300")
  const pairs = [
    { label: "2 processes, `--single-flight redis` (the default with a Redis L2)", short: "redis", flag: "redis" },
    { label: "2 processes, `--single-flight none` (coalescing per process only)", short: "none", flag: "none" }
  ] as const
  const running = await Promise.all(
    pairs.flatMap((pair) =>
      ["A", "B"].map((side) =>
        startProxy(`${pair.short} ${side}`, origin.url, redisUrl, `bench-${pair.short}:`, [
          "--single-flight",
          pair.flag
        ])
      )
    )
  )
  const proxiesOf = (i: number) => [running[2 * i]!, running[2 * i + 1]!] as const
  // warm up: JIT, connections to Redis and the origin, on keys of their own
  for (let i = 0; i < pairs.length; i++) {
    for (const [side, proxy] of proxiesOf(i).entries()) {
      for (let n = 0; n < 50; n++) await get(`${proxy.url}/slow?warm=${i}-${side}-${n}`)
    }
  }

  const results = pairs.map(() => ({ origin: [] as Array<number>, wall: [] as Array<number>, errors: 0 }))
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < pairs.length; i++) {
      const [a, b] = proxiesOf(i)
      const tag = `/slow?ms=${originMs}&mode=${pairs[i]!.short}&round=${round}&`
      const before = await originCount(origin.url, tag)
      const started = performance.now()
      // request n: key n % 10, process (n / 10) % 2 -> every key gets 10 requests at each process
      const answers = await Promise.all(
        Array.from({ length: requests }, (_, n) => {
          const proxy = Math.floor(n / keys) % 2 === 0 ? a : b
          return get(`${proxy.url}${tag}key=${n % keys}`).then((r) => ({ r, key: n % keys }))
        })
      )
      results[i]!.wall.push(performance.now() - started)
      for (const { key, r } of answers) {
        if (r.status !== 200 || r.body !== `body of ${tag}key=${key}`) results[i]!.errors++
      }
      results[i]!.origin.push((await originCount(origin.url, tag)) - before)
    }
  }
  for (const [i, pair] of pairs.entries()) {
    const r = results[i]!
    console.log(
      `${pair.short.padEnd(5)} origin requests per round ${r.origin.join(", ")}; wall median ${
        fmt(median(r.wall), 1)
      } ms; wrong answers ${r.errors}`
    )
  }

  // Uncontended misses: fresh keys one at a time, alternating between the pairs' A processes.
  const latency = pairs.map(() => [] as Array<number>)
  for (let n = 0; n < misses; n++) {
    for (let k = 0; k < pairs.length; k++) {
      const i = (n + k) % pairs.length // alternate which pair goes first
      const [a] = proxiesOf(i)
      const started = performance.now()
      const r = await get(`${a.url}/slow?miss=${pairs[i]!.short}-${n}`)
      latency[i]!.push(performance.now() - started)
      if (r.status !== 200) throw new Error(`uncontended miss answered ${r.status}`)
    }
  }
  const lat = latency.map((xs) => ({ p50: percentile(xs, 50), p90: percentile(xs, 90), p99: percentile(xs, 99) }))
  for (const [i, pair] of pairs.entries()) {
    console.log(
      `${pair.short.padEnd(5)} uncontended miss p50 ${fmt(lat[i]!.p50, 2)} ms  p90 ${fmt(lat[i]!.p90, 2)} ms  p99 ${
        fmt(lat[i]!.p99, 2)
      } ms`
    )
  }
  for (const proxy of running) proxy.child.kill("SIGTERM")

  const expected = keys
  const [on, off] = results
  const verdict = on!.origin.every((n) => n === expected) && on!.errors === 0
    ? `with the gate every round reached the origin ${expected} times (once per key), without it ${
      off!.origin.join(", ")
    } times (up to once per key per process)`
    : `NOT met: with the gate the origin saw ${on!.origin.join(", ")} requests per round (target ${expected}), ` +
      `${on!.errors} wrong answers`
  return [
    "### Stampede (distributed single-flight)",
    "",
    `Each round: ${requests} concurrent requests for ${keys} fresh keys (${
      requests / keys
    } per key, half at each process) against an origin that answers after ${originMs} ms; ${rounds} rounds per mode, the modes taking turns. Both pairs run at once on one redis-server (own prefixes).`,
    "",
    "| mode | origin requests per round | median wall ms per round | wrong answers |",
    "|---|---|---:|---:|",
    ...pairs.map((pair, i) =>
      `| ${pair.label} | ${results[i]!.origin.join(", ")} | ${fmt(median(results[i]!.wall), 1)} | ${
        results[i]!.errors
      } |`
    ),
    "",
    `Result: ${verdict}.`,
    "",
    `Cost on an uncontended miss (${misses} fresh keys one at a time per mode, alternating; origin delay 0): the gate's lock script before the fetch and a re-read of the cache under the lock (the finish script runs after the response is sent).`,
    "",
    "| mode | p50 ms | p90 ms | p99 ms |",
    "|---|---:|---:|---:|",
    ...pairs.map((pair, i) =>
      `| ${pair.label} | ${fmt(lat[i]!.p50, 2)} | ${fmt(lat[i]!.p90, 2)} | ${fmt(lat[i]!.p99, 2)} |`
    ),
    "",
    `Extra latency of the gate: p50 +${fmt(lat[0]!.p50 - lat[1]!.p50, 2)} ms (${
      fmt(lat[0]!.p50 / lat[1]!.p50, 2)
    }x), p90 +${fmt(lat[0]!.p90 - lat[1]!.p90, 2)} ms. Hits never reach it.`
  ].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Part 2: hit throughput, 1 vs 2 processes
// ---------------------------------------------------------------------------------------------

/** CPU seconds (user + system) `pid` and its children processes (a cluster's workers) have used so far. */
const cpuSeconds = (pid: number): number => {
  const ticks = (p: number) => {
    const fields = readFileSync(`/proc/${p}/stat`, "utf8").replace(/^.*\) /, "").split(" ")
    return Number(fields[11]) + Number(fields[12]) // utime, stime (fields 14 and 15 of stat)
  }
  let children: Array<number> = []
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter((x) => x !== "")
      .map(Number)
  } catch {
    // no children file: count the process alone
  }
  return [pid, ...children].reduce((n, p) => n + ticks(p), 0) / 100 // USER_HZ
}

interface HitCell {
  /** Proxy CPU (all its processes) per hit, in microseconds. */
  readonly cpuMicrosPerHit: number
  readonly reqPerSec: number
  readonly p50: number
  readonly p99: number
  readonly errors: number
  readonly originRequests: number
}

const hits = async ({ origin, redisUrl }: Env): Promise<string> => {
  const seconds = Number(process.env["BENCH_SECONDS"] ?? "3")
  const rounds = Number(process.env["BENCH_ROUNDS"] ?? "3")
  const connections = 64
  const [one, cluster, sepA, sepB] = await Promise.all([
    startProxy("1 process", origin.url, redisUrl, "bench-hits:", []),
    startProxy("--instances 2", origin.url, redisUrl, "bench-hits:", ["--instances", "2"]),
    startProxy("separate A", origin.url, redisUrl, "bench-hits:", []),
    startProxy("separate B", origin.url, redisUrl, "bench-hits:", [])
  ])
  // the cluster's banner line comes from its first worker: probe until the second one answers too
  const instancesSeen = async () => {
    const seen = new Set<string>()
    for (let i = 0; i < 40 && seen.size < 2; i++) {
      // a new connection each: the primary deals them round-robin
      const res = await request(`${cluster!.url}/slow?ms=0&kib=1&probe=${i}`, { reset: true })
      await res.body.dump()
      const id = res.headers["cachekit-instance"]
      if (typeof id === "string") seen.add(id)
      if (seen.size < 2) await new Promise((r) => setTimeout(r, 250))
    }
    return seen
  }
  const workers = await instancesSeen()
  if (workers.size !== 2) throw new Error(`--instances 2: answers came from workers ${[...workers].join(", ")} only`)
  const setups = [
    { name: "1 process", short: "one", urls: [one!.url], pids: [one!.child.pid!] },
    { name: "`--instances 2` (one port)", short: "cluster", urls: [cluster!.url], pids: [cluster!.child.pid!] },
    {
      name: "2 separate processes (32 connections each)",
      short: "separate",
      urls: [sepA!.url, sepB!.url],
      pids: [sepA!.child.pid!, sepB!.child.pid!]
    }
  ] as const
  const path = (short: string) => `/slow?ms=0&kib=1&hits=${short}`
  const measure = async (setup: typeof setups[number], duration: number): Promise<HitCell> => {
    const before = await originCount(origin.url, path(setup.short))
    const cpu = () => setup.pids.reduce((n, pid) => n + cpuSeconds(pid), 0)
    const cpuBefore = cpu()
    const results: ReadonlyArray<AutocannonResult> = await Promise.all(
      setup.urls.map((url) =>
        autocannon({
          url: url + path(setup.short),
          connections: connections / setup.urls.length,
          duration,
          pipelining: 1
        })
      )
    )
    const reqPerSec = results.reduce((n, r) => n + r.requests.average, 0)
    return {
      cpuMicrosPerHit: ((cpu() - cpuBefore) * 1e6) / (reqPerSec * duration),
      reqPerSec,
      // the slower side's percentiles when the load is split
      p50: Math.max(...results.map((r) => r.latency.p50)),
      p99: Math.max(...results.map((r) => r.latency.p99)),
      errors: results.reduce((n, r) => n + r.errors + r.non2xx, 0),
      originRequests: (await originCount(origin.url, path(setup.short))) - before
    }
  }
  // fill the cache (one miss per setup; the shared Redis serves the other processes), warm up
  for (const setup of setups) {
    for (const url of setup.urls) await get(url + path(setup.short))
    await measure(setup, 1)
  }
  const best: Array<HitCell | undefined> = setups.map(() => undefined)
  const all = setups.map(() => [] as Array<number>)
  const cpuPerHit = setups.map(() => [] as Array<number>)
  for (let round = 0; round < rounds; round++) {
    for (const [i, setup] of setups.entries()) {
      const cell = await measure(setup, seconds)
      console.log(
        `hits round ${round + 1} ${setup.short.padEnd(9)} ${
          fmt(cell.reqPerSec).padStart(7)
        } req/s  p50 ${cell.p50} ms  p99 ${cell.p99} ms  CPU ${
          fmt(cell.cpuMicrosPerHit)
        } µs/hit  errors ${cell.errors}  origin ${cell.originRequests}`
      )
      all[i]!.push(cell.reqPerSec)
      cpuPerHit[i]!.push(cell.cpuMicrosPerHit)
      if (best[i] === undefined || cell.reqPerSec > best[i]!.reqPerSec) best[i] = cell
    }
  }
  for (const proxy of [one, cluster, sepA, sepB]) proxy!.child.kill("SIGTERM")
  const cells = best as ReadonlyArray<HitCell>
  const base = cells[0]!.reqPerSec
  return [
    "### Hit throughput, 1 vs 2 processes",
    "",
    `One cached URL (1 KiB body) per setup, ${connections} connections from autocannon (in the bench process, on the same 2 cores), ${rounds} rounds of ${seconds} s with the setups taking turns (the table shows each setup's best round, and the median of its rounds: load from other work changes by the second). The processes of \`--instances 2\` share one port through node:cluster (the primary accepts each connection and hands it to a worker round-robin; both workers answered, checked through \`Cachekit-Instance\`); the two separate processes each get half of the connections. Proxy CPU per hit is the user + system CPU time of the proxy's processes (the primary and its workers for \`--instances 2\`, from /proc) over the requests answered: what each hit costs, whatever else runs on the machine; times req/s it gives the cores the proxy kept busy (below 1 for one process: the client, not the proxy, is then the limit). Every measured request is a memory-L1 hit (origin requests during the measured runs: ${
      cells.map((c, i) => `${setups[i]!.short} ${c.originRequests}`).join(", ")
    }).`,
    "",
    "| setup | best round req/s | p50 ms | p99 ms | errors | vs 1 process | proxy CPU in that round (cores) | median round req/s | vs 1 process | proxy CPU µs per hit (median) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...setups.map((setup, i) =>
      `| ${setup.name} | ${fmt(cells[i]!.reqPerSec)} | ${cells[i]!.p50} | ${cells[i]!.p99} | ${cells[i]!.errors} | ${
        fmt(cells[i]!.reqPerSec / base, 2)
      }x | ${fmt((cells[i]!.reqPerSec * cells[i]!.cpuMicrosPerHit) / 1e6, 2)} | ${fmt(median(all[i]!))} | ${
        fmt(median(all[i]!) / median(all[0]!), 2)
      }x | ${fmt(median(cpuPerHit[i]!), 1)} |`
    )
  ].join("\n")
}

/** The parts, in README order. */
const PARTS: ReadonlyArray<{ readonly name: string; readonly run: (env: Env) => Promise<string> }> = [
  { name: "stampede", run: stampede },
  { name: "hits", run: hits }
]

const main = async () => {
  const only = process.env["BENCH_PART"]
  const redisUrl = await startRedis()
  const origin = await startOrigin()
  const sections: Array<string> = []
  for (const part of PARTS) {
    if (only !== undefined && part.name !== only) continue
    sections.push(await part.run({ origin, redisUrl }))
  }
  await dispatcher.close()
  // one part alone (iterating) leaves the README as it is: the section holds every part
  if (only !== undefined) process.exit(0)
  const date = new Date().toISOString().slice(0, 10)
  writeReadmeSection(
    [
      "## Scale-out",
      "",
      `Measured by \`npm run bench -- scale-out\` (${date}, Node ${process.version}, shared 2-core machine): \`cachekit proxy\` processes (\`--backend memory+redis\`) on one local redis-server, the origin and the client in other processes on loopback.`,
      "",
      ...sections.flatMap((s) => [s, ""])
    ].join("\n")
  )
  process.exit(0)
}

if (process.argv.includes("--role")) {
  runOrigin()
} else {
  main().catch((error) => {
    console.error(error)
    process.exit(1)
  })
}

/**
 * Caching reverse proxies side by side (`npm run bench -- proxy`):
 *
 * - cachekit: `cachekit proxy` (the CLI, memory backend, shared cache);
 * - cachekit, default backend: `cachekit proxy` on its default memory L1 + disk L2 tiers (a temporary
 *   directory), the same flags otherwise;
 * - undici cache: a plain Node `http` proxy forwarding with undici 7's `interceptors.cache()`
 *   (MemoryCacheStore, shared cache type);
 * - node, no cache: the same plain Node proxy without the interceptor;
 * - cachekit, no cache: `cachekit proxy --backend none` (forwarding only).
 *
 * The origin and every proxy run in child processes on loopback; autocannon drives them from this
 * process. Hit req/s and p50/p99 for 1 KiB and 1 MiB bodies with 1 and 64 connections, then the
 * peak RSS of each caching proxy while it serves 200 hits of a 50 MiB body. The table is written
 * to bench/README.md under "## Proxy".
 *
 * The same file is the origin and the plain proxies: `--role origin|node-proxy`.
 */
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { pipeline } from "node:stream"
import { fileURLToPath } from "node:url"
import { Agent, cacheStores, interceptors, request } from "undici"
import { autocannon, type AutocannonResult } from "./lib/autocannon.js"
import { type StartedProcess, startUntilUrl } from "./lib/processes.js"
import { writeReadmeSection } from "./lib/readme.js"

const KIB = 1024
const MIB = 1024 * 1024
const self = fileURLToPath(import.meta.url)
const root = Path.join(Path.dirname(self), "..")

// ---------------------------------------------------------------------------------------------
// Roles run as child processes
// ---------------------------------------------------------------------------------------------

const listen = (server: Http.Server) =>
  server.listen(0, "127.0.0.1", () => {
    // the parent reads this line
    console.log(JSON.stringify({ port: (server.address() as AddressInfo).port }))
  })

/** Origin: cacheable bodies of fixed sizes, and a count of requests per path at /__count. */
const runOrigin = () => {
  const bodies: Record<string, Buffer> = {
    "/1k": Buffer.alloc(KIB, "a"),
    "/1m": Buffer.alloc(MIB, "b"),
    "/50m": Buffer.alloc(50 * MIB, "c")
  }
  const counts: Record<string, number> = {}
  const server = Http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0]!
    if (path === "/__count") {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" })
      res.end(JSON.stringify(counts))
      return
    }
    // counted per full URL: each proxy asks with its own query, so counts are per proxy
    counts[req.url ?? "/"] = (counts[req.url ?? "/"] ?? 0) + 1
    const body = bodies[path]
    if (body === undefined) {
      res.writeHead(404, { "cache-control": "no-store" })
      res.end()
      return
    }
    res.writeHead(200, {
      "content-type": "application/octet-stream",
      "content-length": body.byteLength,
      "cache-control": "public, max-age=3600"
    })
    res.end(body)
  })
  server.keepAliveTimeout = 60_000
  listen(server)
}

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host"
])

/** A plain Node reverse proxy over undici, with or without undici's cache interceptor. */
const runNodeProxy = (upstream: string, cache: boolean) => {
  const agent = new Agent({ connections: 128, keepAliveTimeout: 60_000 })
  const dispatcher = cache
    ? agent.compose(interceptors.cache({
      type: "shared",
      store: new cacheStores.MemoryCacheStore({ maxSize: 512 * MIB, maxEntrySize: 64 * MIB, maxCount: 1024 })
    }))
    : agent
  const server = Http.createServer((req, res) => {
    const headers: Record<string, string | Array<string>> = {}
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined && !HOP_BY_HOP.has(name)) headers[name] = value
    }
    const method = req.method ?? "GET"
    dispatcher.request({
      origin: upstream,
      path: req.url ?? "/",
      method: method as "GET",
      headers,
      body: method === "GET" || method === "HEAD" ? null : req
    }).then((upstreamRes) => {
      const out: Record<string, string | Array<string>> = {}
      for (const [name, value] of Object.entries(upstreamRes.headers)) {
        if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value
      }
      res.writeHead(upstreamRes.statusCode, out)
      pipeline(upstreamRes.body, res, () => {})
    }, () => {
      res.writeHead(502)
      res.end()
    })
  })
  server.keepAliveTimeout = 60_000
  listen(server)
}

// ---------------------------------------------------------------------------------------------
// The parent: start everything, measure, write the table
// ---------------------------------------------------------------------------------------------

interface Started extends StartedProcess {
  readonly id: number
}

/**
 * CPU pinning (CK_BENCH_PIN=0 turns it off): on this 2-core machine the load generator (autocannon,
 * in this process) and the proxy under test otherwise fight for the same cores, and at 1 MiB x 64
 * connections the client sets the pace for every proxy alike. Pinned, this process and the origin
 * run on CPU 0 and every proxy on CPU 1 (one proxy is measured at a time).
 */
const pinned = process.env["CK_BENCH_PIN"] !== "0" && (() => {
  try {
    execFileSync("taskset", ["-cp", "0", String(process.pid)], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

/**
 * cachekit runs as shipped: plain `node` on the compiled `dist` (built first with `tsc -b`). Under
 * tsx every closure of cachekit's source gets a `__name` wrapper and the module graph is transpiled
 * on load, a handicap the other proxies (plain undici from node_modules) do not carry.
 * CK_BENCH_LOADER=tsx runs cachekit from source as before.
 */
const cachekitFromDist = process.env["CK_BENCH_LOADER"] !== "tsx"
const cachekitBin = cachekitFromDist
  ? [Path.join(root, "packages/http/dist/bin/cachekit.js")]
  : ["--import", "tsx", "packages/http/src/bin/cachekit.ts"]

let nextId = 0
/** `node <args>` (add `--import tsx` for TypeScript), on `cpu` when pinning. */
const start = (
  name: string,
  args: ReadonlyArray<string>,
  parseUrl: (output: string) => string | undefined,
  cpu: "0" | "1" = "1"
): Promise<Started> =>
  startUntilUrl(
    name,
    pinned ? "taskset" : process.execPath,
    pinned ? ["-c", cpu, process.execPath, ...args] : args,
    parseUrl,
    { cwd: root }
  ).then((started) => ({ ...started, id: nextId++ }))

const portLine = (output: string) => {
  const match = /\{"port":(\d+)\}/.exec(output)
  return match === null ? undefined : `http://127.0.0.1:${match[1]}`
}
const cachekitLine = (output: string) => /listening on (http:\/\/\S+)/.exec(output)?.[1]

const rssMiB = (pid: number): number => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? "0")
  return kb / 1024
}

/** CPU time (user + system, milliseconds) the process has used so far, from /proc. */
const clockTick = 1000 / Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim() || "100")
const cpuMillis = (pid: number): number => {
  // the fields after the command name (which is in parentheses and may hold spaces)
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(fields[11]) + Number(fields[12])) * clockTick
}

/** Waits (at most 3 s) until the processes use less than 5 ms of CPU per 100 ms. */
const settle = async (processes: ReadonlyArray<Started>) => {
  for (let i = 0; i < 30; i++) {
    const before = processes.map((p) => cpuMillis(p.child.pid!))
    await new Promise((r) => setTimeout(r, 100))
    if (processes.every((p, j) => cpuMillis(p.child.pid!) - before[j]! < 5)) return
  }
}

const originCounts = async (origin: string): Promise<Record<string, number>> => {
  const res = await request(`${origin}/__count`)
  return (await res.body.json()) as Record<string, number>
}

interface Cell {
  readonly reqPerSec: number
  readonly p50: number
  readonly p99: number
  readonly originRequests: number
  readonly errors: number
  /** The proxy process's CPU time per request served, microseconds (less is cheaper per hit). */
  readonly cpuMicros: number
}

const measure = async (url: string, connections: number, seconds: number): Promise<AutocannonResult> =>
  autocannon({ url, connections, duration: seconds, pipelining: 1 })

/** Fills the cache (a miss), then warms the JIT and the connections for one second. */
/** The URL a proxy is measured on: its own query, so the origin counts each proxy apart. */
const target = (proxy: Started, path: string) =>
  `${path}?via=${encodeURIComponent(proxy.name.split(" ")[0]!)}${proxy.id}`

const warm = async (proxy: Started, path: string, connections: number) => {
  await (await request(`${proxy.url}${target(proxy, path)}`)).body.dump()
  await measure(`${proxy.url}${target(proxy, path)}`, connections, 1)
}

/** One measured run; `originRequests` counts what reached the origin meanwhile (0 = all hits). */
const runOnce = async (
  origin: string,
  proxy: Started,
  path: string,
  connections: number,
  seconds: number
): Promise<Cell> => {
  const url = target(proxy, path)
  const before = (await originCounts(origin))[url] ?? 0
  const cpuBefore = cpuMillis(proxy.child.pid!)
  const result = await measure(`${proxy.url}${url}`, connections, seconds)
  const cpu = cpuMillis(proxy.child.pid!) - cpuBefore
  const after = (await originCounts(origin))[url] ?? 0
  return {
    cpuMicros: (cpu * 1000) / Math.max(1, result.requests.average * seconds),
    reqPerSec: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    originRequests: after - before,
    errors: result.errors + result.non2xx
  }
}

/**
 * Serves 200 hits of the 50 MiB body (4 at a time); RSS before and the peak while serving, and the
 * proxy's CPU time meanwhile (next to the wall time: whether the proxy's core was the limit).
 */
const rssUnderLargeHits = async (
  proxy: Started
): Promise<{ readonly base: number; readonly peak: number; readonly seconds: number; readonly cpuSeconds: number }> => {
  const url = `${proxy.url}/50m`
  const drain = async () => {
    const res = await request(url)
    let bytes = 0
    for await (const chunk of res.body) bytes += (chunk as Buffer).byteLength
    if (bytes !== 50 * MIB) throw new Error(`${proxy.name}: got ${bytes} bytes`)
  }
  await drain() // the miss that stores it
  await drain()
  await new Promise((r) => setTimeout(r, 1000))
  const pid = proxy.child.pid!
  const base = rssMiB(pid)
  let peak = base
  const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 10)
  let next = 0
  const cpuBefore = cpuMillis(pid)
  const started = performance.now()
  const worker = async () => {
    while (next < 200) {
      next++
      await drain()
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()])
  clearInterval(sampler)
  const seconds = (performance.now() - started) / 1000
  const cpuSeconds = (cpuMillis(pid) - cpuBefore) / 1000
  peak = Math.max(peak, rssMiB(pid))
  return { base, peak, seconds, cpuSeconds }
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })

const writeSection = writeReadmeSection

/** Proxy `i`'s req/s over undici's, round by round (each round runs every proxy once, back to back). */
const median = (xs: ReadonlyArray<number>): number => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

const perRound = (all: ReadonlyArray<ReadonlyArray<Cell>>, i: number): Array<number> =>
  all[i]!.map((cell, round) => cell.reqPerSec / all[2]![round]!.reqPerSec)

const main = async () => {
  const seconds = Number(process.env["BENCH_SECONDS"] ?? "2")
  if (cachekitFromDist) execFileSync("npx", ["tsc", "-b"], { cwd: root, stdio: "inherit" })
  const origin = await start("origin", ["--import", "tsx", self, "--role", "origin"], portLine, "0")
  const common = [...cachekitBin, "proxy", "--port", "0", "--upstream", origin.url]
  const sized = ["--memory-max-bytes", "512MiB", "--max-body-size", "64MiB"]
  const diskDir = mkdtempSync(Path.join(tmpdir(), "cachekit-bench-proxy-"))
  const proxies = await Promise.all([
    start("cachekit --backend memory", [...common, "--backend", "memory", ...sized], cachekitLine),
    start("cachekit default (memory+disk)", [...common, ...sized, "--disk-dir", diskDir], cachekitLine),
    start("undici cache interceptor", [
      "--import",
      "tsx",
      self,
      "--role",
      "node-proxy",
      "--upstream",
      origin.url,
      "--cache"
    ], portLine),
    start(
      "node proxy, no cache",
      ["--import", "tsx", self, "--role", "node-proxy", "--upstream", origin.url],
      portLine
    ),
    start("cachekit --backend none", [...common, "--backend", "none"], cachekitLine)
  ])
  const undiciIndex = 2
  const children = [origin, ...proxies]
  const stop = () => {
    children.forEach((c) => c.child.exitCode === null && c.child.kill("SIGKILL"))
    rmSync(diskDir, { recursive: true, force: true })
  }
  process.on("exit", stop)

  // The machine is shared: load changes from one second to the next. Each cell runs the proxies
  // round-robin, `rounds` times, and keeps each proxy's best round, so all of them get a fair slot.
  const rounds = Number(process.env["BENCH_ROUNDS"] ?? "3")
  const cells: Array<{ body: string; connections: number; results: Array<Cell>; rounds: Array<Array<Cell>> }> = []
  // BENCH_BODIES=1m / BENCH_CONNS=64 run some cells only (iterating; the README table needs them all).
  // BENCH_RSS_ONLY=1 runs the 50 MiB RSS phase alone and writes nothing to the README.
  const rssOnly = process.env["BENCH_RSS_ONLY"] === "1"
  const bodies = rssOnly ? [] : process.env["BENCH_BODIES"]?.split(",")
  const conns = process.env["BENCH_CONNS"]?.split(",").map(Number)
  for (const [path, body] of [["/1k", "1 KiB"], ["/1m", "1 MiB"]] as const) {
    if (bodies !== undefined && !bodies.includes(path.slice(1))) continue
    for (const connections of [1, 64]) {
      if (conns !== undefined && !conns.includes(connections)) continue
      for (const proxy of proxies) await warm(proxy, path, connections)
      const best: Array<Cell | undefined> = proxies.map(() => undefined)
      const all: Array<Array<Cell>> = proxies.map(() => [])
      for (let round = 0; round < rounds; round++) {
        // each round starts with another proxy: whoever runs first gets no head start or penalty every time
        for (let k = 0; k < proxies.length; k++) {
          const i = (round + k) % proxies.length
          const proxy = proxies[i]!
          const cell = await runOnce(origin.url, proxy, path, connections, seconds)
          all[i]!.push(cell)
          if (best[i] === undefined || cell.reqPerSec > best[i]!.reqPerSec) best[i] = cell
          // requests still in flight when the run stopped (slow proxies at 64 connections) must not
          // eat into the next proxy's run
          await settle([proxy, origin])
        }
      }
      const results = best as Array<Cell>
      for (const [i, proxy] of proxies.entries()) {
        const cell = results[i]!
        console.log(
          `${body.padEnd(6)} c=${String(connections).padEnd(3)} ${proxy.name.padEnd(26)} ${
            fmt(cell.reqPerSec).padStart(8)
          } req/s  p50 ${cell.p50} ms  p99 ${cell.p99} ms  cpu ${
            fmt(cell.cpuMicros)
          } µs/req  origin hits ${cell.originRequests}  errors ${cell.errors}`
        )
      }
      for (const i of [0, 1]) {
        console.log(`  ${proxies[i]!.name} / undici per round: ${perRound(all, i).map((r) => fmt(r, 2)).join(", ")}`)
      }
      cells.push({ body, connections, results, rounds: all })
    }
  }

  const rss: Array<{ name: string; base: number; peak: number; seconds: number; cpuSeconds: number }> = []
  // BENCH_SKIP_RSS=1 skips the 50 MiB phase while iterating; it then writes nothing to the README.
  const skipRss = process.env["BENCH_SKIP_RSS"] === "1"
  for (const proxy of skipRss ? [] : proxies.slice(0, 3)) {
    const { base, cpuSeconds, peak, seconds } = await rssUnderLargeHits(proxy)
    rss.push({ name: proxy.name, base, peak, seconds, cpuSeconds })
    console.log(
      `${proxy.name}: RSS ${fmt(base)} MiB before, peak ${fmt(peak)} MiB during 200 hits of 50 MiB (${
        fmt(seconds, 1)
      } s, proxy CPU ${fmt(cpuSeconds, 1)} s)`
    )
  }
  stop()
  if (skipRss || rssOnly) return

  const names = proxies.map((p) => p.name)
  const ratio = (results: ReadonlyArray<Cell>, all: ReadonlyArray<ReadonlyArray<Cell>>, i: number) => {
    const each = perRound(all, i)
    return `${fmt(results[i]!.reqPerSec / results[undiciIndex]!.reqPerSec, 2)}x (${fmt(median(each), 2)}x; ${
      fmt(Math.min(...each), 2)
    }–${fmt(Math.max(...each), 2)})`
  }
  const table = [
    `| body | conns | ${
      names.map((n) => `${n} req/s (p50 / p99 ms)`).join(" | ")
    } | memory / undici (round median; range) | default / undici (round median; range) |`,
    `|---|---:|${names.map(() => "---:").join("|")}|---:|---:|`,
    ...cells.map(({ body, connections, results, rounds: all }) =>
      `| ${body} | ${connections} | ${results.map((r) => `${fmt(r.reqPerSec)} (${r.p50} / ${r.p99})`).join(" | ")} | ${
        ratio(results, all, 0)
      } | ${ratio(results, all, 1)} |`
    )
  ]
  const cpuTable = [
    `| body | conns | ${names.join(" | ")} |`,
    `|---|---:|${names.map(() => "---:").join("|")}|`,
    ...cells.map(({ body, connections, rounds: all }) =>
      `| ${body} | ${connections} | ${all.map((each) => fmt(median(each.map((c) => c.cpuMicros)))).join(" | ")} |`
    )
  ]
  const originRow = cells.map(({ body, connections, results }) =>
    `${body}/c${connections}: ${results.map((r, i) => `${names[i]} ${r.originRequests}`).join(", ")}`
  )
  const rssTable = [
    "| proxy | RSS before (MiB) | peak RSS during 200 hits of 50 MiB (MiB) | growth (MiB) | 200 hits took (s) | proxy CPU meanwhile (s) |",
    "|---|---:|---:|---:|---:|---:|",
    ...rss.map((r) =>
      `| ${r.name} | ${fmt(r.base)} | ${fmt(r.peak)} | ${fmt(r.peak - r.base)} | ${fmt(r.seconds, 1)} | ${
        fmt(r.cpuSeconds, 1)
      } |`
    )
  ]
  const date = new Date().toISOString().slice(0, 10)
  writeSection([
    "## Proxy",
    "",
    `Measured by \`npm run bench -- proxy\` (${date}, Node ${process.version}, 2 cores shared with other work: absolute numbers move a lot between runs, compare within a row). The origin and each proxy are child processes on loopback; ${
      pinned
        ? "autocannon (in the bench process) and the origin pinned to CPU 0 and every proxy to CPU 1 (taskset; one proxy is measured at a time)"
        : "autocannon (in the bench process, on the same 2 cores, unpinned)"
    } keeps 1 or 64 connections busy; cachekit ${
      cachekitFromDist ? "runs as shipped (plain node on the compiled dist)" : "runs from source under tsx"
    }; each cell runs the five proxies round-robin ${rounds} times (each round starting with the next proxy, and waiting until the last one and the origin are idle before the next run) for ${seconds} s after a warm-up and keeps each proxy's best round (load from other work changes by the second); the ratio columns give best over best, and in brackets the median and the range of the ratio within one round (cachekit and undici measured in the same round, seconds apart). For the caching proxies every measured request is a hit on one URL. Proxies: \`cachekit proxy --backend memory\` (shared cache), \`cachekit proxy\` on its default backend (memory L1 + disk L2 tiers, \`--disk-dir\` a temporary directory), a plain Node \`http\` proxy forwarding through undici 7 with \`interceptors.cache()\` (MemoryCacheStore, shared), the same plain proxy without the cache, and \`cachekit proxy --backend none\` (forwarding only).`,
    "",
    ...table,
    "",
    "CPU time of each proxy process per request served (user + system from /proc, median over the rounds, microseconds): what a hit costs the proxy itself, which the machine's load changes much less than req/s.",
    "",
    ...cpuTable,
    "",
    `Requests that reached the origin during the measured runs (0 = every request was a hit): ${originRow.join("; ")}.`,
    "",
    "Peak RSS of the proxy process (sampled every 10 ms from /proc) while it serves 200 hits of a 50 MiB body, 4 at a time; \"before\" is after the miss that stored it. The last column is the proxy's CPU time (user + system) during those hits: close to the wall time, the proxy's one core was the limit.",
    "",
    ...rssTable,
    ""
  ].join("\n"))
  console.log("\nwritten to bench/README.md (## Proxy)")
}

const argv = process.argv.slice(2)
const role = argv[argv.indexOf("--role") + 1]
if (argv.includes("--role") && role === "origin") {
  runOrigin()
} else if (argv.includes("--role") && role === "node-proxy") {
  runNodeProxy(argv[argv.indexOf("--upstream") + 1]!, argv.includes("--cache"))
} else {
  main().then(() => process.exit(0), (error) => {
    console.error(error)
    process.exit(1)
  })
}

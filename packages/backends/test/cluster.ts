/**
 * A throwaway Redis Cluster for the test run: six `redis-server --cluster-enabled yes` nodes on
 * loopback (3 masters, 3 replicas), joined with `redis-cli --cluster create --cluster-replicas 1`,
 * ready once every node reports `cluster_state:ok`. Each node gets its own temp directory for its
 * cluster config file; everything is removed on `stop`.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { killProcess, redisServerArgs, waitForPort } from "./servers.js"

export interface ClusterNode {
  readonly host: string
  readonly port: number
}

export interface RedisClusterProcess {
  /** The six nodes (masters and replicas); any of them works as a seed for a client. */
  readonly nodes: ReadonlyArray<ClusterNode>
  /** Sends `signal` to the node on `port` (SIGSTOP/SIGCONT to hang and resume it, SIGKILL to kill it). */
  readonly signal: (port: number, signal: NodeJS.Signals) => void
  readonly stop: () => Promise<void>
}

export interface ClusterSettings {
  /** `cluster-node-timeout`: a master not answering this long is failed over. Default 2000 ms. */
  readonly nodeTimeoutMillis?: number
  /** `cluster-require-full-coverage`: when false, the other masters keep serving while one range is down. Default true. */
  readonly requireFullCoverage?: boolean
  /**
   * Also wait until every replica has synced with its master (a replica that never synced refuses
   * to take over). Default false: the shared cluster's tests do not fail masters over.
   */
  readonly waitForReplicas?: boolean
}

const run = (command: string, args: ReadonlyArray<string>, timeoutMillis = 10_000): Promise<string> =>
  new Promise((resolve, reject) => {
    execFile(command, [...args], { timeout: timeoutMillis }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(" ")} failed: ${error.message}\n${stdout}\n${stderr}`))
      else resolve(stdout)
    })
  })

const isFree = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const server = net.createServer()
    server.once("error", () => resolve(false))
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)))
  })

/**
 * A port P such that P and P + 10000 (the node's cluster bus port) are both free. Picked from
 * 20000..39999 so the bus port stays under the ephemeral range the OS hands out for port 0.
 */
const freeNodePort = async (taken: Set<number>): Promise<number> => {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 20_000)
    if (taken.has(port) || taken.has(port + 10_000)) continue
    if (await isFree(port) && await isFree(port + 10_000)) {
      taken.add(port)
      taken.add(port + 10_000)
      return port
    }
  }
  throw new Error("no free port pair for a cluster node")
}

const sleep = (millis: number) => new Promise((r) => setTimeout(r, millis))

const waitUntil = async (what: string, check: () => Promise<boolean>, timeoutMillis: number) => {
  const deadline = Date.now() + timeoutMillis
  while (Date.now() < deadline) {
    if (await check()) return
    await sleep(25)
  }
  throw new Error(`${what} within ${timeoutMillis} ms`)
}

/** Starts and joins the cluster (about 2.5 s on a 2-core machine, most of it in `redis-cli --cluster create`). */
export const startRedisCluster = async (settings: ClusterSettings = {}): Promise<RedisClusterProcess> => {
  // a port found free can be taken by another process before redis-server binds it (the machine
  // runs other test runs): a node then exits at once, and the cluster is started again on new ports
  for (let attempt = 1;; attempt++) {
    try {
      return await startOnce(settings)
    } catch (error) {
      if (attempt >= 3 || !/exited with code/.test(String(error))) throw error
    }
  }
}

const startOnce = async (settings: ClusterSettings): Promise<RedisClusterProcess> => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cachekit-cluster-"))
  const taken = new Set<number>()
  const ports: Array<number> = []
  for (let i = 0; i < 6; i++) ports.push(await freeNodePort(taken))
  const children: Array<ChildProcess> = []
  const stop = async () => {
    await Promise.all(children.map((child) => killProcess(child)))
    await fs.rm(dir, { recursive: true, force: true })
  }
  try {
    for (const port of ports) {
      const nodeDir = path.join(dir, String(port))
      await fs.mkdir(nodeDir)
      children.push(spawn(
        "redis-server",
        redisServerArgs(port, [
          "--dir",
          nodeDir,
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          path.join(nodeDir, "nodes.conf"),
          // a dead master is detected after this; short so that failover tests stay short
          "--cluster-node-timeout",
          String(settings.nodeTimeoutMillis ?? 2000),
          "--cluster-require-full-coverage",
          settings.requireFullCoverage === false ? "no" : "yes",
          // the first sync of a replica starts at once instead of after the default 5 s
          "--repl-diskless-sync-delay",
          "0"
        ]),
        { stdio: "ignore" }
      ))
    }
    await Promise.all(ports.map((port, i) => waitForPort(port, children[i]!)))
    await run("redis-cli", [
      "--cluster",
      "create",
      ...ports.map((p) => `127.0.0.1:${p}`),
      "--cluster-replicas",
      "1",
      "--cluster-yes"
    ])
    await waitUntil("the cluster did not report cluster_state:ok on every node", async () => {
      const states = await Promise.all(ports.map((p) => run("redis-cli", ["-p", String(p), "cluster", "info"])))
      return states.every((s) => s.includes("cluster_state:ok"))
    }, 10_000)
    if (settings.waitForReplicas === true) {
      await waitUntil("a replica did not sync with its master", async () => {
        const infos = await Promise.all(ports.map((p) => run("redis-cli", ["-p", String(p), "info", "replication"])))
        const replicas = infos.filter((i) => i.includes("role:slave"))
        if (replicas.length !== 3 || !replicas.every((i) => i.includes("master_link_status:up"))) return false
        // and every node knows who replicates whom (gossip lags behind the replication links)
        const views = await Promise.all(ports.map((p) => run("redis-cli", ["-p", String(p), "cluster", "nodes"])))
        return views.every((v) =>
          v.split("\n").filter((line) => / (myself,)?slave [0-9a-f]{40} /.test(line)).length === 3
        )
      }, 10_000)
    }
    const signal = (port: number, sig: NodeJS.Signals) => {
      const child = children[ports.indexOf(port)]
      if (child === undefined) throw new Error(`no cluster node on port ${port}`)
      child.kill(sig)
    }
    return { nodes: ports.map((port) => ({ host: "127.0.0.1", port })), signal, stop }
  } catch (error) {
    await stop()
    throw error
  }
}

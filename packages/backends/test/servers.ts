/**
 * Spawns throwaway `redis-server` and `memcached` processes on free loopback ports, for the test
 * run (globalSetup) and for fault tests that kill and restart their own instance.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { readdirSync, readFileSync, readlinkSync } from "node:fs"
import * as net from "node:net"

export const hasBinary = (name: string): boolean => spawnSync("which", [name]).status === 0

/** A free TCP port on 127.0.0.1 (the OS picks it; we close the probe socket before using it). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
export const canConnect = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port })
    socket.once("connect", () => {
      socket.destroy()
      resolve(true)
    })
    socket.once("error", () => resolve(false))
  })

/** Resolves once `child` accepts connections on `port`; fails if it exits first or takes too long. */
export const waitForPort = async (port: number, child: ChildProcess, timeoutMillis = 5000): Promise<void> => {
  const deadline = Date.now() + timeoutMillis
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server on port ${port} exited with code ${child.exitCode}`)
    if (await canConnect(port)) return
    await new Promise((r) => setTimeout(r, 25))
  }
  throw new Error(`server on port ${port} did not accept connections within ${timeoutMillis} ms`)
}

export interface ServerProcess {
  readonly port: number
  readonly kill: () => Promise<void>
  /** Sends `signal` (SIGSTOP/SIGCONT hang and resume the server). */
  readonly signal: (signal: NodeJS.Signals) => void
}

/** Sends `signal` (SIGKILL by default) to `child` and resolves once it has exited (at once if it already has). */
export const killProcess = (child: ChildProcess, signal: NodeJS.Signals = "SIGKILL"): Promise<void> =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill(signal)
  })

/**
 * Who listens on 127.0.0.1:`port`: the process `pid`, another one, or nobody yet (from Linux's
 * /proc: the listening socket's inode among `pid`'s open files). Works whatever the server's
 * protocol or login; `undefined` where /proc cannot tell.
 */
const listener = (pid: number, port: number): "own" | "other" | "none" | undefined => {
  let table: string
  try {
    table = readFileSync("/proc/net/tcp", "utf8")
  } catch {
    return undefined
  }
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`
  // fields: sl local_address rem_address st ... inode (10th); st 0A = LISTEN
  const row = table.split("\n").map((line) => line.trim().split(/\s+/)).find((f) => f[1] === local && f[3] === "0A")
  if (row === undefined) return "none"
  const socket = `socket:[${row[9]}]`
  try {
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
        try {
          return readlinkSync(`/proc/${pid}/fd/${fd}`) === socket
        } catch {
          return false
        }
      })
      ? "own"
      : "other"
  } catch {
    return "other"
  }
}

/**
 * Spawns `command` on `port` and resolves once the socket listening there is this very child's: between
 * picking a free port and the server binding it, another test's server can take the port (the child
 * then exits), and a bare "accepts connections" check would hand out the other server. A free port
 * picked here (`pick`) is retried with another one; an explicit port is not.
 */
const start = async (
  port: number | undefined,
  command: "redis-server" | "memcached",
  args: (port: number) => ReadonlyArray<string>
): Promise<ServerProcess> => {
  for (let attempt = 0; attempt < 5; attempt++) {
    const p = port ?? await freePort()
    const child = spawn(command, args(p), { stdio: "ignore" })
    const deadline = Date.now() + 5000
    while (Date.now() < deadline && child.exitCode === null) {
      const who = listener(child.pid!, p)
      if (who === "own" || (who === undefined && await canConnect(p))) {
        return { port: p, kill: () => killProcess(child), signal: (sig) => void child.kill(sig) }
      }
      if (who === "other" && port === undefined) break // another server holds the port: try another
      await new Promise((r) => setTimeout(r, 25))
    }
    await killProcess(child)
    if (port !== undefined) throw new Error(`${command} did not start on port ${port} within 5 s`)
  }
  throw new Error(`${command} did not start on a port of its own in 5 attempts`)
}

/** Arguments of a loopback `redis-server` on `port` without persistence, followed by `extra`. */
export const redisServerArgs = (port: number, extra: ReadonlyArray<string> = []): Array<string> => [
  "--port",
  String(port),
  "--bind",
  "127.0.0.1",
  "--save",
  "",
  "--appendonly",
  "no",
  "--protected-mode",
  "no",
  "--loglevel",
  "warning",
  ...extra
]

/** redis-server on `port` (a fresh free one by default), no persistence; `extra` arguments appended. */
export const startRedis = (port?: number, extra: ReadonlyArray<string> = []): Promise<ServerProcess> =>
  start(port, "redis-server", (p) => redisServerArgs(p, extra))

/** memcached on `port`, 64 MiB of memory, items up to 32 MiB (tests store 10 MiB values). */
export const startMemcached = (port?: number): Promise<ServerProcess> =>
  start(
    port,
    "memcached",
    (p) => ["-l", "127.0.0.1", "-p", String(p), "-U", "0", "-m", "128", "-I", "32m", "-u", "root"]
  )

/**
 * Spawns throwaway `redis-server` and `memcached` processes on free loopback ports, for the test
 * run (globalSetup) and for fault tests that kill and restart their own instance.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
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

/** SIGKILLs `child` and resolves once it has exited (at once if it already has). */
export const killProcess = (child: ChildProcess): Promise<void> =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGKILL")
  })

const start = async (port: number, command: string, args: ReadonlyArray<string>): Promise<ServerProcess> => {
  const child = spawn(command, args, { stdio: "ignore" })
  await waitForPort(port, child)
  return { port, kill: () => killProcess(child), signal: (sig) => void child.kill(sig) }
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
export const startRedis = async (port?: number, extra: ReadonlyArray<string> = []): Promise<ServerProcess> => {
  const p = port ?? await freePort()
  return start(p, "redis-server", redisServerArgs(p, extra))
}

/** memcached on `port`, 64 MiB of memory, items up to 32 MiB (tests store 10 MiB values). */
export const startMemcached = async (port?: number): Promise<ServerProcess> => {
  const p = port ?? await freePort()
  return start(p, "memcached", ["-l", "127.0.0.1", "-p", String(p), "-U", "0", "-m", "128", "-I", "32m", "-u", "root"])
}

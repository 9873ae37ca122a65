/**
 * Child processes of a bench (origins, proxies): started, then resolved once they print their URL.
 */
import { type ChildProcess, spawn } from "node:child_process"

/** A started child and the URL it printed. */
export interface StartedProcess {
  readonly name: string
  readonly child: ChildProcess
  readonly url: string
}

/**
 * Spawns `command args` and resolves once `parseUrl` finds the URL in what it printed so far
 * (stdout or stderr); rejects with its output if it exits first or has printed none in 90 s.
 * `track` receives the child at once, so that a bench can kill it on exit even if it never starts.
 */
export const startUntilUrl = (
  name: string,
  command: string,
  args: ReadonlyArray<string>,
  parseUrl: (output: string) => string | undefined,
  options: {
    readonly cwd: string
    readonly env?: Readonly<Record<string, string>>
    readonly track?: (child: ChildProcess) => void
  }
): Promise<StartedProcess> =>
  new Promise<StartedProcess>((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...options.env }
    })
    options.track?.(child)
    let output = ""
    const timer = setTimeout(() => reject(new Error(`${name} did not start:\n${output}`)), 90_000)
    const onData = (data: Buffer) => {
      output += data.toString("utf8")
      const url = parseUrl(output)
      if (url !== undefined) {
        clearTimeout(timer)
        resolve({ name, child, url })
      }
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => reject(new Error(`${name} exited with ${code}:\n${output}`)))
  })

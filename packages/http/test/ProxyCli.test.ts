/**
 * The `cachekit` command: its flag parser, flags over environment, and the command itself run as a
 * child process (so the thing users type cannot rot).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option } from "effect"
import type { ChildProcess } from "node:child_process"
import { spawn } from "node:child_process"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { settingsConfig } from "../src/internal/cli.js"
import { CliError, configProvider, parse, parseSize } from "../src/internal/cliArgs.js"
import { fetchVia, layerOrigin, OriginTag } from "./fixtures/proxyOrigin.js"

const root = fileURLToPath(new URL("../../..", import.meta.url))
const bin = Path.join(root, "packages/http/src/bin/cachekit.ts")

describe("cachekit flags", () => {
  it("parses --flag value and --flag=value into CACHEKIT_* settings", () => {
    const command = parse([
      "proxy",
      "--upstream",
      "http://127.0.0.1:8080",
      "--port=0",
      "--backend",
      "redis",
      "--max-body-size",
      "64MiB",
      "--upstream-timeout=5s",
      "--strip-targeted-cache-control",
      "yes"
    ])
    expect(command).toStrictEqual(Either.right({
      _tag: "Proxy",
      settings: new Map([
        ["CACHEKIT_UPSTREAM", "http://127.0.0.1:8080"],
        ["CACHEKIT_PORT", "0"],
        ["CACHEKIT_BACKEND", "redis"],
        ["CACHEKIT_MAX_BODY_SIZE", String(64 * 1024 * 1024)],
        ["CACHEKIT_UPSTREAM_TIMEOUT", "5s"],
        ["CACHEKIT_STRIP_TARGETED_CACHE_CONTROL", "true"]
      ])
    }))
  })

  it("rejects an unknown flag, a missing value and a bad value with a typed error naming the flag", () => {
    expect(parse(["proxy", "--turbo"])).toStrictEqual(Either.left(
      new CliError({
        reason: "UnknownFlag",
        flag: "turbo",
        message: "unknown flag --turbo (cachekit proxy --help lists them)"
      })
    ))
    const missing = parse(["proxy", "--upstream"])
    expect(Either.isLeft(missing) && missing.left.reason).toBe("MissingValue")
    const badPort = parse(["proxy", "--port", "70000"])
    expect(Either.isLeft(badPort) && [badPort.left.reason, badPort.left.flag]).toEqual(["InvalidValue", "port"])
    const badBackend = parse(["proxy", "--backend", "floppy"])
    expect(Either.isLeft(badBackend) && badBackend.left.message).toContain(
      "memory+disk, memory+redis, memory+memcached, memory, disk, redis, memcached, none"
    )
    const badSize = parse(["proxy", "--max-body-size", "lots"])
    expect(Either.isLeft(badSize) && badSize.left.flag).toBe("max-body-size")
    expect(Either.isLeft(parse(["serve"]))).toBe(true)
    expect(parse(["proxy", "--help"])).toStrictEqual(Either.right({ _tag: "Help" }))
  })

  it("reads sizes in bytes with binary units", () => {
    expect(parseSize("1048576")).toBe(1048576)
    expect(parseSize("512k")).toBe(512 * 1024)
    expect(parseSize("64MiB")).toBe(64 * 1024 * 1024)
    expect(parseSize("1.5g")).toBe(1.5 * 1024 ** 3)
    expect(parseSize("12 parsecs")).toBeUndefined()
  })

  it.effect("flags win over environment variables, which win over defaults", () =>
    Effect.gen(function*() {
      const command = parse(["proxy", "--port", "4000", "--cache-status-name", "edge"])
      if (Either.isLeft(command) || command.right._tag !== "Proxy") return expect.fail("not a proxy command")
      const settings = yield* settingsConfig.pipe(
        Effect.withConfigProvider(configProvider(command.right.settings, {
          CACHEKIT_PORT: "5000",
          CACHEKIT_BACKEND: "memcached",
          CACHEKIT_TARGETED_CACHE_CONTROL: "Cachekit-Cache-Control, CDN-Cache-Control"
        }))
      )
      expect(settings.port).toBe(4000)
      expect(settings.cacheStatusName).toBe("edge")
      expect(settings.backend).toBe("memcached")
      expect(settings.targetedCacheControl).toEqual(["cachekit-cache-control", "cdn-cache-control"])
      expect(settings.host).toBe("127.0.0.1")
      expect(settings.upstream).toStrictEqual(Option.none())
      expect(settings.upstreamTimeout).toBe(30_000)
    }))
})

/** Starts the command; resolves with the proxy URL it prints. */
const startCli = (args: ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.async<{ readonly child: ChildProcess; readonly url: string; readonly output: () => string }, Error>(
      (resume) => {
        const child = spawn(process.execPath, ["--import", "tsx", bin, "proxy", ...args], {
          cwd: root,
          env: { ...process.env, CACHEKIT_BACKEND: "memory" },
          stdio: ["ignore", "pipe", "pipe"]
        })
        let output = ""
        const onData = (data: Buffer) => {
          output += data.toString("utf8")
          const match = /listening on (http:\/\/[^\s]+)/.exec(output)
          if (match !== null) resume(Effect.succeed({ child, url: match[1]!, output: () => output }))
        }
        child.stdout.on("data", onData)
        child.stderr.on("data", (data: Buffer) => (output += data.toString("utf8")))
        child.on("exit", (code) => resume(Effect.fail(new Error(`cachekit exited (${code}) early:\n${output}`))))
      }
    ).pipe(Effect.timeout("45 seconds")),
    ({ child }) => Effect.sync(() => child.exitCode === null && child.kill("SIGKILL"))
  )

const exitOf = (child: ChildProcess) =>
  Effect.async<number | null>((resume) => {
    // "close" comes after the output streams ended (and fires even if the process already exited)
    if (child.stdout?.closed === true && child.exitCode !== null) return resume(Effect.succeed(child.exitCode))
    child.once("close", (code) => resume(Effect.succeed(code)))
  })

describe("cachekit proxy (child process)", () => {
  it.scopedLive(
    "proxies and caches for --upstream, then drains an in-flight request on SIGTERM and exits 0",
    () =>
      Effect.gen(function*() {
        const origin = yield* OriginTag
        const cli = yield* startCli(["--port", "0", "--upstream", origin.url, "--shutdown-grace", "5s"])
        expect(cli.output()).toContain(`upstream: ${origin.url}/`)
        const first = yield* fetchVia(`${cli.url}/big?mib=1&cacheable=1`)
        const second = yield* fetchVia(`${cli.url}/big?mib=1&cacheable=1`)
        expect(first.body.byteLength).toBe(1024 * 1024)
        expect(second.headers["cache-status"]).toContain("hit")
        expect(second.headers["via"]).toBe("1.1 cachekit")
        expect(yield* origin.count("/big")).toBe(1)

        const slow = yield* Effect.fork(fetchVia(`${cli.url}/slow?ms=600`))
        yield* Effect.sleep("200 millis")
        cli.child.kill("SIGTERM")
        const res = yield* slow.await
        expect(res._tag).toBe("Success")
        if (res._tag === "Success") expect(res.value.text).toBe("slow done")
        expect(yield* exitOf(cli.child)).toBe(0)
      }).pipe(Effect.provide(layerOrigin())),
    60_000
  )

  it.scopedLive(
    "with no --upstream, runs in front of the embedded demo origin and prints how to try it",
    () =>
      Effect.gen(function*() {
        const cli = yield* startCli(["--port", "0"])
        yield* Effect.sleep("100 millis") // the banner is printed in one write; let it all arrive
        expect(cli.output()).toContain("embedded demo origin at http://127.0.0.1:")
        expect(cli.output()).toContain(`curl -si ${cli.url}/cacheable`)
        const first = yield* fetchVia(`${cli.url}/cacheable`)
        const second = yield* fetchVia(`${cli.url}/cacheable`)
        expect(first.headers["cache-status"]).toContain("stored")
        expect(second.headers["cache-status"]).toContain("hit")
        expect(JSON.parse(second.text)).toMatchObject({ route: "/cacheable", originHits: 1 })
        const vary = yield* fetchVia(`${cli.url}/vary`, { headers: { "accept-language": "fr" } })
        expect(JSON.parse(vary.text)).toMatchObject({ greeting: "bonjour" })
        cli.child.kill("SIGINT")
        expect(yield* exitOf(cli.child)).toBe(0)
      }),
    60_000
  )

  it.live("exits 2 with a message for a bad flag", () =>
    Effect.gen(function*() {
      const child = spawn(process.execPath, ["--import", "tsx", bin, "proxy", "--port", "http"], {
        cwd: root,
        stdio: ["ignore", "pipe", "pipe"]
      })
      let stderr = ""
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")))
      expect(yield* exitOf(child)).toBe(2)
      expect(stderr).toContain(`cachekit: --port: "http" is not a port`)
    }), 60_000)
})

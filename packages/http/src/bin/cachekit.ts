#!/usr/bin/env node
/**
 * `cachekit proxy [flags]`: the caching reverse proxy. `cachekit --help` lists the flags; each one
 * can also be given as a `CACHEKIT_*` environment variable.
 *
 * @since 0.1.0
 */
import { runMain } from "@effect/platform-node/NodeRuntime"
import { Console, Effect, Either, Exit, Option } from "effect"
import { helpText, parse, version } from "../internal/cliArgs.js"

const main = (argv: ReadonlyArray<string>): Effect.Effect<number> =>
  Effect.gen(function*() {
    const command = parse(argv)
    if (Either.isLeft(command)) {
      yield* Console.error(`cachekit: ${command.left.message}`)
      return 2
    }
    switch (command.right._tag) {
      case "Help": {
        yield* Console.log(helpText())
        return 0
      }
      case "Version": {
        yield* Console.log(version())
        return 0
      }
      case "Proxy": {
        // `--instances N`: this process only supervises the workers and loads nothing else.
        const cluster = yield* Effect.promise(() => import("../internal/proxyCluster.js"))
        const primary = yield* cluster.runIfPrimary(command.right.settings)
        if (Option.isSome(primary)) return primary.value
        // Loaded only now: help and usage errors answer without loading servers and backends.
        const cli = yield* Effect.promise(() => import("../internal/cli.js"))
        return yield* cli.runProxyCommand(command.right.settings)
      }
    }
  })

runMain(main(process.argv.slice(2)), {
  disableErrorReporting: true,
  // exit code from `main`; an interrupt (SIGINT/SIGTERM, after draining) is a clean stop
  teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) ? Number(exit.value) : Exit.isInterrupted(exit) ? 0 : 1)
})

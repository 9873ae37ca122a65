#!/usr/bin/env node
/**
 * `cachekit proxy [flags]`: the caching reverse proxy. `cachekit --help` lists the flags; each one
 * can also be given as a `CACHEKIT_*` environment variable.
 *
 * @since 0.1.0
 */
import { NodeRuntime } from "@effect/platform-node"
import { Exit } from "effect"
import { main } from "../internal/cli.js"

NodeRuntime.runMain(main(process.argv.slice(2)), {
  disableErrorReporting: true,
  // exit code from `main`; an interrupt (SIGINT/SIGTERM after draining) is a clean stop
  teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) ? Number(exit.value) : Exit.isInterrupted(exit) ? 0 : 1)
})

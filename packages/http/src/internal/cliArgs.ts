/**
 * Argument parsing of the `cachekit` command: a small typed parser (no dependency). Every flag is
 * the name of a `CACHEKIT_*` setting; parsed flags become a `ConfigProvider` that wins over the
 * environment, so flags and env go through the same `Config` descriptions.
 *
 * @internal
 */
import { ConfigProvider, Data, Either } from "effect"
import { readFileSync } from "node:fs"
import { parseDurationMillis, parseSize } from "./units.js"

export { parseSize }

/** A command line the parser rejects, with a message meant for the user. */
export class CliError extends Data.TaggedError("CliError")<{
  readonly reason: "UnknownCommand" | "UnknownFlag" | "MissingValue" | "InvalidValue" | "UnexpectedArgument"
  readonly flag?: string | undefined
  readonly message: string
}> {}

type ValueKind =
  | "url"
  | "port"
  | "size"
  | "duration"
  | "text"
  | "list"
  | "backend"
  | "bus"
  | "singleFlight"
  | "boolean"
  | "path"
  | "instances"

export interface FlagSpec {
  /** The setting this flag sets. */
  readonly env: string
  /** What the value is; omitted for switches without value. */
  readonly kind: ValueKind
  readonly placeholder: string
  readonly help: string
}

export const BACKENDS = [
  "memory+disk",
  "memory+redis",
  "memory+memcached",
  "memory",
  "disk",
  "redis",
  "memcached",
  "none"
] as const
export type BackendKind = typeof BACKENDS[number]

export const BUSES = ["auto", "redis", "none"] as const
export type BusKind = typeof BUSES[number]

export const SINGLE_FLIGHTS = ["auto", "redis", "none"] as const
export type SingleFlightKind = typeof SINGLE_FLIGHTS[number]

/** Flags of `cachekit proxy`, in help order. */
export const proxyFlags: Readonly<Record<string, FlagSpec>> = {
  upstream: {
    env: "CACHEKIT_UPSTREAM",
    kind: "url",
    placeholder: "URL",
    help: "origin to forward to (default: start the embedded demo origin)"
  },
  port: { env: "CACHEKIT_PORT", kind: "port", placeholder: "N", help: "port to listen on, 0 = any (default 3128)" },
  host: { env: "CACHEKIT_HOST", kind: "text", placeholder: "ADDR", help: "address to listen on (default 127.0.0.1)" },
  instances: {
    env: "CACHEKIT_INSTANCES",
    kind: "instances",
    placeholder: "N|auto",
    help: "worker processes sharing the port (node:cluster; 0 or auto = one per CPU; default 1); needs a " +
      "shared backend (redis, memcached, memory+redis; memory+memcached with --bus redis)"
  },
  backend: {
    env: "CACHEKIT_BACKEND",
    kind: "backend",
    placeholder: "KIND",
    help: `${BACKENDS.join(", ")} (default memory+disk: a memory L1 over a disk L2; none = forward only)`
  },
  "l1-max-entry-size": {
    env: "CACHEKIT_L1_MAX_ENTRY_SIZE",
    kind: "size",
    placeholder: "SIZE",
    help: "largest entry the memory L1 of memory+* takes; larger ones live in L2 only (default 1MiB)"
  },
  bus: {
    env: "CACHEKIT_BUS",
    kind: "bus",
    placeholder: BUSES.join("|"),
    help: "invalidation bus between proxy instances (default auto: redis pub/sub with memory+redis)"
  },
  "single-flight": {
    env: "CACHEKIT_SINGLE_FLIGHT",
    kind: "singleFlight",
    placeholder: SINGLE_FLIGHTS.join("|"),
    help: "one origin request per missed key across processes sharing the L2, by a Redis lock " +
      "(default auto: on with redis and memory+redis)"
  },
  "memory-max-bytes": {
    env: "CACHEKIT_MEMORY_MAX_BYTES",
    kind: "size",
    placeholder: "SIZE",
    help: "memory backend bound (default 64MiB)"
  },
  "disk-dir": {
    env: "CACHEKIT_DISK_DIR",
    kind: "text",
    placeholder: "DIR",
    help: "disk directory (default ./.cachekit; a temp dir removed on exit when no --upstream)"
  },
  "redis-url": {
    env: "CACHEKIT_REDIS_URL",
    kind: "url",
    placeholder: "URL",
    help: "Redis server (default redis://127.0.0.1:6379)"
  },
  "memcached-servers": {
    env: "CACHEKIT_MEMCACHED_SERVERS",
    kind: "list",
    placeholder: "H:P,...",
    help: "Memcached servers (default 127.0.0.1:11211)"
  },
  "max-body-size": {
    env: "CACHEKIT_MAX_BODY_SIZE",
    kind: "size",
    placeholder: "SIZE",
    help: "largest body stored (larger ones pass through; default 16MiB)"
  },
  "max-ttl": {
    env: "CACHEKIT_MAX_TTL",
    kind: "duration",
    placeholder: "DURATION",
    help: "cap on any freshness lifetime"
  },
  "cache-status-name": {
    env: "CACHEKIT_CACHE_STATUS_NAME",
    kind: "text",
    placeholder: "NAME",
    help: "cache name in Cache-Status (default cachekit)"
  },
  "targeted-cache-control": {
    env: "CACHEKIT_TARGETED_CACHE_CONTROL",
    kind: "list",
    placeholder: "FIELD,...",
    help: "RFC 9213 fields honoured over Cache-Control (default CDN-Cache-Control)"
  },
  "strip-targeted-cache-control": {
    env: "CACHEKIT_STRIP_TARGETED_CACHE_CONTROL",
    kind: "boolean",
    placeholder: "true|false",
    help: "remove those fields from responses (this proxy is the last CDN-like hop)"
  },
  admin: {
    env: "CACHEKIT_ADMIN",
    kind: "boolean",
    placeholder: "[true|false]",
    help: "serve the admin API (tokens: CACHEKIT_ADMIN_TOKEN, CACHEKIT_ADMIN_READ_TOKEN)"
  },
  "admin-prefix": {
    env: "CACHEKIT_ADMIN_PREFIX",
    kind: "path",
    placeholder: "PATH",
    help: "where the admin API answers on the proxy port (default /_cachekit)"
  },
  "admin-port": {
    env: "CACHEKIT_ADMIN_PORT",
    kind: "port",
    placeholder: "N",
    help: "serve the admin API on its own port instead (0 = any; host CACHEKIT_ADMIN_HOST, default 127.0.0.1)"
  },
  "upstream-timeout": {
    env: "CACHEKIT_UPSTREAM_TIMEOUT",
    kind: "duration",
    placeholder: "DURATION",
    help: "wait for the upstream's response head, then 504 (default 30s)"
  },
  "shutdown-grace": {
    env: "CACHEKIT_SHUTDOWN_GRACE",
    kind: "duration",
    placeholder: "DURATION",
    help: "time in-flight requests get on shutdown (default 10s)"
  }
}

/** What the command line asks for. */
export type Command =
  | { readonly _tag: "Help" }
  | { readonly _tag: "Version" }
  | { readonly _tag: "Proxy"; readonly settings: ReadonlyMap<string, string> }

const BOOLEAN_WORDS = ["true", "yes", "on", "1", "false", "no", "off", "0"]

/** Checks one value; returns the normalised setting or a message. */
const checkValue = (spec: FlagSpec, value: string): Either.Either<string, string> => {
  switch (spec.kind) {
    case "url": {
      return URL.canParse(value) ? Either.right(value) : Either.left(`"${value}" is not an absolute URL`)
    }
    case "port": {
      const port = /^\d+$/.test(value) ? Number(value) : Number.NaN
      return port >= 0 && port <= 65535
        ? Either.right(String(port))
        : Either.left(`"${value}" is not a port (0-65535)`)
    }
    case "size": {
      const bytes = parseSize(value)
      return bytes === undefined || bytes <= 0
        ? Either.left(`"${value}" is not a size (examples: 1048576, 512k, 64MiB)`)
        : Either.right(String(bytes))
    }
    case "duration": {
      return parseDurationMillis(value) === undefined
        ? Either.left(`"${value}" is not a duration (examples: 500ms, 5s, 2m)`)
        : Either.right(value)
    }
    case "backend": {
      return (BACKENDS as ReadonlyArray<string>).includes(value)
        ? Either.right(value)
        : Either.left(`"${value}" is not one of ${BACKENDS.join(", ")}`)
    }
    case "bus": {
      return (BUSES as ReadonlyArray<string>).includes(value)
        ? Either.right(value)
        : Either.left(`"${value}" is not one of ${BUSES.join(", ")}`)
    }
    case "singleFlight": {
      return (SINGLE_FLIGHTS as ReadonlyArray<string>).includes(value)
        ? Either.right(value)
        : Either.left(`"${value}" is not one of ${SINGLE_FLIGHTS.join(", ")}`)
    }
    case "instances": {
      return value === "auto" || (/^\d+$/.test(value) && Number(value) <= 1024)
        ? Either.right(value === "auto" ? "0" : String(Number(value)))
        : Either.left(`"${value}" is not a number of processes (1-1024, or 0 / auto = one per CPU)`)
    }
    case "path": {
      return /^\/[A-Za-z0-9._~/-]*[A-Za-z0-9._~-]$/.test(value) &&
          !value.split("/").some((s) => s === "." || s === "..")
        ? Either.right(value)
        : Either.left(`"${value}" is not a path such as /_cachekit`)
    }
    case "boolean": {
      const lower = value.toLowerCase()
      return ["true", "yes", "on", "1"].includes(lower)
        ? Either.right("true")
        : ["false", "no", "off", "0"].includes(lower)
        ? Either.right("false")
        : Either.left(`"${value}" is not true or false`)
    }
    case "list":
    case "text": {
      return value.trim() === "" ? Either.left("the value is empty") : Either.right(value)
    }
  }
}

/**
 * Parses `argv` (without node and the script): `proxy [--flag value | --flag=value]...`,
 * `help`, `--help`, `--version`.
 */
export const parse = (argv: ReadonlyArray<string>): Either.Either<Command, CliError> => {
  const [command, ...rest] = argv
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    return Either.right({ _tag: "Help" })
  }
  if (command === "--version" || command === "-v" || command === "version") return Either.right({ _tag: "Version" })
  if (command !== "proxy") {
    return Either.left(
      new CliError({ reason: "UnknownCommand", message: `unknown command "${command}" (try: cachekit proxy --help)` })
    )
  }
  const settings = new Map<string, string>()
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]!
    if (arg === "--help" || arg === "-h") return Either.right({ _tag: "Help" })
    if (!arg.startsWith("--")) {
      return Either.left(
        new CliError({ reason: "UnexpectedArgument", message: `unexpected argument "${arg}" (flags start with --)` })
      )
    }
    const equals = arg.indexOf("=")
    const name = equals === -1 ? arg.slice(2) : arg.slice(2, equals)
    const spec = proxyFlags[name]
    if (spec === undefined) {
      return Either.left(
        new CliError({
          reason: "UnknownFlag",
          flag: name,
          message: `unknown flag --${name} (cachekit proxy --help lists them)`
        })
      )
    }
    let value: string | undefined
    if (equals !== -1) {
      value = arg.slice(equals + 1)
    } else if (spec.kind === "boolean") {
      // a switch: `--admin` alone means true; a following true/false word is its value
      const next = rest[i + 1]?.toLowerCase()
      if (next !== undefined && BOOLEAN_WORDS.includes(next)) {
        value = next
        i++
      } else {
        value = "true"
      }
    } else {
      const next = rest[i + 1]
      if (next !== undefined && !next.startsWith("--")) {
        value = next
        i++
      }
    }
    if (value === undefined) {
      return Either.left(
        new CliError({
          reason: "MissingValue",
          flag: name,
          message: `--${name} needs a value: --${name} ${spec.placeholder}`
        })
      )
    }
    const checked = checkValue(spec, value)
    if (Either.isLeft(checked)) {
      return Either.left(
        new CliError({ reason: "InvalidValue", flag: name, message: `--${name}: ${checked.left}` })
      )
    }
    settings.set(spec.env, checked.right)
  }
  return Either.right({ _tag: "Proxy", settings })
}

/** The environment with the flags laid over it (one source, so a bad value gives one error). */
export const configProvider = (
  settings: ReadonlyMap<string, string>,
  env: Readonly<Record<string, string | undefined>> = process.env
): ConfigProvider.ConfigProvider => {
  const merged = new Map<string, string>()
  for (const [name, value] of Object.entries(env)) {
    if (value !== undefined) merged.set(name, value)
  }
  for (const [name, value] of settings) merged.set(name, value)
  return ConfigProvider.fromMap(merged)
}

/** The help text. */
export const helpText = (): string => {
  const lines = Object.entries(proxyFlags).map(([name, spec]) =>
    `  --${`${name} ${spec.placeholder}`.padEnd(44)} ${spec.help}\n${" ".repeat(49)}env ${spec.env}`
  )
  return [
    "cachekit: an RFC 9111 caching reverse proxy",
    "",
    "Usage:",
    "  cachekit proxy [flags]       forward to --upstream (or to an embedded demo origin) and cache",
    "  cachekit --help | --version",
    "",
    "Flags (each also read from its environment variable; flags win):",
    ...lines,
    ""
  ].join("\n")
}

/** The package version, for `--version`. */
export const version = (): string => {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: string }
    return pkg.version ?? "unknown"
  } catch {
    return "unknown"
  }
}

/**
 * Bearer-token authentication of the admin API with two roles: `read` (every GET) and `admin`
 * (also invalidate and clear). Tokens come from Config (`CACHEKIT_ADMIN_TOKEN`,
 * `CACHEKIT_ADMIN_READ_TOKEN`) and are compared in constant time over their SHA-256 digests.
 * Anonymous access exists only when enabled explicitly, and even then only for loopback clients.
 *
 * @since 0.1.0
 */
import { Config, ConfigError, Context, Effect, Either, Layer, Option, Redacted } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"

export type Role = "read" | "admin"

export interface AdminAuth {
  /**
   * The role an `Authorization` header grants, or `undefined` when it grants none. `remoteAddress`
   * matters only in anonymous mode (loopback clients only).
   */
  readonly authenticate: (
    authorization: string | undefined,
    remoteAddress: string | undefined
  ) => Role | undefined
  readonly anonymous: boolean
}

export class AdminAuthTag extends Context.Tag("@cachekit/admin/AdminAuth")<AdminAuthTag, AdminAuth>() {}

export interface Options {
  readonly adminToken?: Redacted.Redacted<string> | undefined
  readonly readToken?: Redacted.Redacted<string> | undefined
  /** Serve every request as `admin` to loopback clients without a token (development only). */
  readonly allowAnonymous?: boolean | undefined
}

/** Tokens shorter than this are refused at startup. */
export const MIN_TOKEN_LENGTH = 16

const digest = (s: string): Buffer => createHash("sha256").update(s, "utf8").digest()

/** True for 127.0.0.0/8, ::1 and their IPv4-mapped forms. */
export const isLoopback = (address: string | undefined): boolean => {
  if (address === undefined) return false
  const a = address.toLowerCase().replace(/^::ffff:/, "")
  return a === "::1" || a === "localhost" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a)
}

/** Configuration that cannot be served safely. */
const invalid = (message: string) => ConfigError.InvalidData([], message)

/** Builds the authenticator; fails when no way in is configured or a token is too short. */
export const make = (options: Options): Either.Either<AdminAuth, ConfigError.ConfigError> => {
  const tokens: Array<{ readonly digest: Buffer; readonly role: Role }> = []
  for (const [token, role] of [[options.adminToken, "admin"], [options.readToken, "read"]] as const) {
    if (token === undefined) continue
    const value = Redacted.value(token)
    if (value.length < MIN_TOKEN_LENGTH) {
      return Either.left(invalid(`the ${role} token must have at least ${MIN_TOKEN_LENGTH} characters`))
    }
    tokens.push({ digest: digest(value), role })
  }
  const anonymous = options.allowAnonymous === true
  if (tokens.length === 0 && !anonymous) {
    return Either.left(
      invalid("no admin token configured: set CACHEKIT_ADMIN_TOKEN (and optionally CACHEKIT_ADMIN_READ_TOKEN)")
    )
  }
  if (
    options.adminToken !== undefined && options.readToken !== undefined &&
    timingSafeEqual(digest(Redacted.value(options.adminToken)), digest(Redacted.value(options.readToken)))
  ) {
    return Either.left(invalid("the admin and read tokens must differ"))
  }
  return Either.right({
    anonymous,
    authenticate: (authorization, remoteAddress) => {
      const match = authorization === undefined ? null : /^Bearer[ ]+(\S+)\s*$/i.exec(authorization)
      if (match !== null) {
        const presented = digest(match[1]!)
        let granted: Role | undefined
        // compare against every token (no early exit), each comparison in constant time
        for (const t of tokens) {
          if (timingSafeEqual(presented, t.digest) && granted !== "admin") granted = t.role
        }
        return granted
      }
      if (authorization === undefined && anonymous && isLoopback(remoteAddress)) return "admin"
      return undefined
    }
  })
}

export const layer = (options: Options): Layer.Layer<AdminAuthTag, ConfigError.ConfigError> =>
  Layer.effect(AdminAuthTag, make(options))

/** The options from `CACHEKIT_ADMIN_TOKEN`, `CACHEKIT_ADMIN_READ_TOKEN`, `CACHEKIT_ADMIN_ALLOW_ANONYMOUS`. */
export const config: Config.Config<Options> = Config.all({
  adminToken: Config.option(Config.redacted("CACHEKIT_ADMIN_TOKEN")),
  readToken: Config.option(Config.redacted("CACHEKIT_ADMIN_READ_TOKEN")),
  allowAnonymous: Config.boolean("CACHEKIT_ADMIN_ALLOW_ANONYMOUS").pipe(Config.withDefault(false))
}).pipe(Config.map((c) => ({
  adminToken: Option.getOrUndefined(c.adminToken),
  readToken: Option.getOrUndefined(c.readToken),
  allowAnonymous: c.allowAnonymous
})))

export const layerConfig: Layer.Layer<AdminAuthTag, ConfigError.ConfigError> = Layer.effect(
  AdminAuthTag,
  Effect.flatMap(config, make)
)

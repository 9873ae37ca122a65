import { AdminAuth, AdminServer, AdminTarget, OperationLog } from "@cachekit/admin"
import { MemoryBackend } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Exit, Layer, Redacted } from "effect"

const ADMIN = "admin-token-0123456789abcdef"
const READ = "read-token-0123456789abcdef00"

const auth = (options: AdminAuth.Options) => Either.getOrThrow(AdminAuth.make(options))

describe("AdminAuth", () => {
  const both = auth({ adminToken: Redacted.make(ADMIN), readToken: Redacted.make(READ) })

  it("grants the role of the matching bearer token and nothing otherwise", () => {
    expect(both.authenticate(`Bearer ${ADMIN}`, "127.0.0.1")).toBe("admin")
    expect(both.authenticate(`bearer ${READ}`, "10.1.2.3")).toBe("read")
    expect(both.authenticate(undefined, "127.0.0.1")).toBeUndefined()
    expect(both.authenticate("Bearer ", "127.0.0.1")).toBeUndefined()
    expect(both.authenticate(`Bearer ${ADMIN}x`, "127.0.0.1")).toBeUndefined()
    expect(both.authenticate(ADMIN, "127.0.0.1")).toBeUndefined()
    expect(both.authenticate(`Token ${ADMIN}`, "127.0.0.1")).toBeUndefined()
  })

  it("refuses to start without any token, with a short token, or with equal tokens", () => {
    expect(Either.isLeft(AdminAuth.make({}))).toBe(true)
    expect(Either.isLeft(AdminAuth.make({ adminToken: Redacted.make("short") }))).toBe(true)
    expect(Either.isLeft(AdminAuth.make({ adminToken: Redacted.make(ADMIN), readToken: Redacted.make(ADMIN) })))
      .toBe(true)
  })

  it("anonymous mode admits loopback clients only, and never overrides a wrong token", () => {
    const anon = auth({ allowAnonymous: true })
    expect(anon.authenticate(undefined, "127.0.0.1")).toBe("admin")
    expect(anon.authenticate(undefined, "::1")).toBe("admin")
    expect(anon.authenticate(undefined, "::ffff:127.0.0.1")).toBe("admin")
    expect(anon.authenticate(undefined, "192.168.1.5")).toBeUndefined()
    expect(anon.authenticate(undefined, undefined)).toBeUndefined()
    expect(anon.authenticate("Bearer nope-nope-nope-nope", "127.0.0.1")).toBeUndefined()
  })

  it.effect("reads tokens from CACHEKIT_ADMIN_TOKEN and CACHEKIT_ADMIN_READ_TOKEN and keeps them redacted", () =>
    Effect.gen(function*() {
      const options = yield* AdminAuth.config
      expect(String(options.adminToken)).not.toContain(ADMIN)
      const a = yield* AdminAuth.AdminAuthTag
      expect(a.authenticate(`Bearer ${READ}`, "127.0.0.1")).toBe("read")
      expect(a.anonymous).toBe(false)
    }).pipe(
      Effect.provide(AdminAuth.layerConfig),
      Effect.withConfigProvider(ConfigProvider.fromMap(
        new Map([["CACHEKIT_ADMIN_TOKEN", ADMIN], ["CACHEKIT_ADMIN_READ_TOKEN", READ]])
      ))
    ))

  it.effect("fails the config layer when no token is set", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Effect.provide(AdminAuth.AdminAuthTag, AdminAuth.layerConfig))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toContain("CACHEKIT_ADMIN_TOKEN")
    }).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map()))))

  it.scopedLive("the admin server refuses anonymous mode on a non-loopback address", () =>
    Effect.gen(function*() {
      const backend = yield* MemoryBackend.make({})
      const exit = yield* Effect.exit(Layer.build(
        AdminServer.layer({ port: 0, host: "0.0.0.0" }).pipe(
          Layer.provide(Layer.succeed(AdminTarget.AdminTargetTag, AdminTarget.fromBackend(backend))),
          Layer.provide(AdminAuth.layer({ allowAnonymous: true })),
          Layer.provide(OperationLog.layer({ write: () => Effect.void }))
        )
      ))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toContain("only allowed on loopback")
    }).pipe(Effect.timeout("10 seconds")))
})

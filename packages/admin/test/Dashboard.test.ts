/**
 * End-to-end test of the dashboard page in headless Chromium (Debian's `chromium` package driven by
 * playwright-core). Skipped with a message when /usr/bin/chromium is absent, unless
 * CACHEKIT_REQUIRE_BROWSER=1, which turns a missing browser into a failure (CI sets it).
 */
import { Dashboard } from "@cachekit/admin"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { existsSync } from "node:fs"
import type { Browser, Page } from "playwright-core"
import { ADMIN_TOKEN, exists, harness, HarnessTag, READ_TOKEN, seed } from "./fixtures.js"

const CHROMIUM = process.env.CACHEKIT_CHROMIUM ?? "/usr/bin/chromium"
const required = process.env.CACHEKIT_REQUIRE_BROWSER === "1"
const available = existsSync(CHROMIUM)
if (!available && !required) {
  console.warn(
    `Dashboard browser tests skipped: ${CHROMIUM} not found. Install it with \`apt-get install -y chromium\`, ` +
      "or set CACHEKIT_REQUIRE_BROWSER=1 to make its absence a failure."
  )
}

const launch = Effect.acquireRelease(
  Effect.promise(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`CACHEKIT_REQUIRE_BROWSER=1 but ${CHROMIUM} is missing: apt-get install -y chromium`)
    }
    const { chromium } = await import("playwright-core")
    return chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync"
      ]
    })
  }),
  (browser: Browser) => Effect.promise(() => browser.close())
)

const text = (page: Page, selector: string) => Effect.promise(() => page.locator(selector).innerText())

/** Page-side expressions are strings: the test project has no DOM types. */
const textOf = (id: string) => `(document.getElementById(${JSON.stringify(id)})?.textContent ?? "")`
const waitFor = (page: Page, expression: string) => Effect.promise(() => page.waitForFunction(expression))

describe("dashboard page", () => {
  it("bakes the mount prefix into the page safely", () => {
    const html = Dashboard.dashboardHtml({ base: "/x</script><script>alert(1)" })
    expect(html).not.toContain("</script><script>alert(1)")
    expect(html).toContain("const BASE = \"/x\\u003c/script>")
  })

  describe.skipIf(!available && !required)("in headless Chromium", () => {
    it.scopedLive(
      "loads, shows numbers that move with traffic, and invalidates a key from the page",
      () =>
        Effect.gen(function*() {
          const h = yield* HarnessTag
          yield* seed(h.backend, "user:1", "alice", ["users"])
          yield* seed(h.backend, "user:2", "bob", ["users"])
          for (let i = 0; i < 5; i++) yield* h.backend.get("user:1")

          const browser = yield* launch
          const page = yield* Effect.promise(() => browser.newPage({ viewport: { width: 1280, height: 900 } }))
          const pageErrors: Array<string> = []
          page.on("pageerror", (e) => pageErrors.push(e.message))
          yield* Effect.promise(() => page.goto(`${h.baseUrl}/dashboard`))
          expect(yield* Effect.promise(() => page.title())).toBe("cachekit admin")

          // the read token is enough to watch
          yield* Effect.promise(() => page.fill("#token", READ_TOKEN))
          yield* Effect.promise(() => page.click("#connect"))
          yield* waitFor(page, `${textOf("hits")} === "5"`)
          expect(yield* text(page, "#misses")).toBe("0")
          expect(yield* text(page, "#entries")).toBe("2")
          yield* waitFor(page, `${textOf("hot-keys")}.includes(${JSON.stringify("user:1")})`)
          expect(yield* text(page, "#tags")).toContain("users")
          expect(yield* text(page, "#tiers")).toContain(h.backend.name)

          // traffic moves the numbers
          for (let i = 0; i < 7; i++) yield* h.backend.get("user:2")
          yield* h.backend.get("nobody")
          yield* waitFor(page, `${textOf("hits")} === "12"`)
          yield* waitFor(page, `${textOf("misses")} === "1"`)
          expect(yield* text(page, "#hit-ratio")).toBe("92.3%")

          // key lookup
          yield* Effect.promise(() => page.fill("#lookup-key", "user:1"))
          yield* Effect.promise(() => page.click("#lookup"))
          yield* waitFor(page, `${textOf("lookup-result")}.includes(${JSON.stringify("\"size\"")})`)
          expect(yield* text(page, "#lookup-result")).toContain("\"users\"")

          // the read token cannot invalidate
          yield* Effect.promise(() => page.fill("#invalidate-key", "user:1"))
          yield* Effect.promise(() => page.click("#invalidate"))
          yield* waitFor(page, `${textOf("invalidate-result")}.includes(${JSON.stringify("needs the admin token")})`)
          expect(yield* exists(h.backend, "user:1")).toBe(true)

          // with the admin token the key goes
          yield* Effect.promise(() => page.fill("#token", ADMIN_TOKEN))
          yield* Effect.promise(() => page.click("#connect"))
          yield* Effect.promise(() => page.click("#invalidate"))
          yield* waitFor(page, `${textOf("invalidate-result")} === "removed 1"`)
          expect(yield* exists(h.backend, "user:1")).toBe(false)
          yield* waitFor(page, `${textOf("entries")} === "1"`)

          // the token is kept in memory only
          const stored = yield* Effect.promise(() =>
            page.evaluate<string>(
              "JSON.stringify([localStorage.length, sessionStorage.length, document.cookie, location.href])"
            )
          )
          expect(stored).not.toContain(ADMIN_TOKEN)
          expect(yield* Effect.promise(() => page.inputValue("#token"))).toBe("")

          yield* Effect.promise(() => page.screenshot({ path: "/tmp/cachekit-admin-dashboard.png", fullPage: true }))
          expect(pageErrors).toEqual([])
        }).pipe(Effect.provide(harness({ dashboardPollMillis: 250 })), Effect.timeout("60 seconds")),
      { timeout: 90_000 }
    )
  })
})

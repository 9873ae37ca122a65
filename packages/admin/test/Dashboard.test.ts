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

/**
 * Waits through locators, which run in Playwright's own world: the page's CSP forbids eval, so
 * `waitForFunction` with page-side code would be refused (which is the point of the CSP).
 */
const waitText = (page: Page, id: string, text: string | RegExp) =>
  Effect.promise(() => page.locator(`#${id}`, { hasText: text }).waitFor({ timeout: 20_000 }))
const exactly = (text: string) => new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`)

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
          page.on("console", (m) => {
            // CSP violations are reported as console errors ("Refused to ... Content Security Policy")
            if (m.type() === "error" && /Content Security Policy|Refused/.test(m.text())) pageErrors.push(m.text())
          })
          yield* Effect.promise(() => page.goto(`${h.baseUrl}/dashboard`))
          expect(yield* Effect.promise(() => page.title())).toBe("cachekit admin")

          // the read token is enough to watch
          yield* Effect.promise(() => page.fill("#token", READ_TOKEN))
          yield* Effect.promise(() => page.click("#connect"))
          yield* waitText(page, "hits", exactly("5"))
          expect(yield* text(page, "#misses")).toBe("0")
          expect(yield* text(page, "#entries")).toBe("2")
          yield* waitText(page, "hot-keys", "user:1")
          expect(yield* text(page, "#tags")).toContain("users")
          expect(yield* text(page, "#tiers")).toContain(h.backend.name)

          // traffic moves the numbers
          for (let i = 0; i < 7; i++) yield* h.backend.get("user:2")
          yield* h.backend.get("nobody")
          yield* waitText(page, "hits", exactly("12"))
          yield* waitText(page, "misses", exactly("1"))
          expect(yield* text(page, "#hit-ratio")).toBe("92.3%")

          // key lookup
          yield* Effect.promise(() => page.fill("#lookup-key", "user:1"))
          yield* Effect.promise(() => page.click("#lookup"))
          yield* waitText(page, "lookup-result", "\"size\"")
          expect(yield* text(page, "#lookup-result")).toContain("\"users\"")

          // the read token cannot invalidate
          yield* Effect.promise(() => page.fill("#invalidate-key", "user:1"))
          yield* Effect.promise(() => page.click("#invalidate"))
          yield* waitText(page, "invalidate-result", "needs the admin token")
          expect(yield* exists(h.backend, "user:1")).toBe(true)

          // with the admin token the key goes
          yield* Effect.promise(() => page.fill("#token", ADMIN_TOKEN))
          yield* Effect.promise(() => page.click("#connect"))
          yield* Effect.promise(() => page.click("#invalidate"))
          yield* waitText(page, "invalidate-result", exactly("removed 1"))
          expect(yield* exists(h.backend, "user:1")).toBe(false)
          yield* waitText(page, "entries", exactly("1"))

          // the token is kept in memory only: no cookie, no local storage, not in the URL
          const state = yield* Effect.promise(() => page.context().storageState())
          expect(JSON.stringify(state)).not.toContain(ADMIN_TOKEN)
          expect(page.url()).not.toContain(ADMIN_TOKEN)
          expect(yield* Effect.promise(() => page.inputValue("#token"))).toBe("")

          yield* Effect.promise(() => page.screenshot({ path: "/tmp/cachekit-admin-dashboard.png", fullPage: true }))
          expect(pageErrors).toEqual([])
        }).pipe(Effect.provide(harness({ dashboardPollMillis: 250 })), Effect.timeout("60 seconds")),
      { timeout: 90_000 }
    )
  })
})

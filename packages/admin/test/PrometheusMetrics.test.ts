import { PrometheusMetrics } from "@cachekit/admin"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Metric, MetricBoundaries, MetricKey, MetricPair, MetricState, Option } from "effect"
import { ADMIN_TOKEN, bearer, harness, HarnessTag, raw, READ_TOKEN, seed } from "./fixtures.js"

const pair = (key: MetricKey.MetricKey.Untyped, state: MetricState.MetricState.Untyped) =>
  MetricPair.unsafeMake(key, state)

describe("Prometheus text format", () => {
  it("renders counters and gauges with labels under one TYPE line per name", () => {
    const text = PrometheusMetrics.render([
      pair(
        MetricKey.counter("hits_total", { description: "hits" }).pipe(MetricKey.tagged("tier", "l1")),
        MetricState.counter(3)
      ),
      pair(
        MetricKey.counter("hits_total", { description: "hits" }).pipe(MetricKey.tagged("tier", "l2")),
        MetricState.counter(4)
      ),
      pair(MetricKey.gauge("entries"), MetricState.gauge(7))
    ])
    expect(text).toBe(
      "# HELP hits_total hits\n# TYPE hits_total counter\nhits_total{tier=\"l1\"} 3\nhits_total{tier=\"l2\"} 4\n" +
        "# TYPE entries gauge\nentries 7\n"
    )
  })

  it("renders histograms as cumulative buckets with +Inf, sum and count", () => {
    const key = MetricKey.histogram("latency_seconds", MetricBoundaries.fromIterable([0.1, 1]))
    const state = MetricState.histogram({ buckets: [[0.1, 2], [1, 5]], count: 6, min: 0.01, max: 3, sum: 4.5 })
    const text = PrometheusMetrics.render([pair(key, state)])
    expect(text).toBe(
      "# TYPE latency_seconds histogram\n" +
        "latency_seconds_bucket{le=\"0.1\"} 2\nlatency_seconds_bucket{le=\"1\"} 5\nlatency_seconds_bucket{le=\"+Inf\"} 6\n" +
        "latency_seconds_sum 4.5\nlatency_seconds_count 6\n"
    )
  })

  it("renders a real Effect histogram with its own +Inf boundary once", () =>
    Effect.gen(function*() {
      const h = Metric.histogram("test_real_histogram", MetricBoundaries.linear({ start: 1, width: 1, count: 3 }))
      yield* Metric.update(h, 0.5)
      yield* Metric.update(h, 2.5)
      yield* Metric.update(h, 99)
      const text = yield* PrometheusMetrics.snapshotText
      const lines = text.split("\n").filter((l) => l.startsWith("test_real_histogram_bucket"))
      expect(lines.filter((l) => l.includes("+Inf"))).toHaveLength(1)
      expect(lines.at(-1)).toBe("test_real_histogram_bucket{le=\"+Inf\"} 3")
      expect(lines[0]).toBe("test_real_histogram_bucket{le=\"1\"} 1")
      expect(text).toContain("test_real_histogram_count 3")
      expect(text).toContain("test_real_histogram_sum 102")
    }))

  it("escapes label values and help, and sanitizes names", () => {
    const key = MetricKey.counter("cache.hits-total", { description: "line1\nback\\slash" }).pipe(
      MetricKey.tagged("key", "a\"b\\c\nd"),
      MetricKey.tagged("0bad-label", "x")
    )
    const text = PrometheusMetrics.render([pair(key, MetricState.counter(1))])
    expect(text).toContain("# HELP cache_hits_total line1\\nback\\\\slash\n")
    expect(text).toContain("cache_hits_total{key=\"a\\\"b\\\\c\\nd\",_0bad_label=\"x\"} 1")
  })

  it("renders summaries with quantiles and frequencies as one series per value", () => {
    const text = PrometheusMetrics.render([
      pair(
        MetricKey.summary({ name: "size", maxAge: "1 minute", maxSize: 10, error: 0.01, quantiles: [0.5] }),
        MetricState.summary({ error: 0.01, quantiles: [[0.5, Option.some(3)]], count: 2, min: 1, max: 5, sum: 6 })
      ),
      pair(MetricKey.frequency("status"), MetricState.frequency(new Map([["200", 4], ["404", 1]])))
    ])
    expect(text).toContain("# TYPE size summary\nsize{quantile=\"0.5\"} 3\nsize_sum 6\nsize_count 2\n")
    expect(text).toContain("status{key=\"200\"} 4\nstatus{key=\"404\"} 1\n")
  })

  it("formats non-finite numbers the Prometheus way", () => {
    expect(PrometheusMetrics.formatNumber(Number.POSITIVE_INFINITY)).toBe("+Inf")
    expect(PrometheusMetrics.formatNumber(Number.NEGATIVE_INFINITY)).toBe("-Inf")
    expect(PrometheusMetrics.formatNumber(Number.NaN)).toBe("NaN")
    expect(PrometheusMetrics.formatNumber(10n)).toBe("10")
  })
})

describe("/metrics", () => {
  it.scopedLive("needs a token by default and then exposes admin and tier metrics", () =>
    Effect.gen(function*() {
      const h = yield* HarnessTag
      yield* seed(h.backend, "a")
      yield* h.backend.get("a")
      expect((yield* raw({ port: h.port, path: "/admin/metrics" })).status).toBe(401)
      yield* raw({ port: h.port, path: "/admin/stats", headers: bearer(ADMIN_TOKEN) })
      const res = yield* raw({ port: h.port, path: "/admin/metrics", headers: bearer(READ_TOKEN) })
      expect(res.status).toBe(200)
      expect(res.headers["content-type"]).toContain("text/plain; version=0.0.4")
      expect(res.body).toContain("# TYPE cachekit_admin_requests_total counter")
      expect(res.body).toMatch(/cachekit_admin_requests_total\{route="\/stats",status="200"\} [1-9]/)
      expect(res.body).toContain(`cachekit_tier_hits{tier="${h.backend.name}"} 1`)
      expect(res.body).toContain(`cachekit_tier_entries{tier="${h.backend.name}"} 1`)
      expect(res.body).toContain("cachekit_admin_request_duration_seconds_bucket{route=\"/stats\",le=\"+Inf\"}")
    }).pipe(Effect.provide(harness()), Effect.timeout("15 seconds")))

  it.scopedLive("is served without a token when configured public", () =>
    Effect.gen(function*() {
      const h = yield* HarnessTag
      const res = yield* raw({ port: h.port, path: "/admin/metrics" })
      expect(res.status).toBe(200)
      expect(res.body).toContain("cachekit_hit_ratio")
      // the rest of the API still needs a token
      expect((yield* raw({ port: h.port, path: "/admin/stats" })).status).toBe(401)
    }).pipe(Effect.provide(harness({ publicMetrics: true })), Effect.timeout("15 seconds")))
})

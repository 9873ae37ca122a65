/**
 * Prometheus text exposition (format 0.0.4) of Effect `Metric`s: counters, gauges, histograms
 * (cumulative `_bucket{le=...}`, `_sum`, `_count`), summaries (quantiles) and frequencies (one series
 * per observed value), with metric and label names sanitized and label values escaped.
 *
 * @example
 * ```ts
 * const text = yield* PrometheusMetrics.snapshotText
 * // # TYPE cachekit_hits_total counter
 * // cachekit_hits_total{tier="l1"} 42
 * ```
 *
 * @since 0.1.0
 */
import type { MetricPair } from "effect"
import { Effect, Metric, MetricState, Option } from "effect"

/** The content type Prometheus scrapers expect for this format. */
export const contentType = "text/plain; version=0.0.4; charset=utf-8"

/** Metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`; anything else becomes `_`. */
export const metricName = (name: string): string => {
  const cleaned = name.replace(/[^a-zA-Z0-9_:]/g, "_")
  return /^[a-zA-Z_:]/.test(cleaned) ? cleaned : `_${cleaned}`
}

/** Label names: `[a-zA-Z_][a-zA-Z0-9_]*`, never starting with `__` (reserved). */
export const labelName = (name: string): string => {
  let cleaned = name.replace(/[^a-zA-Z0-9_]/g, "_")
  if (!/^[a-zA-Z_]/.test(cleaned)) cleaned = `_${cleaned}`
  return cleaned.startsWith("__") ? `x${cleaned}` : cleaned
}

/** Label values escape backslash, double quote and newline. */
export const escapeLabelValue = (value: string): string =>
  value.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")

const escapeHelp = (text: string): string => text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")

export const formatNumber = (n: number | bigint): string => {
  if (typeof n === "bigint") return n.toString()
  if (Number.isNaN(n)) return "NaN"
  if (n === Number.POSITIVE_INFINITY) return "+Inf"
  if (n === Number.NEGATIVE_INFINITY) return "-Inf"
  return String(n)
}

const labelsText = (labels: ReadonlyArray<readonly [string, string]>): string =>
  labels.length === 0
    ? ""
    : `{${labels.map(([k, v]) => `${labelName(k)}="${escapeLabelValue(v)}"`).join(",")}}`

type Family = {
  type: "counter" | "gauge" | "histogram" | "summary"
  help: string | undefined
  lines: Array<string>
}

/** Renders metric pairs as Prometheus text; series of one name are grouped under one TYPE line. */
export const render = (pairs: Iterable<MetricPair.MetricPair.Untyped>): string => {
  const families = new Map<string, Family>()
  const familyFor = (name: string, type: Family["type"], help: string | undefined): Family | undefined => {
    const existing = families.get(name)
    if (existing !== undefined) return existing.type === type ? existing : undefined // conflicting types: skip
    const created: Family = { type, help, lines: [] }
    families.set(name, created)
    return created
  }
  for (const pair of pairs) {
    const key = pair.metricKey
    const name = metricName(key.name)
    const help = Option.getOrUndefined(key.description)
    const labels = key.tags.map((t) => [t.key, t.value] as const)
    const state = pair.metricState
    if (MetricState.isCounterState(state)) {
      familyFor(name, "counter", help)?.lines.push(`${name}${labelsText(labels)} ${formatNumber(state.count)}`)
    } else if (MetricState.isGaugeState(state)) {
      familyFor(name, "gauge", help)?.lines.push(`${name}${labelsText(labels)} ${formatNumber(state.value)}`)
    } else if (MetricState.isHistogramState(state)) {
      const family = familyFor(name, "histogram", help)
      if (family === undefined) continue
      let sawInf = false
      for (const [boundary, cumulative] of state.buckets) {
        if (boundary === Number.POSITIVE_INFINITY) sawInf = true
        family.lines.push(
          `${name}_bucket${labelsText([...labels, ["le", formatNumber(boundary)]])} ${formatNumber(cumulative)}`
        )
      }
      if (!sawInf) {
        family.lines.push(`${name}_bucket${labelsText([...labels, ["le", "+Inf"]])} ${formatNumber(state.count)}`)
      }
      family.lines.push(`${name}_sum${labelsText(labels)} ${formatNumber(state.sum)}`)
      family.lines.push(`${name}_count${labelsText(labels)} ${formatNumber(state.count)}`)
    } else if (MetricState.isSummaryState(state)) {
      const family = familyFor(name, "summary", help)
      if (family === undefined) continue
      for (const [quantile, value] of state.quantiles) {
        family.lines.push(
          `${name}${labelsText([...labels, ["quantile", formatNumber(quantile)]])} ${
            formatNumber(Option.getOrElse(value, () => Number.NaN))
          }`
        )
      }
      family.lines.push(`${name}_sum${labelsText(labels)} ${formatNumber(state.sum)}`)
      family.lines.push(`${name}_count${labelsText(labels)} ${formatNumber(state.count)}`)
    } else if (MetricState.isFrequencyState(state)) {
      const family = familyFor(name, "counter", help)
      if (family === undefined) continue
      for (const [value, count] of state.occurrences) {
        family.lines.push(`${name}${labelsText([...labels, ["key", value]])} ${formatNumber(count)}`)
      }
    }
  }
  let out = ""
  for (const [name, family] of families) {
    if (family.help !== undefined) out += `# HELP ${name} ${escapeHelp(family.help)}\n`
    out += `# TYPE ${name} ${family.type}\n`
    for (const line of family.lines) out += line + "\n"
  }
  return out
}

/** The text of every metric registered in this process right now. */
export const snapshotText: Effect.Effect<string> = Effect.map(Metric.snapshot, render)

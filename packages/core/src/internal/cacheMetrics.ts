/**
 * The metric keys of `Cache`: `Cache.metrics` is built from them, and each cache builds its own
 * metrics from them with its `cache` label baked into the key (no label work per update).
 *
 * @internal
 */
import { MetricKey } from "effect"

const counterKey = (name: string, description: string) => MetricKey.counter(name, { description, incremental: true })

export const hits = counterKey("cachekit_cache_hits_total", "Fresh values served")
export const misses = counterKey("cachekit_cache_misses_total", "Lookups that found no usable value")
export const staleServed = counterKey("cachekit_cache_stale_served_total", "Stale values served")
export const computes = counterKey("cachekit_cache_computes_total", "Computes started")
export const computeErrors = counterKey("cachekit_cache_compute_errors_total", "Computes that failed")
export const backgroundRefreshes = counterKey(
  "cachekit_cache_background_refreshes_total",
  "Refreshes started in the background (grace, refresh-ahead)"
)
export const backendErrors = counterKey("cachekit_cache_backend_errors_total", "Backend failures absorbed")
export const evictions = MetricKey.gauge("cachekit_cache_evictions", {
  description: "Evictions reported by the backend"
})

/**
 * @cachekit/admin: the admin REST API (HttpApi), bearer-token auth, Prometheus metrics, a structured
 * operation log and a live dashboard page.
 *
 * @module @cachekit/admin
 * @since 0.1.0
 */
export * as AdminApi from "./AdminApi.js"
export * as AdminAuth from "./AdminAuth.js"
export * as AdminServer from "./AdminServer.js"
export * as AdminTarget from "./AdminTarget.js"
export * as Dashboard from "./Dashboard.js"
export * as OperationLog from "./OperationLog.js"
export * as PrometheusMetrics from "./PrometheusMetrics.js"

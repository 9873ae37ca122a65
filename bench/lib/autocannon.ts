/** The part of autocannon's API the HTTP benches use, typed (the package ships no types). */
import { createRequire } from "node:module"

export interface AutocannonResult {
  readonly requests: { readonly average: number }
  readonly latency: { readonly p50: number; readonly p99: number }
  readonly errors: number
  readonly non2xx: number
}

export const autocannon = createRequire(import.meta.url)("autocannon") as (options: {
  readonly url: string
  readonly connections: number
  readonly duration: number
  readonly pipelining: number
}) => Promise<AutocannonResult>

/**
 * A circuit breaker as a plain state machine (no Effect inside): the tier read path asks it
 * whether to call a backend, and tells it how the call went. Times are the caller's `Clock`
 * readings, so TestClock drives every transition.
 *
 * closed    -> calls pass; `failureThreshold` consecutive failures open the circuit.
 * open      -> calls are skipped until `resetAfterMillis` has passed since opening.
 * half-open -> exactly one probe call is let through; success closes, failure re-opens.
 *
 * @internal
 */

export type BreakerState = "closed" | "open" | "half-open"

export interface BreakerOptions {
  readonly failureThreshold: number
  readonly resetAfterMillis: number
}

/** What the caller should do with the next call. */
export type BreakerDecision = "call" | "probe" | "skip"

export class CircuitBreaker {
  state: BreakerState = "closed"
  consecutiveFailures = 0
  openedAt = 0
  /** How many times the circuit opened (a counter for stats). */
  opened = 0
  private probing = false

  constructor(readonly options: BreakerOptions) {}

  decide(now: number): BreakerDecision {
    if (this.state === "closed") return "call"
    if (this.state === "open") {
      if (now - this.openedAt < this.options.resetAfterMillis) return "skip"
      this.state = "half-open"
      this.probing = false
    }
    // half-open: one probe at a time; the others skip until it settles
    if (this.probing) return "skip"
    this.probing = true
    return "probe"
  }

  onSuccess(): void {
    this.consecutiveFailures = 0
    this.probing = false
    this.state = "closed"
  }

  onFailure(now: number): void {
    this.probing = false
    if (this.state === "half-open") {
      this.open(now)
      return
    }
    this.consecutiveFailures++
    if (this.state === "closed" && this.consecutiveFailures >= this.options.failureThreshold) this.open(now)
  }

  /** A probe that neither succeeded nor failed (interrupted): let the next call probe again. */
  onAbandon(): void {
    this.probing = false
  }

  private open(now: number): void {
    this.state = "open"
    this.openedAt = now
    this.opened++
  }
}

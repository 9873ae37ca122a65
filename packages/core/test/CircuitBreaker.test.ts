import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { CircuitBreaker } from "../src/internal/circuitBreaker.js"

describe("CircuitBreaker", () => {
  it("opens after N consecutive failures, skips until the reset delay, then lets one probe through", () => {
    const breaker = new CircuitBreaker({ failureThreshold: 3, resetAfterMillis: 1000 })
    breaker.onFailure(0)
    breaker.onFailure(1)
    expect(breaker.decide(2)).toBe("call")
    breaker.onFailure(2)
    expect(breaker.state).toBe("open")
    expect(breaker.decide(500)).toBe("skip")
    expect(breaker.decide(1002)).toBe("probe")
    // only one probe at a time
    expect(breaker.decide(1003)).toBe("skip")
    breaker.onSuccess()
    expect(breaker.state).toBe("closed")
    expect(breaker.decide(1004)).toBe("call")
  })

  it("a success in between resets the failure count", () => {
    const breaker = new CircuitBreaker({ failureThreshold: 2, resetAfterMillis: 1000 })
    breaker.onFailure(0)
    breaker.onSuccess()
    breaker.onFailure(1)
    expect(breaker.state).toBe("closed")
  })

  it("a failed probe re-opens for another full delay; an abandoned probe lets the next call probe", () => {
    const breaker = new CircuitBreaker({ failureThreshold: 1, resetAfterMillis: 1000 })
    breaker.onFailure(0)
    expect(breaker.decide(1000)).toBe("probe")
    breaker.onFailure(1000)
    expect(breaker.state).toBe("open")
    expect(breaker.decide(1999)).toBe("skip")
    expect(breaker.decide(2000)).toBe("probe")
    breaker.onAbandon()
    expect(breaker.decide(2001)).toBe("probe")
    expect(breaker.opened).toBe(2)
  })

  it("never calls an open tier before its reset delay, whatever the sequence of outcomes", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ dt: fc.integer({ min: 0, max: 400 }), ok: fc.boolean() }), { maxLength: 200 }),
        (steps) => {
          const breaker = new CircuitBreaker({ failureThreshold: 3, resetAfterMillis: 1000 })
          let now = 0
          for (const { dt, ok } of steps) {
            now += dt
            const wasOpen = breaker.state === "open"
            const openedAt = breaker.openedAt
            const decision = breaker.decide(now)
            if (wasOpen && now - openedAt < 1000) expect(decision).toBe("skip")
            if (decision === "skip") continue
            if (ok) breaker.onSuccess()
            else breaker.onFailure(now)
          }
        }
      )
    )
  })
})

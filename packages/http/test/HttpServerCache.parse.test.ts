import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { ifRangeAllows, parseRange } from "../src/internal/range.js"

describe("HttpServerCache Range parsing", () => {
  it("resolves open, closed and suffix ranges and clamps ends past the size", () => {
    expect(parseRange("bytes=0-4", 10)).toEqual({ _tag: "Ranges", ranges: [{ start: 0, end: 4 }] })
    expect(parseRange("bytes=7-", 10)).toEqual({ _tag: "Ranges", ranges: [{ start: 7, end: 9 }] })
    expect(parseRange("bytes=-3", 10)).toEqual({ _tag: "Ranges", ranges: [{ start: 7, end: 9 }] })
    expect(parseRange("bytes=-30", 10)).toEqual({ _tag: "Ranges", ranges: [{ start: 0, end: 9 }] })
    expect(parseRange("bytes=5-50", 10)).toEqual({ _tag: "Ranges", ranges: [{ start: 5, end: 9 }] })
  })

  it("ignores other units and malformed headers, and reports ranges past the end as unsatisfiable", () => {
    expect(parseRange("items=0-4", 10)._tag).toBe("Whole")
    expect(parseRange("bytes=4-2", 10)._tag).toBe("Whole")
    expect(parseRange("bytes=a-b", 10)._tag).toBe("Whole")
    expect(parseRange("bytes=10-20", 10)._tag).toBe("Unsatisfiable")
    expect(parseRange("bytes=-0", 10)._tag).toBe("Unsatisfiable")
  })

  it("never yields a range outside the representation (property)", () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 1 << 30 }),
      fc.array(
        fc.oneof(
          fc.tuple(fc.nat(), fc.option(fc.nat(), { nil: undefined })).map(([a, b]) =>
            `${a}-${b === undefined ? "" : a + b}`
          ),
          fc.nat().map((n) => `-${n}`)
        ),
        { minLength: 1, maxLength: 5 }
      ),
      (size, specs) => {
        const result = parseRange(`bytes=${specs.join(", ")}`, size)
        if (result._tag !== "Ranges") return true
        return result.ranges.every((r) => r.start >= 0 && r.start <= r.end && r.end < size)
      }
    ))
  })

  it("applies If-Range only for an exactly matching strong ETag or Last-Modified date", () => {
    const date = "Sat, 21 Nov 2026 10:00:00 GMT"
    expect(ifRangeAllows(undefined, undefined, undefined)).toBe(true)
    expect(ifRangeAllows("\"a\"", "\"a\"", undefined)).toBe(true)
    expect(ifRangeAllows("\"a\"", "\"b\"", undefined)).toBe(false)
    expect(ifRangeAllows("W/\"a\"", "W/\"a\"", undefined)).toBe(false)
    expect(ifRangeAllows(date, undefined, date)).toBe(true)
    expect(ifRangeAllows(date, undefined, "Sat, 21 Nov 2026 09:00:00 GMT")).toBe(false)
  })
})

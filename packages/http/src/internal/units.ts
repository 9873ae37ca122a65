/**
 * Durations and sizes as people type them in flags and environment variables.
 *
 * @internal
 */

const UNIT_MILLIS: Readonly<Record<string, number>> = {
  ms: 1,
  millis: 1,
  s: 1000,
  sec: 1000,
  seconds: 1000,
  second: 1000,
  m: 60_000,
  min: 60_000,
  minutes: 60_000,
  minute: 60_000,
  h: 3_600_000,
  hours: 3_600_000,
  hour: 3_600_000
}

/** Milliseconds from "1500", "1500ms", "5s", "5 seconds", "2m"...; `undefined` when not a duration. */
export const parseDurationMillis = (text: string): number | undefined => {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text)
  if (match === null) return undefined
  const amount = Number(match[1])
  const unit = (match[2] ?? "").toLowerCase()
  const factor = unit === "" ? 1 : UNIT_MILLIS[unit]
  return factor === undefined || !Number.isFinite(amount) ? undefined : amount * factor
}

const SIZE_UNITS: Readonly<Record<string, number>> = {
  "": 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3
}

/** Bytes from "1048576", "512k", "64MiB", "1g" (binary units); `undefined` when not a size. */
export const parseSize = (text: string): number | undefined => {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text)
  if (match === null) return undefined
  const factor = SIZE_UNITS[(match[2] ?? "").toLowerCase()]
  if (factor === undefined) return undefined
  const bytes = Math.floor(Number(match[1]) * factor)
  return Number.isSafeInteger(bytes) ? bytes : undefined
}

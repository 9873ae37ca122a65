/**
 * The shared time word behind `CoarseClock`: a worker thread stores `Date.now()` into shared memory
 * every `intervalMillis`, and readers load it instead of calling into the runtime for the time.
 *
 * Layout of the 16-byte shared buffer: a Float64 time at byte 0, an Int32 stop flag at byte 8 that
 * the worker sleeps on. The time is read with a plain element load, not `Atomics.load`: on this
 * engine each `Atomics.load` costs about as much as `Date.now()` itself (measured: one plain load
 * ~3 ns, one `Atomics.load` ~10 ns, `Date.now()` 35-45 ns on a 2-core VM), and `Atomics` has no
 * Float64 form, so an atomic read of a millisecond time would take several loads. An aligned
 * Float64 element is one 64-bit load and store on the platforms Node.js runs on (x64, arm64), so a
 * reader sees either the old or the new time. A stopped or dead writer leaves `NaN`, and readers
 * then take the fallback (`Date.now()`), never a frozen time.
 *
 * @internal
 */
import { Worker } from "node:worker_threads"

const BYTES = 16
const STOP_INDEX = 2 // Int32 index of byte 8

/** The views over one shared buffer: the time, and the stop flag. */
export interface Cells {
  readonly time: Float64Array
  readonly control: Int32Array
}

export const makeCells = (now: number): Cells => {
  const buffer = new SharedArrayBuffer(BYTES)
  const cells = { time: new Float64Array(buffer, 0, 1), control: new Int32Array(buffer) }
  cells.time[0] = now
  return cells
}

/** The stored time, or `fallback()` once the writer is gone. */
export const readTime = (time: Float64Array, fallback: () => number): number => {
  const t = time[0]!
  // NaN (the writer stopped or died) is the only value not equal to itself.
  return t === t ? t : fallback()
}

/** From now on every read takes the fallback (the writer stopped or died: its last value would freeze). */
export const markStopped = (cells: Cells): void => {
  cells.time[0] = Number.NaN
}

// The worker is CommonJS source evaluated in its own thread; it sleeps on the stop flag, so a stop
// request wakes it at once.
const workerSource = `
const { workerData } = require("node:worker_threads")
const time = new Float64Array(workerData.buffer, 0, 1)
const control = new Int32Array(workerData.buffer)
const interval = workerData.intervalMillis
for (;;) {
  time[0] = Date.now()
  if (Atomics.wait(control, ${STOP_INDEX}, 0, interval) !== "timed-out") break
}
`

/**
 * The running writer: `started` resolves once its thread runs (its first store follows at once),
 * `stop` wakes it and resolves once its thread has exited.
 */
export interface TimeWriter {
  readonly cells: Cells
  readonly started: Promise<void>
  readonly stop: () => Promise<void>
  /** Whether the thread is still running (false after `stop` or if it died). */
  readonly running: () => boolean
}

export const startWriter = (intervalMillis: number): TimeWriter => {
  const cells = makeCells(Date.now())
  const worker = new Worker(workerSource, {
    eval: true,
    workerData: { buffer: cells.control.buffer, intervalMillis },
    // A loop around Atomics.wait needs next to no heap: keep the isolate small.
    resourceLimits: { maxOldGenerationSizeMb: 8, maxYoungGenerationSizeMb: 1 },
    stdout: false,
    stderr: false
  })
  let alive = true
  const exited = new Promise<void>((resolve) => {
    worker.once("exit", () => {
      alive = false
      // Whether stopped or crashed, the last stored time would freeze: readers fall back from now on.
      markStopped(cells)
      resolve()
    })
  })
  // An error event is followed by "exit"; listening keeps it from becoming an uncaught exception.
  worker.on("error", () => {})
  const started = new Promise<void>((resolve) => {
    worker.once("online", () => {
      // Once running it never keeps the process alive on its own (held until then so that a
      // caller awaiting the start is not left behind by an exiting process).
      worker.unref()
      resolve()
    })
    void exited.then(() => resolve())
  })
  return {
    cells,
    started,
    running: () => alive,
    stop: () => {
      // Held while stopping, so the process waits for the thread's exit instead of leaving first.
      if (alive) worker.ref()
      Atomics.store(cells.control, STOP_INDEX, 1)
      Atomics.notify(cells.control, STOP_INDEX)
      return exited
    }
  }
}

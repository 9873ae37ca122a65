import { DiskBackend } from "@cachekit/backends"
import { CacheBackend, CacheEntry, type CacheError, MemoryBackend } from "@cachekit/core"
import { describe, expect, it } from "@effect/vitest"
import {
  Chunk,
  Clock,
  ConfigProvider,
  Context,
  Deferred,
  Effect,
  Either,
  Exit,
  Fiber,
  Layer,
  Option,
  Scope,
  Stream,
  TestClock
} from "effect"
import { createHash, randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { tempDir } from "./tempDir.js"

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex")
const contentFile = (dir: string, body: Uint8Array) => {
  const d = sha(body)
  return path.join(dir, "content", "sha256", d.slice(0, 2), d)
}
const listFiles = (dir: string): Promise<Array<string>> =>
  fs.readdir(dir, { recursive: true, withFileTypes: true }).then((entries) =>
    entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name))
  ).catch(() => [])

const body = (size: number, seed = 1) => {
  const b = new Uint8Array(size)
  for (let i = 0; i < size; i++) b[i] = (i * seed + 13) % 256
  return b
}
const entry = (value: Uint8Array, ttl = 60_000) =>
  Effect.map(Clock.currentTimeMillis, (now) => CacheEntry.make({ value, createdAt: now, expiresAt: now + ttl }))

/** Opens the store in `directory` in its own scope, so a test can close and reopen it. */
const open = (options: DiskBackend.Options) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const ctx = yield* Layer.buildWithScope(DiskBackend.layer({ fsync: false, ...options }), scope)
    return { backend: Context.get(ctx, CacheBackend.CacheBackendTag), close: Scope.close(scope, Exit.void) }
  })

const streamingOf = (b: CacheBackend.CacheBackend) => {
  if (b.streaming === undefined) throw new Error("the disk backend streams")
  return b.streaming
}

describe("DiskBackend", () => {
  it.scoped("stores a body shared by two keys once, and deletes it with its last key", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { backend } = yield* open({ directory: dir })
      const shared = body(100_000)
      yield* backend.set("a", yield* entry(shared))
      yield* backend.set("b", yield* entry(shared))
      const files = (yield* Effect.promise(() => listFiles(path.join(dir, "content")))).length
      expect(files).toBe(1)
      yield* backend.delete("a")
      expect(yield* Effect.promise(() => fs.stat(contentFile(dir, shared)).then(() => true))).toBe(true)
      expect(Option.getOrThrow(yield* backend.get("b")).value).toEqual(shared)
      yield* backend.delete("b")
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "content")))).toEqual([])
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "index")))).toEqual([])
    }))

  it.scoped("a bit-flipped body is a miss, is removed, and is not served under any key", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { backend } = yield* open({ directory: dir })
      const value = body(50_000)
      yield* backend.set("a", yield* entry(value))
      yield* backend.set("b", yield* entry(value))
      const file = contentFile(dir, value)
      const bytes = yield* Effect.promise(() => fs.readFile(file))
      bytes[25_000] = bytes[25_000]! ^ 0x01
      yield* Effect.promise(() => fs.writeFile(file, bytes))
      expect(Option.isNone(yield* backend.get("a"))).toBe(true)
      expect(yield* Effect.promise(() => fs.stat(file).then(() => true, () => false))).toBe(false)
      expect(Option.isNone(yield* backend.get("b"))).toBe(true)
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "index")))).toEqual([])
    }))

  it.scoped("a truncated body is a miss before a single byte is streamed", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { backend } = yield* open({ directory: dir })
      const value = body(300_000)
      yield* backend.set("a", yield* entry(value))
      yield* Effect.promise(() => fs.truncate(contentFile(dir, value), 200_000))
      expect(Option.isNone(yield* streamingOf(backend).getStream("a"))).toBe(true)
      expect(Option.isNone(yield* backend.get("a"))).toBe(true)
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "content")))).toEqual([])
    }))

  it.scoped("a body corrupted in place fails its stream with DecodeError instead of ending cleanly", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { backend } = yield* open({ directory: dir })
      const value = body(300_000)
      yield* backend.set("a", yield* entry(value))
      const file = contentFile(dir, value)
      const handle = yield* Effect.promise(() => fs.open(file, "r+"))
      yield* Effect.promise(() => handle.write(Buffer.from([value[250_000]! ^ 0xff]), 0, 1, 250_000))
      yield* Effect.promise(() => handle.close())
      const streamed = Option.getOrThrow(yield* streamingOf(backend).getStream("a"))
      const result = yield* Effect.either(Stream.runCollect(streamed.body))
      expect(Either.isLeft(result) && result.left._tag).toBe("DecodeError")
      expect(Option.isNone(yield* backend.get("a"))).toBe(true)
      expect(yield* Effect.promise(() => fs.stat(file).then(() => true, () => false))).toBe(false)
    }))

  it.scoped("a streaming reader of a bit-flipped 1 MiB body gets every byte, then DecodeError; all its keys go", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { backend } = yield* open({ directory: dir })
      const value = body(1024 * 1024, 7)
      yield* backend.set("a", yield* entry(value))
      yield* backend.set("b", yield* entry(value))
      const file = contentFile(dir, value)
      const handle = yield* Effect.promise(() => fs.open(file, "r+"))
      yield* Effect.promise(() => handle.write(Buffer.from([value[512 * 1024]! ^ 0x10]), 0, 1, 512 * 1024))
      yield* Effect.promise(() => handle.close())
      const streamed = Option.getOrThrow(yield* streamingOf(backend).getStream("a"))
      let received = 0
      const result = yield* Effect.either(
        Stream.runForEach(streamed.body, (c) => Effect.sync(() => (received += c.byteLength)))
      )
      // the digest is only known at the end: the reader has seen all bytes, then the stream fails
      expect(received).toBe(value.byteLength)
      expect(Either.isLeft(result) && result.left._tag).toBe("DecodeError")
      expect(Option.isNone(yield* streamingOf(backend).getStream("b"))).toBe(true)
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "content")))).toEqual([])
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "index")))).toEqual([])
    }))

  it.scoped("getStream reads the body in chunks of at most 64 KiB", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { backend } = yield* open({ directory: dir })
      const value = body(1024 * 1024 + 5)
      yield* backend.set("a", yield* entry(value))
      const streamed = Option.getOrThrow(yield* streamingOf(backend).getStream("a"))
      expect(streamed.entry.value.byteLength).toBe(0)
      expect(streamed.entry.size).toBe(value.byteLength)
      const chunks = Chunk.toArray(yield* Stream.runCollect(streamed.body))
      expect(chunks.length).toBe(17)
      expect(Math.max(...chunks.map((c) => c.byteLength))).toBe(64 * 1024)
      expect(Buffer.concat(chunks).equals(Buffer.from(value))).toBe(true)
    }))

  it.scoped("rebuilds its index from disk on start and drops what expired meanwhile", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const first = yield* open({ directory: dir, fsync: true })
      yield* first.backend.set("kept", yield* entry(body(10_000, 3), 3_600_000))
      yield* first.backend.set("expires", yield* entry(body(10_000, 5), 1_000))
      yield* first.close
      // leftovers of a crash: a half-written temp file and a body no record points to
      yield* Effect.promise(() => fs.writeFile(path.join(dir, "tmp", "half-written"), "partial"))
      const orphan = contentFile(dir, body(10, 9))
      yield* Effect.promise(() => fs.mkdir(path.dirname(orphan), { recursive: true }))
      yield* Effect.promise(() => fs.writeFile(orphan, body(10, 9)))
      yield* TestClock.adjust("2 seconds")
      const second = yield* open({ directory: dir })
      expect(Option.getOrThrow(yield* second.backend.get("kept")).value).toEqual(body(10_000, 3))
      expect(Option.isNone(yield* second.backend.get("expires"))).toBe(true)
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "tmp")))).toEqual([])
      expect(yield* Effect.promise(() => fs.stat(orphan).then(() => true, () => false))).toBe(false)
      expect((yield* second.backend.stats!).entries).toBe(1)
      yield* second.close
    }))

  it.scoped("stays within maxBytes by evicting, and deletes the evicted files", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { backend } = yield* open({ directory: dir, maxBytes: 1024 * 1024 })
      for (let i = 0; i < 30; i++) yield* backend.set(`k${i}`, yield* entry(body(100_000, i + 1)))
      const stats = yield* backend.stats!
      expect(stats.bytes).toBeLessThanOrEqual(1024 * 1024)
      expect(stats.evictions).toBeGreaterThan(0)
      const files = yield* Effect.promise(() => listFiles(path.join(dir, "content")))
      expect(files.length).toBe(stats.entries)
      const sizes = yield* Effect.promise(() => Promise.all(files.map((f) => fs.stat(f).then((s) => s.size))))
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(stats.bytes)
    }))

  it.scoped("a streamed write that fails or is interrupted leaves no temp file and no entry", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { backend } = yield* open({ directory: dir, maxEntrySize: 1024 * 1024 })
      const streaming = streamingOf(backend)
      const meta = { createdAt: 0, expiresAt: 60_000, staleUntil: 60_000, tags: [] }
      const tooBig = Stream.repeatValue(body(100_000)).pipe(Stream.take(20))
      const result = yield* Effect.either(streaming.setStream("big", meta, tooBig))
      expect(Either.isLeft(result) && result.left._tag).toBe("EntryTooLarge")

      const started = yield* Deferred.make<void>()
      const hanging = Stream.concat(
        Stream.make(body(100_000)),
        Stream.fromEffect(Deferred.succeed(started, undefined)).pipe(Stream.drain, Stream.concat(Stream.never))
      )
      const fiber = yield* Effect.fork(streaming.setStream("hanging", meta, hanging))
      yield* Deferred.await(started)
      expect((yield* Effect.promise(() => listFiles(path.join(dir, "tmp")))).length).toBe(1)
      yield* Fiber.interrupt(fiber)
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "tmp")))).toEqual([])
      expect(yield* Effect.promise(() => listFiles(path.join(dir, "content")))).toEqual([])
      expect(Option.isNone(yield* backend.get("hanging"))).toBe(true)
    }))

  it.scoped("layerConfig reads the directory through Config", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const got = yield* Effect.gen(function*() {
        const backend = yield* CacheBackend.CacheBackendTag
        yield* backend.set("k", yield* entry(body(10)))
        return yield* backend.get("k")
      }).pipe(
        Effect.provide(DiskBackend.layerConfig()),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["CACHEKIT_DISK_DIR", dir]])))
      )
      expect(Option.isSome(got)).toBe(true)
      expect((yield* Effect.promise(() => listFiles(path.join(dir, "index")))).length).toBe(1)
    }))

  describe("readInto (lent chunks)", () => {
    const flipAt = (file: string, offset: number, original: number) =>
      Effect.promise(async () => {
        const handle = await fs.open(file, "r+")
        await handle.write(Buffer.from([original ^ 0x10]), 0, 1, offset)
        await handle.close()
      })

    it.scoped("lends every chunk of a body through one reused buffer, in order", () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { backend } = yield* open({ directory: dir })
        const value = body(1024 * 1024 + 5, 3)
        yield* backend.set("a", yield* entry(value))
        const copies: Array<Uint8Array> = []
        const buffers = new Set<ArrayBufferLike>()
        const got = yield* DiskBackend.readInto(backend, "a", (chunk) =>
          Effect.sync(() => {
            buffers.add(chunk.buffer)
            copies.push(new Uint8Array(chunk))
          }))
        expect(Option.getOrThrow(got).size).toBe(value.byteLength)
        expect(copies.length).toBe(17)
        expect(Math.max(...copies.map((c) => c.byteLength))).toBe(64 * 1024)
        expect(Buffer.concat(copies).equals(Buffer.from(value))).toBe(true)
        // the point of readInto: no new buffer per chunk
        expect(buffers.size).toBe(1)
      }))

    // The two lending reads (an effect per chunk, a callback per chunk) take the same corrupted body.
    const lendingReads: ReadonlyArray<
      readonly [
        string,
        (
          backend: CacheBackend.CacheBackend,
          key: string,
          onChunk: (chunk: Uint8Array) => void
        ) => Effect.Effect<unknown, CacheError.CacheError>
      ]
    > = [
      [
        "readInto",
        (backend, key, onChunk) => DiskBackend.readInto(backend, key, (chunk) => Effect.sync(() => onChunk(chunk)))
      ],
      [
        "lendTo",
        (backend, key, onChunk) =>
          Effect.flatMap(
            streamingOf(backend).getStream(key),
            (found) =>
              Option.getOrThrow(found).lendTo!<never>((chunk, done) => {
                onChunk(chunk)
                done(undefined)
              })
          )
      ]
    ]
    for (const [name, read] of lendingReads) {
      it.scoped(`${name}: a bit flip in the middle of a 1 MiB body reaches the reader, then DecodeError; all its keys go`, () =>
        Effect.gen(function*() {
          const dir = yield* tempDir
          const { backend } = yield* open({ directory: dir })
          const value = body(1024 * 1024, 5)
          yield* backend.set("a", yield* entry(value))
          yield* backend.set("b", yield* entry(value))
          yield* flipAt(contentFile(dir, value), 512 * 1024, value[512 * 1024]!)
          let received = 0
          const result = yield* Effect.either(read(backend, "a", (chunk) => (received += chunk.byteLength)))
          expect(received).toBe(value.byteLength)
          expect(Either.isLeft(result) && result.left._tag).toBe("DecodeError")
          expect(Option.isNone(yield* backend.get("a"))).toBe(true)
          expect(Option.isNone(yield* backend.get("b"))).toBe(true)
          expect(yield* Effect.promise(() => listFiles(path.join(dir, "content")))).toEqual([])
        }))
    }

    it.scoped("a corrupted body of one chunk, a truncated body and a missing key never reach f", () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { backend } = yield* open({ directory: dir })
        const small = body(10_000, 9)
        const large = body(300_000, 11)
        yield* backend.set("small", yield* entry(small))
        yield* backend.set("large", yield* entry(large))
        yield* flipAt(contentFile(dir, small), 5_000, small[5_000]!)
        yield* Effect.promise(() => fs.truncate(contentFile(dir, large), 200_000))
        let calls = 0
        const f = () => Effect.sync(() => void calls++)
        expect(Option.isNone(yield* DiskBackend.readInto(backend, "small", f))).toBe(true)
        expect(Option.isNone(yield* DiskBackend.readInto(backend, "large", f))).toBe(true)
        expect(Option.isNone(yield* DiskBackend.readInto(backend, "missing", f))).toBe(true)
        expect(calls).toBe(0)
        expect(yield* Effect.promise(() => listFiles(path.join(dir, "content")))).toEqual([])
      }))

    it.scoped("a failure of f stops the read with f's error and keeps the entry", () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { backend } = yield* open({ directory: dir })
        const value = body(500_000, 13)
        yield* backend.set("a", yield* entry(value))
        let calls = 0
        const result = yield* Effect.either(
          DiskBackend.readInto(backend, "a", () => ++calls === 2 ? Effect.fail("consumer gone" as const) : Effect.void)
        )
        expect(Either.isLeft(result) && result.left).toBe("consumer gone")
        expect(calls).toBe(2)
        expect(Buffer.from(Option.getOrThrow(yield* backend.get("a")).value).equals(Buffer.from(value))).toBe(true)
      }))

    it.scoped("a getStream answer lends through one reused buffer, reused by later reads; a body gone meanwhile fails", () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { backend } = yield* open({ directory: dir })
        // not periodic: chunks kept as views of the reused buffer would not add up to it
        const value = new Uint8Array(randomBytes(700_000))
        yield* backend.set("a", yield* entry(value))
        const found = Option.getOrThrow(yield* backend.streaming!.getStream("a"))
        expect(found.entry.size).toBe(value.byteLength)
        const copies: Array<Uint8Array> = []
        const buffers = new Set<ArrayBufferLike>()
        yield* found.readInto!((chunk) =>
          Effect.sync(() => {
            buffers.add(chunk.buffer)
            copies.push(new Uint8Array(chunk))
          })
        )
        expect(Buffer.concat(copies).equals(Buffer.from(value))).toBe(true)
        expect(buffers.size).toBe(1)
        // a finished read's buffer serves the next read (no 64 KiB of garbage per read)
        yield* DiskBackend.readInto(backend, "a", (chunk) => Effect.sync(() => void buffers.add(chunk.buffer)))
        expect(buffers.size).toBe(1)
        // ... but not one whose f failed: it may still hold the chunk
        const failed = new Set<ArrayBufferLike>()
        yield* Effect.either(DiskBackend.readInto(backend, "a", (chunk) => {
          failed.add(chunk.buffer)
          return Effect.fail("consumer gone" as const)
        }))
        yield* DiskBackend.readInto(backend, "a", (chunk) => Effect.sync(() => void failed.add(chunk.buffer)))
        expect(failed.size).toBe(2)
        // answered, then truncated before its body is read: a failure, not a short body
        const again = Option.getOrThrow(yield* backend.streaming!.getStream("a"))
        yield* Effect.promise(() => fs.truncate(contentFile(dir, value), 200_000))
        let calls = 0
        const result = yield* Effect.either(again.readInto!(() => Effect.sync(() => void calls++)))
        expect(Either.isLeft(result) && result.left._tag).toBe("DecodeError")
        expect(calls).toBe(0)
      }))

    it.scoped("getStream's lendTo: each chunk to a callback through one reused buffer, the next read after done", () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { backend } = yield* open({ directory: dir })
        const value = new Uint8Array(randomBytes(700_000))
        yield* backend.set("a", yield* entry(value))
        const copies: Array<Uint8Array> = []
        const buffers = new Set<ArrayBufferLike>()
        let lent = false
        const found = Option.getOrThrow(yield* backend.streaming!.getStream("a"))
        yield* found.lendTo!<never>((chunk, done) => {
          // one chunk at a time: the previous one was given back before this one was read
          expect(lent).toBe(false)
          lent = true
          buffers.add(chunk.buffer)
          copies.push(new Uint8Array(chunk))
          // given back later, as a socket's write callback would; spoiled first, as a reuse would
          setImmediate(() => {
            chunk.fill(0)
            lent = false
            done(undefined)
          })
        })
        expect(copies.length).toBe(Math.ceil(value.byteLength / (64 * 1024)))
        expect(Buffer.concat(copies).equals(Buffer.from(value))).toBe(true)
        expect(buffers.size).toBe(1)
        // a finished read's buffer serves the next one
        const next = Option.getOrThrow(yield* backend.streaming!.getStream("a"))
        yield* next.lendTo!<never>((chunk, done) => {
          buffers.add(chunk.buffer)
          done(undefined)
        })
        expect(buffers.size).toBe(1)
      }))

    it.scoped("lendTo: an error passed to done stops the read with it; the entry stays, the buffer is not reused", () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { backend } = yield* open({ directory: dir })
        const value = body(500_000, 13)
        yield* backend.set("a", yield* entry(value))
        let calls = 0
        const held = new Set<ArrayBufferLike>()
        const found = Option.getOrThrow(yield* backend.streaming!.getStream("a"))
        const result = yield* Effect.either(found.lendTo!<"socket gone">((chunk, done) => {
          held.add(chunk.buffer)
          done(++calls === 2 ? "socket gone" : undefined)
        }))
        expect(Either.isLeft(result) && result.left).toBe("socket gone")
        expect(calls).toBe(2)
        const next = Option.getOrThrow(yield* backend.streaming!.getStream("a"))
        yield* next.lendTo!<never>((chunk, done) => {
          held.add(chunk.buffer)
          done(undefined)
        })
        expect(held.size).toBe(2)
        expect(Buffer.from(Option.getOrThrow(yield* backend.get("a")).value).equals(Buffer.from(value))).toBe(true)
      }))

    it.scoped("lendTo: interrupted while a chunk is lent, no further chunk is read or written", () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { backend } = yield* open({ directory: dir })
        const value = body(500_000, 7)
        yield* backend.set("a", yield* entry(value))
        let calls = 0
        const first = yield* Deferred.make<void>()
        const found = Option.getOrThrow(yield* backend.streaming!.getStream("a"))
        const fiber = yield* Effect.fork(found.lendTo!<never>(() => {
          calls++
          // never given back: the consumer hangs on its first chunk
          Effect.runSync(Deferred.succeed(first, undefined))
        }))
        yield* Deferred.await(first)
        yield* Fiber.interrupt(fiber)
        yield* Effect.promise(() => new Promise((r) => setTimeout(r, 20)))
        expect(calls).toBe(1)
        // the store still serves it
        expect(Buffer.from(Option.getOrThrow(yield* backend.get("a")).value).equals(Buffer.from(value))).toBe(true)
      }))

    it.scoped("lendTo: a body truncated after getStream answered fails before anything is written", () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { backend } = yield* open({ directory: dir })
        const large = body(300_000, 11)
        yield* backend.set("large", yield* entry(large))
        let writes = 0
        const answered = Option.getOrThrow(yield* backend.streaming!.getStream("large"))
        yield* Effect.promise(() => fs.truncate(contentFile(dir, large), 200_000))
        const result = yield* Effect.either(answered.lendTo!<never>((_, done) => {
          writes++
          done(undefined)
        }))
        expect(Either.isLeft(result) && result.left._tag).toBe("DecodeError")
        expect(writes).toBe(0)
      }))

    it.scoped("on a backend without a disk store it reads through get", () =>
      Effect.gen(function*() {
        const memory = yield* MemoryBackend.make()
        const value = body(100_000, 17)
        yield* memory.set("a", yield* entry(value))
        const copies: Array<Uint8Array> = []
        const got = yield* DiskBackend.readInto(memory, "a", (chunk) => Effect.sync(() => void copies.push(chunk)))
        expect(Option.getOrThrow(got).size).toBe(value.byteLength)
        expect(Buffer.concat(copies).equals(Buffer.from(value))).toBe(true)
        expect(Option.isNone(yield* DiskBackend.readInto(memory, "missing", () => Effect.void))).toBe(true)
      }))
  })
})

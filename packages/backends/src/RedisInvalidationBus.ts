/**
 * An `InvalidationBus` over Redis Pub/Sub (ioredis 5): one connection publishes, a dedicated
 * subscriber connection (`duplicate()`) listens on one channel. Messages are the core's
 * Schema-encoded JSON envelopes (`InvalidationBus.encodeEnvelope`), so any process that speaks
 * that format can take part.
 *
 * Pub/Sub is fire-and-forget: what is published while a subscriber is disconnected is lost. So the
 * subscriber connection reports `Disconnected` when it drops and, once it is back and subscribed
 * again, `Reconnected` (a `TieredCache` then clears its local tiers). A subscriber that falls more
 * than `bufferSize` messages behind gets `Overflow` (same treatment) instead of silently losing them.
 *
 * @example
 * const bus = RedisInvalidationBus.layer({ url: "redis://127.0.0.1:6379", channel: "myapp:invalidate" })
 * const tiers = TieredCache.layerWithBus([{ backend: memory }, { backend: redis }]).pipe(Layer.provide(bus))
 *
 * @since 0.1.0
 */
import { InvalidationBus as Bus } from "@cachekit/core"
import type { Scope } from "effect"
import { Duration, Effect, Either, Layer, Queue, Runtime, Stream } from "effect"
import { Redis, type RedisOptions } from "ioredis"
import { authOptions, type ServerOptions } from "./internal/redisConnection.js"

/** Where to connect (`url`, or `host`/`port`; `db`, `username`, `password`) and how the bus behaves. */
export interface Options extends ServerOptions {
  /** The Pub/Sub channel every instance of one cache shares. Default `cachekit:invalidation`. */
  readonly channel?: string | undefined
  /** This instance's id (default: a random UUID). */
  readonly instanceId?: string | undefined
  /** Connecting longer than this fails. Default 2 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** A publish not answered within this fails. Default 1 second. */
  readonly commandTimeout?: Duration.DurationInput | undefined
  /** Events buffered per subscriber before it is told `Overflow`. Default 4096. */
  readonly bufferSize?: number | undefined
}

type Item = { readonly _tag: "Payload"; readonly text: string } | {
  readonly _tag: "Disconnected" | "Reconnected"
}

interface Subscriber {
  readonly queue: Queue.Queue<Item>
  overflowed: boolean
}

const busError = (operation: string, cause: unknown) =>
  new Bus.InvalidationBusError({
    operation,
    cause,
    message: `redis invalidation bus: ${operation} failed: ${cause instanceof Error ? cause.message : String(cause)}`
  })

/** Connects both connections and subscribes; both are closed (QUIT) when the scope closes. */
export const make = (
  options: Options = {}
): Effect.Effect<Bus.InvalidationBus, Bus.InvalidationBusError, Scope.Scope> =>
  Effect.gen(function*() {
    const channel = options.channel ?? "cachekit:invalidation"
    const instanceId = options.instanceId ?? Bus.makeInstanceId()
    const bufferSize = Math.max(1, options.bufferSize ?? 4096)
    const commandTimeout = Duration.decode(options.commandTimeout ?? "1 second")
    const redisOptions: RedisOptions = {
      lazyConnect: true,
      // fail fast while disconnected rather than queueing publishes forever
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      // we resubscribe ourselves so that `Reconnected` is emitted only once SUBSCRIBE is confirmed
      autoResubscribe: false,
      connectTimeout: Duration.toMillis(options.connectTimeout ?? "2 seconds"),
      retryStrategy: (times: number) => Math.min(50 * times, 1000),
      ...authOptions(options)
    }
    const runtime = yield* Effect.runtime<never>()
    const logError = (role: string) => (error: Error) =>
      Runtime.runFork(runtime)(
        Effect.logDebug(`redis invalidation bus: ${role} connection error`).pipe(
          Effect.annotateLogs({ error: error.message })
        )
      )

    const connect = (client: Redis, role: string) =>
      Effect.acquireRelease(
        Effect.tryPromise({
          try: () => {
            client.on("error", logError(role))
            return client.connect()
          },
          catch: (cause) => busError(`connect (${role})`, cause)
        }).pipe(Effect.as(client), Effect.tapError(() => Effect.sync(() => client.disconnect()))),
        (c) => Effect.promise(() => c.quit().catch(() => c.disconnect()))
      )

    const publisher = yield* connect(
      options.url === undefined
        ? new Redis({ ...redisOptions, host: options.host ?? "127.0.0.1", port: options.port ?? 6379 })
        : new Redis(options.url, redisOptions),
      "publisher"
    )
    const subscriberConnection = yield* connect(publisher.duplicate(), "subscriber")

    const subscribers = new Set<Subscriber>()
    const deliver = (item: Item) => {
      for (const s of subscribers) if (!Queue.unsafeOffer(s.queue, item)) s.overflowed = true
    }

    subscriberConnection.on("message", (from: string, text: string) => {
      if (from === channel) deliver({ _tag: "Payload", text })
    })
    let wasDown = false
    subscriberConnection.on("close", () => {
      if (wasDown) return
      wasDown = true
      deliver({ _tag: "Disconnected" })
    })
    subscriberConnection.on("ready", () => {
      if (!wasDown) return
      subscriberConnection.subscribe(channel).then(
        () => {
          wasDown = false
          deliver({ _tag: "Reconnected" })
        },
        // the connection dropped again before SUBSCRIBE was confirmed: the next `ready` retries
        (error: Error) => logError("subscriber")(error)
      )
    })
    yield* Effect.tryPromise({
      try: () => subscriberConnection.subscribe(channel),
      catch: (cause) => busError("subscribe", cause)
    })

    const publish = (message: Bus.Message): Effect.Effect<void, Bus.InvalidationBusError> =>
      Either.match(Bus.encodeEnvelope(instanceId, message), {
        onLeft: Effect.fail,
        onRight: (text) =>
          Effect.tryPromise({
            try: () => publisher.publish(channel, text),
            catch: (cause) => busError("publish", cause)
          }).pipe(
            Effect.timeoutFail({ duration: commandTimeout, onTimeout: () => busError("publish", "timed out") }),
            Effect.asVoid
          )
      })

    const toEvents = (s: Subscriber) => (item: Item): Effect.Effect<ReadonlyArray<Bus.Event>> => {
      const overflow: ReadonlyArray<Bus.Event> = s.overflowed ? [{ _tag: "Overflow" }] : []
      s.overflowed = false
      if (item._tag !== "Payload") return Effect.succeed([...overflow, item])
      return Effect.map(
        Bus.receive(instanceId, item.text),
        (event) => event === undefined ? overflow : [...overflow, event]
      )
    }

    const subscribe: Effect.Effect<Stream.Stream<Bus.Event>, never, Scope.Scope> = Effect.map(
      Effect.acquireRelease(
        Effect.map(Queue.bounded<Item>(bufferSize), (queue) => {
          const s: Subscriber = { queue, overflowed: false }
          subscribers.add(s)
          return s
        }),
        (s) => Effect.zipRight(Effect.sync(() => subscribers.delete(s)), Queue.shutdown(s.queue))
      ),
      (s) =>
        Stream.fromQueue(s.queue).pipe(
          Stream.mapEffect(toEvents(s)),
          Stream.flattenIterables
        )
    )

    return { instanceId, publish, subscribe } satisfies Bus.InvalidationBus
  })

/** The bus as a Layer. */
export const layer = (options: Options = {}): Layer.Layer<Bus.InvalidationBus, Bus.InvalidationBusError> =>
  Layer.scoped(Bus.InvalidationBus, make(options))

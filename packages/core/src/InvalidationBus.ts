/**
 * Tells the other instances that share a lower tier which entries changed, so their instance-local
 * tiers (L1) drop them instead of serving them stale. Messages are Schema-encoded JSON carrying
 * the id of the instance that sent them; an instance never sees its own messages.
 *
 * Implementations: `layerMemory` (an in-process hub: tests and single-process use) here, and
 * `RedisInvalidationBus` (Redis Pub/Sub) in `@cachekit/backends`.
 *
 * @since 0.1.0
 */
import type { Scope } from "effect"
import { Context, Data, Effect, Either, Layer, PubSub, Schema, Stream } from "effect"

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/** Drop these keys. */
export const Invalidate = Schema.TaggedStruct("Invalidate", { keys: Schema.Array(Schema.String) })
/** These keys were written with new values: drop the local copies, the next read fetches the new ones. */
export const Update = Schema.TaggedStruct("Update", { keys: Schema.Array(Schema.String) })
/** Entries carrying any of these tags were deleted (`delete`) or made stale (`expire`). */
export const InvalidateTags = Schema.TaggedStruct("InvalidateTags", {
  tags: Schema.Array(Schema.String),
  mode: Schema.Literal("delete", "expire")
})
/** Keys matching this glob were deleted. */
export const InvalidatePattern = Schema.TaggedStruct("InvalidatePattern", { pattern: Schema.String })
/** Everything was cleared. */
export const Clear = Schema.TaggedStruct("Clear", {})

/** What an instance tells the others. */
export const Message = Schema.Union(Invalidate, Update, InvalidateTags, InvalidatePattern, Clear)
export type Message = typeof Message.Type

/** The wire format: version, origin instance id, message. */
export const Envelope = Schema.Struct({
  v: Schema.Literal(1),
  origin: Schema.String,
  message: Message
})
export type Envelope = typeof Envelope.Type

/** What a subscriber receives: messages from other instances, and the transport's connection events. */
export type Event =
  | { readonly _tag: "Received"; readonly origin: string; readonly message: Message }
  /** The transport lost its connection; messages sent meanwhile may be lost. */
  | { readonly _tag: "Disconnected" }
  /** The transport is connected again after a loss: messages may have been missed. */
  | { readonly _tag: "Reconnected" }
  /** The subscriber fell behind and messages were dropped: as good as a reconnect. */
  | { readonly _tag: "Overflow" }

// ---------------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------------

/** Publishes invalidations to the other instances and delivers theirs. */
export interface InvalidationBus {
  /** This instance's id (stamped on every message it publishes). */
  readonly instanceId: string
  readonly publish: (message: Message) => Effect.Effect<void, InvalidationBusError>
  /**
   * Subscribes now (messages published after this effect completes are delivered) and returns the
   * stream of events; the subscription ends with the scope. Own messages are filtered out.
   */
  readonly subscribe: Effect.Effect<Stream.Stream<Event>, InvalidationBusError, Scope.Scope>
}

export const InvalidationBus: Context.Tag<InvalidationBus, InvalidationBus> = Context.GenericTag<InvalidationBus>(
  "@cachekit/core/InvalidationBus"
)

/** The bus could not publish or subscribe. */
export class InvalidationBusError extends Data.TaggedError("InvalidationBusError")<{
  readonly operation: string
  readonly cause: unknown
  readonly message: string
}> {}

// ---------------------------------------------------------------------------------------------
// Codec (shared by every transport)
// ---------------------------------------------------------------------------------------------

const encodeJson = Schema.encodeEither(Schema.parseJson(Envelope))
const decodeJson = Schema.decodeUnknownEither(Schema.parseJson(Envelope))

/** Encodes a message for the wire. */
export const encodeEnvelope = (origin: string, message: Message): Either.Either<string, InvalidationBusError> =>
  Either.mapLeft(
    encodeJson({ v: 1, origin, message }),
    (cause) =>
      new InvalidationBusError({ operation: "encode", cause, message: `bus message does not encode: ${cause.message}` })
  )

/** Decodes a wire message; anything malformed (or of another version) is a `Left`. */
export const decodeEnvelope = (text: string): Either.Either<Envelope, InvalidationBusError> =>
  Either.mapLeft(
    decodeJson(text),
    (cause) =>
      new InvalidationBusError({ operation: "decode", cause, message: `bus message does not decode: ${cause.message}` })
  )

/** A random instance id. */
export const makeInstanceId = (): string => globalThis.crypto.randomUUID()

/**
 * Turns one raw wire payload into an event for `self`: `undefined` for own messages; a malformed
 * payload is logged and dropped.
 */
export const receive = (self: string, text: string): Effect.Effect<Event | undefined> => {
  const decoded = decodeEnvelope(text)
  if (Either.isLeft(decoded)) {
    // the last line of a ParseError tree says what was wrong; the whole tree restates the schema
    const reason = decoded.left.message.split("\n").pop()?.trim() ?? ""
    return Effect.logWarning("invalidation bus: dropping a malformed message").pipe(
      Effect.annotateLogs({ payload: text.slice(0, 120), reason: reason.slice(0, 200) }),
      Effect.as(undefined)
    )
  }
  const envelope = decoded.right
  return Effect.succeed(
    envelope.origin === self ? undefined : { _tag: "Received", origin: envelope.origin, message: envelope.message }
  )
}

// ---------------------------------------------------------------------------------------------
// In-memory implementation
// ---------------------------------------------------------------------------------------------

type HubItem = { readonly _tag: "Payload"; readonly text: string } | Exclude<Event, { _tag: "Received" }>

/**
 * The in-process transport several `layerMemory` buses share (one per simulated instance). It is
 * a bounded `PubSub`: a subscriber that falls `capacity` messages behind makes publishers wait
 * (back-pressure) rather than lose an invalidation.
 */
export interface MemoryHub {
  readonly pubsub: PubSub.PubSub<HubItem>
  /** Delivers a connection event to every subscriber (simulates a transport reconnect in tests). */
  readonly signal: (event: "Disconnected" | "Reconnected") => Effect.Effect<void>
}

export const MemoryHub: Context.Tag<MemoryHub, MemoryHub> = Context.GenericTag<MemoryHub>(
  "@cachekit/core/InvalidationBus/MemoryHub"
)

/** A fresh in-process hub, shut down with the scope. */
export const makeMemoryHub = (
  options?: { readonly capacity?: number | undefined }
): Effect.Effect<MemoryHub, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(PubSub.bounded<HubItem>(options?.capacity ?? 1024), PubSub.shutdown),
    (pubsub) => ({
      pubsub,
      signal: (event) => Effect.asVoid(PubSub.publish(pubsub, { _tag: event }))
    })
  )

/** Provides a fresh in-process hub. */
export const layerMemoryHub = (options?: { readonly capacity?: number | undefined }): Layer.Layer<MemoryHub> =>
  Layer.scoped(MemoryHub, makeMemoryHub(options))

/** A bus over a `MemoryHub`. */
export const makeMemory = (
  hub: MemoryHub,
  options?: { readonly instanceId?: string | undefined }
): InvalidationBus => {
  const instanceId = options?.instanceId ?? makeInstanceId()
  return {
    instanceId,
    publish: (message) =>
      Either.match(encodeEnvelope(instanceId, message), {
        onLeft: Effect.fail,
        onRight: (text) => Effect.asVoid(PubSub.publish(hub.pubsub, { _tag: "Payload", text }))
      }),
    subscribe: Effect.map(PubSub.subscribe(hub.pubsub), (dequeue) =>
      Stream.fromQueue(dequeue).pipe(
        Stream.mapEffect((item): Effect.Effect<Event | undefined> =>
          item._tag === "Payload" ? receive(instanceId, item.text) : Effect.succeed(item)
        ),
        Stream.filter((event): event is Event => event !== undefined)
      ))
  }
}

/**
 * A bus for one instance over the shared `MemoryHub`. A function, so that each call is a distinct
 * Layer (two instances in one test get two ids instead of one memoized bus).
 *
 * @example
 * const hub = InvalidationBus.layerMemoryHub()
 * const instanceA = TieredCache.layer(tiersA).pipe(Layer.provide(InvalidationBus.layerMemory()))
 */
export const layerMemory = (
  options?: { readonly instanceId?: string | undefined }
): Layer.Layer<InvalidationBus, never, MemoryHub> =>
  Layer.effect(InvalidationBus, Effect.map(MemoryHub, (hub) => makeMemory(hub, options)))

/** A single-process bus (its own hub): for one instance whose tiers are all in-process. */
export const layerMemoryStandalone = (
  options?: { readonly instanceId?: string | undefined; readonly capacity?: number | undefined }
): Layer.Layer<InvalidationBus> => layerMemory(options).pipe(Layer.provide(layerMemoryHub(options)))

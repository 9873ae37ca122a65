/**
 * Codecs turn typed values into the bytes a backend stores and back. `Codec.schema(S)` is
 * JSON-with-Schema: the value is encoded by the Schema first, so Date, BigInt, Uint8Array, Option
 * and Schema classes round-trip losslessly (plain `JSON.stringify` would not).
 *
 * @since 0.1.0
 */
import { Effect, Either, ParseResult, Schema } from "effect"
import { DecodeError, EncodeError } from "./CacheError.js"

/** Converts values of `A` to bytes and back. `id` names the codec (stored in entry metadata). */
export interface Codec<A> {
  readonly id: string
  readonly encode: (key: string, value: A) => Effect.Effect<Uint8Array, EncodeError>
  readonly decode: (key: string, bytes: Uint8Array) => Effect.Effect<A, DecodeError>
}

const textEncoder = new TextEncoder()
const textDecoder = new TextDecoder("utf-8", { fatal: true })

/** Raw bytes, stored as they are. */
export const bytes: Codec<Uint8Array> = {
  id: "bytes",
  encode: (_key, value) => Effect.succeed(value),
  decode: (_key, value) => Effect.succeed(value)
}

/** UTF-8 text. */
export const string: Codec<string> = {
  id: "string",
  encode: (_key, value) => Effect.succeed(textEncoder.encode(value)),
  decode: (key, value) =>
    Effect.try({
      try: () => textDecoder.decode(value),
      catch: (cause) => new DecodeError({ key, cause, message: `entry "${key}" is not valid UTF-8` })
    })
}

/**
 * JSON-with-Schema: `Schema.encode` to the schema's JSON-safe encoded form, then JSON text as UTF-8.
 * Decoding parses and validates with the schema; anything that does not fit is a `DecodeError`.
 */
export const schema = <A, I>(schema: Schema.Schema<A, I, never>, id?: string): Codec<A> => {
  const json = Schema.parseJson(schema)
  const encodeSync = Schema.encodeEither(json)
  const decodeSync = Schema.decodeUnknownEither(json)
  return {
    id: id ?? `schema:${schemaId(schema)}`,
    encode: (key, value) => {
      const result = encodeSync(value)
      return Either.isRight(result)
        ? Effect.succeed(textEncoder.encode(result.right))
        : Effect.fail(
          new EncodeError({
            key,
            cause: result.left,
            message: `value for "${key}" does not encode: ${ParseResult.TreeFormatter.formatErrorSync(result.left)}`
          })
        )
    },
    decode: (key, value) => {
      let text: string
      try {
        text = textDecoder.decode(value)
      } catch (cause) {
        return Effect.fail(new DecodeError({ key, cause, message: `entry "${key}" is not valid UTF-8` }))
      }
      const result = decodeSync(text)
      return Either.isRight(result)
        ? Effect.succeed(result.right)
        : Effect.fail(
          new DecodeError({
            key,
            cause: result.left,
            message: `entry "${key}" does not match its schema: ${
              ParseResult.TreeFormatter.formatErrorSync(result.left)
            }`
          })
        )
    }
  }
}

/** Plain JSON for values that are already JSON (`Schema.Unknown`); prefer `schema` for typed values. */
export const json: Codec<unknown> = schema(Schema.Unknown, "json")

const schemaId = (s: Schema.Schema.Any): string => {
  const text = String(s.ast)
  return text.length <= 64 ? text : `${text.slice(0, 48)}#${hash32(text).toString(16)}`
}

/** FNV-1a 32-bit, for short stable ids. */
export const hash32 = (text: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

/**
 * Header rewriting for the reverse proxy: hop-by-hop removal (RFC 9110 §7.6.1), `Via` (§7.6.3) and
 * the de-facto `X-Forwarded-*` fields. Plain functions over lower-cased header records.
 *
 * @internal
 */

/** Lower-cased header record, one value per name (repeated fields joined with ", "). */
export type HeaderRecord = Record<string, string>

/**
 * Fields that describe one connection, never forwarded (RFC 9110 §7.6.1), plus fields this proxy
 * regenerates itself: `host` (set from the upstream URL), `expect` (Node answers 100-continue on the
 * client side; the upstream client does not support it), `content-length` on requests is recomputed
 * by the upstream client from the streamed body.
 */
const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "http2-settings"
])

/** Names listed in `Connection` (each one is hop-by-hop for this message). */
const connectionTokens = (value: string | undefined): ReadonlySet<string> | undefined => {
  if (value === undefined || value === "") return undefined
  const tokens = new Set<string>()
  for (const part of value.split(",")) {
    const token = part.trim().toLowerCase()
    if (token !== "") tokens.add(token)
  }
  return tokens.size === 0 ? undefined : tokens
}

/** Whether a field (lower-case) is hop-by-hop: the fixed list, every `proxy-*`, and `extra`. */
export const isHopByHop = (name: string, extra: ReadonlySet<string> | undefined): boolean =>
  HOP_BY_HOP.has(name) || name.startsWith("proxy-") || (extra !== undefined && extra.has(name))

/**
 * Copies `headers` without the hop-by-hop fields (the fixed list, `proxy-*`, and every field named
 * in `Connection`) and without the names in `drop`.
 */
export const stripHopByHop = (
  headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>,
  drop?: ReadonlySet<string>
): HeaderRecord => {
  const connection = headers["connection"]
  const named = connectionTokens(typeof connection === "string" ? connection : connection?.join(","))
  const out: HeaderRecord = {}
  for (const name in headers) {
    const value = headers[name]
    if (value === undefined) continue
    const lower = name.toLowerCase()
    if (isHopByHop(lower, named) || (drop !== undefined && drop.has(lower))) continue
    out[lower] = typeof value === "string" ? value : value.join(", ")
  }
  return out
}

/** Request fields the proxy never forwards upstream, besides hop-by-hop ones. */
export const REQUEST_DROP: ReadonlySet<string> = new Set(["host", "expect", "content-length"])

/** Appends this hop to `Via` (RFC 9110 §7.6.3): `1.1 cachekit` after what earlier hops wrote. */
export const appendVia = (existing: string | undefined, httpVersion: string, pseudonym: string): string => {
  const hop = `${httpVersion} ${pseudonym}`
  return existing === undefined || existing === "" ? hop : `${existing}, ${hop}`
}

/** Appends the client address to `X-Forwarded-For`. */
export const appendForwardedFor = (
  existing: string | undefined,
  clientAddress: string | undefined
): string | undefined => {
  if (clientAddress === undefined) return existing
  // Node reports IPv4 clients of a dual-stack socket as "::ffff:1.2.3.4"
  const address = clientAddress.startsWith("::ffff:") ? clientAddress.slice(7) : clientAddress
  return existing === undefined || existing === "" ? address : `${existing}, ${address}`
}

/**
 * Redis Cluster helpers shared by the Redis modules: the hash slot of a key, and a client factory
 * that gives a standalone `Redis` or a `Cluster` with the same fail-fast settings.
 */
import { Cluster, Redis } from "ioredis"
import type { ClusterOptions, RedisOptions } from "ioredis"

/** CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots; table built once. */
const CRC16_TABLE = (() => {
  const table = new Uint16Array(256)
  for (let i = 0; i < 256; i++) {
    let crc = i << 8
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
    table[i] = crc
  }
  return table
})()

const crc16 = (bytes: Uint8Array): number => {
  let crc = 0
  for (const byte of bytes) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ byte) & 0xff]!
  return crc
}

const encoder = new TextEncoder()

/**
 * The cluster slot of a key: CRC16 of the hash tag (the part between the first `{` and the next `}`,
 * when not empty), else of the whole key, modulo 16384.
 */
export const keySlot = (key: string): number => {
  const open = key.indexOf("{")
  if (open >= 0) {
    const close = key.indexOf("}", open + 1)
    if (close > open + 1) return crc16(encoder.encode(key.slice(open + 1, close))) & 16383
  }
  return crc16(encoder.encode(key)) & 16383
}

export interface ClientSettings {
  readonly host: string
  readonly port: number
  readonly url: string | undefined
  readonly cluster: ReadonlyArray<{ readonly host: string; readonly port: number }> | undefined
  /** Options of the connection (or of every cluster node connection). */
  readonly redisOptions: RedisOptions
}

/** How often a Cluster client re-reads the slot map (and so how late it notices a failover at most). */
export const SLOTS_REFRESH_INTERVAL_MILLIS = 1000

/**
 * A standalone client or a Cluster client, both lazy (connect explicitly), failing fast while
 * disconnected (no offline queue) and reconnecting in the background.
 */
export const makeClient = (settings: ClientSettings): Redis | Cluster => {
  const retry = (times: number) => Math.min(50 * times, 1000)
  if (settings.cluster !== undefined) {
    const { db: _db, enableOfflineQueue: _queue, retryStrategy: _retry, ...nodeOptions } = settings.redisOptions
    const clusterOptions: ClusterOptions = {
      lazyConnect: true,
      enableOfflineQueue: false,
      clusterRetryStrategy: retry,
      // a MOVED/ASK after a failover is followed, a few times at most
      maxRedirections: 8,
      retryDelayOnFailover: 100,
      retryDelayOnClusterDown: 100,
      slotsRefreshTimeout: settings.redisOptions.connectTimeout ?? 2000,
      // A hung master answers nothing (no MOVED, no closed socket), so without a periodic refresh the
      // client would keep sending its slots to it after a replica took over (tested by
      // RedisClusterFailover.test.ts). One CLUSTER SLOTS on a short-lived connection per interval.
      slotsRefreshInterval: SLOTS_REFRESH_INTERVAL_MILLIS,
      redisOptions: nodeOptions
    }
    return new Cluster(settings.cluster.map((n) => ({ host: n.host, port: n.port })), clusterOptions)
  }
  const options: RedisOptions = { retryStrategy: retry, ...settings.redisOptions, lazyConnect: true }
  return settings.url === undefined
    ? new Redis({ ...options, host: settings.host, port: settings.port })
    : new Redis(settings.url, options)
}

/** The masters of a cluster in a stable order (host:port), or the client itself when standalone. */
export const scanTargets = (client: Redis | Cluster): ReadonlyArray<Redis> =>
  client instanceof Cluster
    ? [...client.nodes("master")].sort((a, b) => nodeName(a).localeCompare(nodeName(b)))
    : [client]

const nodeName = (node: Redis) => `${node.options.host ?? ""}:${node.options.port ?? 0}`

/**
 * Groups commands so each group can go to one node in one pipeline: standalone -> one group;
 * cluster -> one group per set of nodes serving the first key's slot (what ioredis requires of a
 * cluster pipeline). Returns the indexes of the commands in each group.
 */
export const groupByNode = (
  client: Redis | Cluster,
  firstKeys: ReadonlyArray<string>
): Array<Array<number>> => {
  if (!(client instanceof Cluster)) return [firstKeys.map((_, i) => i)]
  const groups = new Map<string, Array<number>>()
  firstKeys.forEach((key, i) => {
    const slot = keySlot(key)
    const owner = client.slots[slot]?.join(",") ?? `slot:${slot}`
    const group = groups.get(owner)
    if (group === undefined) groups.set(owner, [i])
    else group.push(i)
  })
  return [...groups.values()]
}

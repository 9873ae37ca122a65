/**
 * A ketama-style consistent hash ring: each server owns `pointsPerServer` points on a 32-bit
 * circle (four points from every MD5 digest of "<server>-<i>"); a key belongs to the first point
 * at or after the key's own hash. Adding or removing one server moves only ~1/N of the keys.
 */
import { createHash } from "node:crypto"

export interface HashRing<S> {
  readonly servers: ReadonlyArray<S>
  /** The server owning `key`. */
  readonly locate: (key: string) => S
}

const md5 = (s: string) => createHash("md5").update(s).digest()

/** The 32-bit position of a key on the ring (first 4 bytes of its MD5, little-endian, as ketama does). */
export const hashKey = (key: string): number => md5(key).readUInt32LE(0)

export const make = <S>(
  servers: ReadonlyArray<S>,
  id: (server: S) => string,
  pointsPerServer = 160
): HashRing<S> => {
  if (servers.length === 0) throw new RangeError("a hash ring needs at least one server")
  const points: Array<{ readonly at: number; readonly server: S }> = []
  for (const server of servers) {
    for (let i = 0; i < pointsPerServer / 4; i++) {
      const digest = md5(`${id(server)}-${i}`)
      for (let j = 0; j < 4; j++) points.push({ at: digest.readUInt32LE(j * 4), server })
    }
  }
  points.sort((a, b) => a.at - b.at)
  const positions = Uint32Array.from(points, (p) => p.at)
  const owners = points.map((p) => p.server)
  const locate = (key: string): S => {
    if (owners.length === 1 || servers.length === 1) return servers[0]!
    const h = hashKey(key)
    // first point >= h, wrapping to the start of the circle
    let lo = 0
    let hi = positions.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (positions[mid]! < h) lo = mid + 1
      else hi = mid
    }
    return owners[lo === positions.length ? 0 : lo]!
  }
  return { servers, locate }
}

// The sales listing that every storefront polls, served from a snapshot at most `ttlMs` old since it was
// read from PostgreSQL: shared by every instance through Redis, and kept by each instance as well, so that
// with Redis down each instance still reads it once per `ttlMs`, never once per request. Concurrent
// misses within an instance share one read.
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Redis } from './redis.ts';

export type Snapshot = { text: string; etag: string };
export type Snapshots = (key: string, load: () => Promise<string>) => Promise<Snapshot>;

function toSnapshot(text: string): Snapshot {
  return { text, etag: `"${createHash('sha1').update(text).digest('base64url')}"` };
}

export function createSnapshots(deps: { redis: Redis; ttlMs: number }): Snapshots {
  const cache = new LRUCache<string, Snapshot, () => Promise<string>>({
    max: 1000,
    ttl: deps.ttlMs,
    async fetchMethod(key, _stale, { options, context: load }) {
      const shared = await deps.redis.readSnapshot(key);
      if (shared) {
        // Kept here only for what is left of its life in Redis: no copy outlives ttlMs.
        options.ttl = shared.ttlMs;
        return toSnapshot(shared.text);
      }
      const text = await load();
      deps.redis.writeSnapshot(key, text, deps.ttlMs);
      return toSnapshot(text);
    },
  });
  return async (key, load) => (await cache.fetch(key, { context: load }))!;
}

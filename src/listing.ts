// The sales listing that every storefront polls, served from a snapshot at most `ttlMs` old since it was
// read from PostgreSQL: shared by every instance through Redis, and kept by each instance as well, so that
// with Redis down each instance still reads it once per `ttlMs`, never once per request. Concurrent
// misses within an instance share one read; across instances, the one that claims the snapshot reads
// it and the others wait a little for it.
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
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
      for (let tries = 0; ; tries += 1) {
        const shared = await deps.redis.readSnapshot(key);
        if (shared) {
          // Kept here only for what is left of its life in Redis: no copy outlives ttlMs.
          options.ttl = shared.ttlMs;
          return toSnapshot(shared.text);
        }
        // Bounded: after 100 ms without the claimer's snapshot, read it here.
        if (tries === 20 || (await deps.redis.claimSnapshot(key, deps.ttlMs))) break;
        await sleep(5);
      }
      const text = await load();
      deps.redis.writeSnapshot(key, text, deps.ttlMs);
      return toSnapshot(text);
    },
  });
  return async (key, load) => (await cache.fetch(key, { context: load }))!;
}

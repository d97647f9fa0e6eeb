// Redis protects the service and never decides: the rate limits of every instance count here, and the
// listing snapshot they share lives here. Any Redis error or timeout means "no limit" for that request
// (degrade open) and "no snapshot" (each instance keeps its own): PostgreSQL still decides. Without a URL
// (no REDIS_URL and nothing on the default port) it is disabled: each instance counts its own limits.
import { createClient } from 'redis';

// A fixed-window counter: the first hit of a window sets its expiry.
const countScript = `
local current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {current, redis.call('PTTL', KEYS[1])}`;

const readCountScript = `
local current = redis.call('GET', KEYS[1])
if not current then return {0, 0} end
return {tonumber(current), redis.call('PTTL', KEYS[1])}`;

type Count = { current: number; ttl: number };
type CountCallback = (error: Error | null, count: Count | null) => void;

export type Redis = ReturnType<typeof createRedis>;

export function createRedis(options: { url: string | null; keyPrefix: string; timeoutMs: number; onError: (error: Error) => void }) {
  const prefix = options.keyPrefix;
  const enabled = options.url !== null;
  const client = createClient({
    url: options.url ?? undefined,
    // Without these, commands queue forever while Redis is down and every request waits.
    disableOfflineQueue: true,
    commandOptions: { timeout: options.timeoutMs },
    // While Redis hangs, unanswered commands wait in this queue: bound it (past it, commands fail fast).
    commandsQueueMaxLength: 10_000,
    socket: { connectTimeout: 1000, reconnectStrategy: (retries) => Math.min(50 * 2 ** retries, 2000) },
  });
  let lastError = '';
  client.on('error', (error: Error) => {
    // A dead Redis reports on every reconnect attempt: log each distinct failure once.
    if (error.message !== lastError) options.onError(error);
    lastError = error.message;
  });
  client.on('ready', () => {
    lastError = '';
  });

  // node-redis's own timeout stops once a command is written, so a hung (not dead) Redis would hold
  // the request: this timer bounds every call, whatever state the connection is in.
  async function quietly<T>(command: () => Promise<T>): Promise<T | null> {
    if (!client.isReady) return null;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), options.timeoutMs);
    });
    try {
      return await Promise.race([command().catch(() => null), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  return {
    enabled,

    // Connects in the background: the service starts and sells without Redis.
    start(): void {
      if (enabled) client.connect().catch(() => {});
    },

    async close(): Promise<void> {
      if (!enabled) return;
      if (client.isOpen) await client.close().catch(() => client.destroy());
      else client.destroy();
    },

    isReady(): boolean {
      return client.isReady;
    },

    async ping(): Promise<void> {
      if (!client.isReady) throw new Error('Redis is not connected');
      await client.ping();
    },

    // A snapshot shared by every instance (the sales listing): its text and the milliseconds it has left,
    // or null when there is none or Redis does not answer in time.
    async readSnapshot(key: string): Promise<{ text: string; ttlMs: number } | null> {
      const fullKey = `${prefix}snapshot:${key}`;
      const reply = await quietly(() => client.multi().get(fullKey).pTTL(fullKey).exec());
      const [text, ttlMs] = (reply ?? []) as unknown as [string | null, number];
      return typeof text === 'string' && ttlMs > 0 ? { text, ttlMs } : null;
    },

    // True for the one caller that may make the snapshot now (or for anyone while Redis does not answer).
    async claimSnapshot(key: string, ttlMs: number): Promise<boolean> {
      const claimKey = `${prefix}snapshot-claim:${key}`;
      const reply = await quietly(() =>
        client.set(claimKey, '1', { condition: 'NX', expiration: { type: 'PX', value: ttlMs } }).then((set) => set ?? 'taken'),
      );
      return reply !== 'taken';
    },

    writeSnapshot(key: string, text: string, ttlMs: number): void {
      void quietly(() => client.set(`${prefix}snapshot:${key}`, text, { expiration: { type: 'PX', value: ttlMs } }));
    },

    // A store for @fastify/rate-limit, shared by every instance. With Redis down or slow it reports an
    // error, and the limiter (skipOnError) lets the request through: limits degrade open, not closed.
    rateLimitStore() {
      const count = (script: string, key: string, windowMs: number, callback: CountCallback) => {
        void quietly(() => client.eval(script, { keys: [`${prefix}rate:${key}`], arguments: [String(windowMs)] })).then(
          (reply) => {
            if (!Array.isArray(reply)) return callback(new Error('rate limit store unavailable'), null);
            const [current, ttl] = reply as [number, number];
            callback(null, { current, ttl: Math.max(ttl, 0) });
          },
        );
      };
      const store = {
        incr: (key: string, callback: CountCallback, windowMs: number) => count(countScript, key, windowMs, callback),
        read: (key: string, callback: CountCallback, windowMs: number) => count(readCountScript, key, windowMs, callback),
        child: () => store,
      };
      return store;
    },
  };
}

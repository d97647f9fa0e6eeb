// Redis remembers facts that can never become false again, so that refusals and replays can skip
// PostgreSQL: what a code is bound to, that an item is sold (and to which code), that a user has
// reached a sale's limit. Any Redis error or timeout means "no cache": the caller asks PostgreSQL.
import { createClient } from 'redis';

export type Receipt = { code: string; itemId: number; saleId: number; userId: string; purchasedAt: string };

export type Shortcut =
  | { outcome: 'replayed'; receipt: Receipt }
  | { outcome: 'item_sold'; itemId: number }
  | { outcome: 'limit_reached'; itemId: number; perUserLimit: number };

// One round trip: the code's binding, then the item's and the user's facts it points to.
const shortcutScript = `
local binding = redis.call('GET', ARGV[1] .. 'code:' .. ARGV[2])
if not binding then return false end
local item, sale, user = string.match(binding, '^(%d+)|(%d+)|(.*)$')
local sold = redis.call('GET', ARGV[1] .. 'sold:' .. item)
if sold then return {'sold', item, sold} end
local limit = redis.call('GET', ARGV[1] .. 'limit:' .. sale .. ':' .. user)
if not limit then return false end
local max, codes = string.match(limit, '^(%d+)|(.*)$')
-- A code that filled the limit may be replayed: only PostgreSQL has its receipt then.
if string.find(',' .. codes .. ',', ',' .. ARGV[2] .. ',', 1, true) then return false end
return {'limit', item, max}`;

const soldTtlSeconds = 7 * 24 * 3600;

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

export type Cache = ReturnType<typeof createCache>;

export function createCache(options: { url: string; keyPrefix: string; timeoutMs: number; onError: (error: Error) => void }) {
  const prefix = options.keyPrefix;
  const client = createClient({
    url: options.url,
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
    // Connects in the background: the service starts and sells without Redis.
    start(): void {
      client.connect().catch(() => {});
    },

    async close(): Promise<void> {
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

    // The binding expires with the code (PostgreSQL's expires_at), so an expired code always reaches
    // PostgreSQL and hears code_expired.
    rememberCode(code: string, binding: { itemId: number; saleId: number; userId: string; expiresAt: Date }): void {
      const value = `${binding.itemId}|${binding.saleId}|${binding.userId}`;
      void quietly(() => client.set(`${prefix}code:${code}`, value, { PXAT: binding.expiresAt.getTime() }));
    },

    rememberSold(receipt: Receipt): void {
      void quietly(() => client.set(`${prefix}sold:${receipt.itemId}`, JSON.stringify(receipt), { EX: soldTtlSeconds }));
    },

    // boughtCodes: the codes that filled the limit, so that replaying one of them still reaches PostgreSQL.
    rememberLimit(saleId: number, userId: string, perUserLimit: number, boughtCodes: string[]): void {
      const value = `${perUserLimit}|${boughtCodes.join(',')}`;
      void quietly(() => client.set(`${prefix}limit:${saleId}:${userId}`, value, { EX: soldTtlSeconds }));
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

    async purchaseShortcut(code: string): Promise<Shortcut | null> {
      const reply = await quietly(() => client.eval(shortcutScript, { arguments: [prefix, code] }));
      if (!Array.isArray(reply)) return null;
      const [kind, item, value] = reply as [string, string, string];
      if (kind === 'limit') return { outcome: 'limit_reached', itemId: Number(item), perUserLimit: Number(value) };
      const receipt = JSON.parse(value) as Receipt;
      return receipt.code === code ? { outcome: 'replayed', receipt } : { outcome: 'item_sold', itemId: Number(item) };
    },
  };
}

// Reads and validates the environment once. Only entry points (server.ts, cli/) call loadConfig.
import { fileURLToPath } from 'node:url';

export type Config = Readonly<{
  port: number;
  host: string;
  databaseUrl: string;
  // Whether DATABASE_URL / REDIS_URL were given: without them, start-up looks at the default ports (src/local.ts).
  databaseUrlGiven: boolean;
  redisUrlGiven: boolean;
  localPostgresDir: string;
  readDatabaseUrl: string | null;
  redisUrl: string;
  redisKeyPrefix: string;
  saleSize: number;
  perUserLimit: number;
  saleIntervalSeconds: number;
  codeTtlSeconds: number;
  attemptsRetentionDays: number | null;
  salesSnapshotMs: number;
  logLevel: string;
  logRequests: boolean;
  databasePoolMax: number;
  batchMax: number;
  batchesInFlight: number;
  queueMax: number;
  queueTimeoutMs: number;
  statementTimeoutMs: number;
  migrate: boolean;
  migrationLockTimeoutMs: number;
  redisTimeoutMs: number;
  healthTimeoutMs: number;
  shutdownGraceMs: number;
  requestTimeoutMs: number;
  trustProxy: boolean | number;
  rateLimit: { windowMs: number; addressMax: number; userMax: number; badCodeMax: number } | null;
}>;

export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be a whole number from ${min} to ${max}, got "${raw}"`);
  }
  return value;
}

function url(env: Env, name: string, fallback: string, protocols: string[]): string {
  const raw = env[name] || fallback;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new ConfigError(`${name} is not a valid URL`);
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new ConfigError(`${name} must start with ${protocols.map((p) => `${p}//`).join(' or ')}`);
  }
  return raw;
}

function flag(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (['1', 'true', 'on', 'yes'].includes(raw)) return true;
  if (['0', 'false', 'off', 'no'].includes(raw)) return false;
  throw new ConfigError(`${name} must be on or off, got "${raw}"`);
}

// A URL fit for a log line: its password, if any, masked.
export function withoutPassword(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(not a URL)';
  }
}

const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function loadConfig(env: Env = process.env): Config {
  const logLevel = env.LOG_LEVEL || 'info';
  if (!logLevels.includes(logLevel)) {
    throw new ConfigError(`LOG_LEVEL must be one of ${logLevels.join(', ')}, got "${logLevel}"`);
  }
  return Object.freeze({
    port: integer(env, 'PORT', 8080, 0, 65535),
    host: env.HOST || '0.0.0.0',
    databaseUrl: url(env, 'DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/flash_sale', ['postgres:', 'postgresql:']),
    databaseUrlGiven: Boolean(env.DATABASE_URL),
    redisUrlGiven: Boolean(env.REDIS_URL),
    // Where the embedded PostgreSQL keeps its data, when one is started (git-ignored).
    localPostgresDir: env.LOCAL_POSTGRES_DIR || fileURLToPath(new URL('../.data/postgres', import.meta.url)),
    // Read-only endpoints go to this server (a streaming replica) when it is set.
    readDatabaseUrl: env.READ_DATABASE_URL ? url(env, 'READ_DATABASE_URL', '', ['postgres:', 'postgresql:']) : null,
    redisUrl: url(env, 'REDIS_URL', 'redis://127.0.0.1:6379', ['redis:', 'rediss:']),
    redisKeyPrefix: env.REDIS_KEY_PREFIX ?? 'flash-sale:',
    saleSize: integer(env, 'SALE_SIZE', 10_000, 1, 1_000_000),
    perUserLimit: integer(env, 'PER_USER_LIMIT', 10, 1, 1_000_000),
    saleIntervalSeconds: integer(env, 'SALE_INTERVAL', 3600, 1, 366 * 24 * 3600),
    codeTtlSeconds: integer(env, 'CODE_TTL', 600, 1, 7 * 24 * 3600),
    // Unset keeps every checkout attempt; set, whole months of attempts older than this are dropped. At
    // least 8 days: a code may live 7 (CODE_TTL), and a partition holds a month.
    attemptsRetentionDays: env.ATTEMPTS_RETENTION_DAYS ? integer(env, 'ATTEMPTS_RETENTION_DAYS', 0, 8, 100_000) : null,
    // How old the shared snapshot of GET /sales may be: every viewer polling it costs one read per this long.
    salesSnapshotMs: integer(env, 'SALES_SNAPSHOT_MS', 1000, 1, 60_000),
    logLevel,
    logRequests: flag(env, 'LOG_REQUESTS', false),
    databasePoolMax: integer(env, 'DATABASE_POOL_MAX', 16, 1, 1000),
    // Requests coalesced into one checkout or purchase statement at most (a smaller figure shrinks what an
    // instance can serve: the overload benchmark uses 1).
    batchMax: integer(env, 'BATCH_MAX', 64, 1, 1000),
    // Checkout and purchase statements each may have this many in flight, a further one only while a full
    // batch waits; requests arriving meanwhile are coalesced into the next statement.
    batchesInFlight: integer(env, 'BATCHES_IN_FLIGHT', 4, 1, 1000),
    // A request waits at most this long for its statement to start, and finds at most this many ahead of
    // it; past either it is answered 503 overloaded at once and never sent.
    queueTimeoutMs: integer(env, 'QUEUE_TIMEOUT_MS', 1000, 1, 60_000),
    queueMax: integer(env, 'QUEUE_MAX', 5000, 1, 1_000_000),
    // Each statement (and lock wait), enforced by PostgreSQL and, for a server that cannot, by the service.
    statementTimeoutMs: integer(env, 'STATEMENT_TIMEOUT_MS', 2000, 10, 600_000),
    // off: `npm run migrate` is a deploy step of its own, and an instance starts only on the schema it knows.
    migrate: flag(env, 'MIGRATE', true),
    // A migration waits this long for a table lock, then tries again later: checkouts queued behind its
    // request wait no longer than this, under their own statement timeout.
    migrationLockTimeoutMs: integer(env, 'MIGRATION_LOCK_TIMEOUT_MS', 1000, 10, 600_000),
    redisTimeoutMs: integer(env, 'REDIS_TIMEOUT_MS', 100, 1, 60_000),
    healthTimeoutMs: integer(env, 'HEALTH_TIMEOUT_MS', 1000, 1, 60_000),
    shutdownGraceMs: integer(env, 'SHUTDOWN_GRACE_MS', 10_000, 0, 600_000),
    // A client gets this long to send its whole request: slow clients cannot hold connections open.
    requestTimeoutMs: integer(env, 'REQUEST_TIMEOUT_MS', 10_000, 100, 600_000),
    // Behind a load balancer, the client's address comes from X-Forwarded-For: a number of proxy hops to
    // trust (1 behind one nginx; more would let clients forge their address), or on/off.
    trustProxy: /^\d+$/.test(env.TRUST_PROXY ?? '') ? integer(env, 'TRUST_PROXY', 0, 0, 10) : flag(env, 'TRUST_PROXY', false),
    rateLimit: flag(env, 'RATE_LIMIT', true)
      ? {
          windowMs: integer(env, 'RATE_LIMIT_WINDOW_MS', 10_000, 100, 3_600_000),
          addressMax: integer(env, 'RATE_LIMIT_ADDRESS_MAX', 1000, 1, 10_000_000),
          userMax: integer(env, 'RATE_LIMIT_USER_MAX', 50, 1, 10_000_000),
          badCodeMax: integer(env, 'RATE_LIMIT_BAD_CODE_MAX', 20, 1, 10_000_000),
        }
      : null,
  });
}

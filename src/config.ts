// Reads and validates the environment once. Only entry points (server.ts, cli/) call loadConfig.

export type Config = Readonly<{
  port: number;
  host: string;
  databaseUrl: string;
  redisUrl: string;
  redisKeyPrefix: string;
  saleSize: number;
  perUserLimit: number;
  saleIntervalSeconds: number;
  codeTtlSeconds: number;
  logLevel: string;
  logRequests: boolean;
  databasePoolMax: number;
  redisTimeoutMs: number;
  healthTimeoutMs: number;
  shutdownGraceMs: number;
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
    redisUrl: url(env, 'REDIS_URL', 'redis://127.0.0.1:6379', ['redis:', 'rediss:']),
    redisKeyPrefix: env.REDIS_KEY_PREFIX ?? 'flash-sale:',
    saleSize: integer(env, 'SALE_SIZE', 10_000, 1, 1_000_000),
    perUserLimit: integer(env, 'PER_USER_LIMIT', 10, 1, 1_000_000),
    saleIntervalSeconds: integer(env, 'SALE_INTERVAL', 3600, 1, 366 * 24 * 3600),
    codeTtlSeconds: integer(env, 'CODE_TTL', 600, 1, 7 * 24 * 3600),
    logLevel,
    logRequests: env.LOG_REQUESTS === 'true' || env.LOG_REQUESTS === '1',
    databasePoolMax: integer(env, 'DATABASE_POOL_MAX', 16, 1, 1000),
    redisTimeoutMs: integer(env, 'REDIS_TIMEOUT_MS', 100, 1, 60_000),
    healthTimeoutMs: integer(env, 'HEALTH_TIMEOUT_MS', 1000, 1, 60_000),
    shutdownGraceMs: integer(env, 'SHUTDOWN_GRACE_MS', 10_000, 0, 600_000),
  });
}

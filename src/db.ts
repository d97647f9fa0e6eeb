// The one place that creates postgres.js instances, creates the database and applies migrations.
import { readdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';

export type Sql = postgres.Sql;

const migrationsDir = fileURLToPath(new URL('../migrations/', import.meta.url));
// Any fixed number: every instance takes the same lock, so only one migrates at a time.
const migrationLockKey = 7_201_042_917;

export function connect(databaseUrl: string, options: { max?: number } = {}): Sql {
  return postgres(databaseUrl, {
    max: options.max ?? 10,
    // Short: a request waits for a connection no longer than a client would wait for an answer.
    connect_timeout: 2,
    idle_timeout: 60,
    onnotice: () => {},
    connection: { application_name: 'flash-sale' },
    // bigint and count(*) arrive as numbers: ids and counts stay far below 2^53.
    types: {
      bigint: { to: 20, from: [20], serialize: (value: number) => String(value), parse: (value: string) => Number(value) },
    },
  });
}

// postgres.js and PostgreSQL codes that mean "the database is out of reach", not "the query is wrong".
const unavailableCodes = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN',
  'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED',
  '53300', '57P01', '57P02', '57P03',
]);

export function isDatabaseUnavailable(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (unavailableCodes.has(code) || code.startsWith('08'));
}

// Runs an idempotent statement once more after a connection failure (a cut, a restart): sent again, a
// checkout finds its own record and a purchase that did buy replays its receipt. Nothing else retries.
export async function retryOnce<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (!isDatabaseUnavailable(error)) throw error;
    return work();
  }
}

// Creates the database named in the URL when it is missing (a fresh machine's `npm start`).
export async function ensureDatabase(databaseUrl: string): Promise<void> {
  const url = new URL(databaseUrl);
  const name = decodeURIComponent(url.pathname.slice(1));
  url.pathname = '/postgres';
  const admin = postgres(url.toString(), { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    const [found] = await admin`select 1 as one from pg_database where datname = ${name}`;
    if (found) return;
    await admin`create database ${admin(name)}`.catch((error: { code?: string }) => {
      // Another instance created it first: 42P04, or 23505 when both got past the check at once.
      if (error.code !== '42P04' && error.code !== '23505') throw error;
    });
  } finally {
    await admin.end({ timeout: 5 });
  }
}

// Applies migrations/NNNN_*.sql in order, each once and each in a transaction of its own, under an
// advisory lock so that instances starting together neither race nor see a half-migrated schema. A file
// commits before the next one starts: a migration that must not hold its locks long is split into files
// (work under weak locks first, a brief exclusive step last). `through` stops at that file (a test of a
// later migration needs data written under the schema before it).
export async function migrate(sql: Sql, options: { through?: string } = {}): Promise<string[]> {
  const files = (await readdir(migrationsDir))
    .filter((name) => /^\d{4}_[\w-]+\.sql$/.test(name) && (options.through === undefined || name <= options.through))
    .sort();
  const connection = await sql.reserve();
  try {
    await connection`select pg_advisory_lock(${migrationLockKey})`;
    await connection`
      create table if not exists schema_migrations (
        version    text primary key,
        applied_at timestamptz not null default now()
      )`;
    const done = new Set((await connection`select version from schema_migrations`).map((row) => row.version as string));
    const applied: string[] = [];
    for (const file of files.filter((name) => !done.has(name))) {
      await connection`begin`;
      try {
        await connection.file(migrationsDir + file);
        await connection`insert into schema_migrations (version) values (${file})`;
        await connection`commit`;
      } catch (error) {
        await connection`rollback`.catch(() => {});
        throw error;
      }
      applied.push(file);
    }
    return applied;
  } finally {
    await connection`select pg_advisory_unlock(${migrationLockKey})`.catch(() => {});
    connection.release();
  }
}

// The schema: the database created if missing, migrations/NNNN_*.sql applied in order under an advisory
// lock, then sql/functions.sql whenever it changed.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { isLockTimeout, type Sql } from './db.ts';

const migrationsDir = fileURLToPath(new URL('../migrations/', import.meta.url));
const defaultFunctionsFile = fileURLToPath(new URL('../sql/functions.sql', import.meta.url));
// Any fixed number: every instance takes the same lock, so only one migrates at a time.
const migrationLockKey = 7_201_042_917;

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

// migrations/NNNN_*.sql, in the order they apply.
export function migrationFiles(dir = migrationsDir): string[] {
  return readdirSync(dir).filter((name) => /^\d{4}_[\w-]+\.sql$/.test(name)).sort();
}

// The newest migration this code knows: a database without it is not ready for this code.
export function latestMigration(): string {
  return migrationFiles().at(-1)!;
}

// How applied migrations stand against known ones: those missing, and those unknown (a newer version's).
function difference(applied: string[], known: string[]): { missing: string[]; unknown: string[] } {
  return { missing: known.filter((file) => !applied.includes(file)), unknown: applied.filter((file) => !known.includes(file)).sort() };
}

// How the database's schema stands against this code.
export async function schemaDifference(sql: Sql): Promise<{ missing: string[]; unknown: string[] }> {
  const [table] = await sql<{ exists: boolean }[]>`select to_regclass('schema_migrations') is not null as exists`;
  const applied = table!.exists ? (await sql<{ version: string }[]>`select version from schema_migrations`).map((row) => row.version) : [];
  return difference(applied, migrationFiles());
}

export type MigrateOptions = {
  // Stop at this file (a test of a later migration needs data written under the schema before it).
  through?: string;
  // How long a migration waits for a table lock before it gives up and tries again later.
  lockTimeoutMs?: number;
  attempts?: number;
  onRetry?: (file: string, attempt: number, error: unknown) => void;
  dir?: string;
  // The live definition of every function (a test passes a changed copy).
  functionsFile?: string;
  onFunctionsApplied?: (checksum: string) => void;
};

// Applies migrations/NNNN_*.sql in order, each once and each in a transaction of its own, under an
// advisory lock so that instances starting together neither race nor see a half-migrated schema. A file
// commits before the next one starts: a migration that must not hold its locks long is split into files
// (work under weak locks first, a brief exclusive step last). Then sql/functions.sql, when it changed.
// Returns the migrations applied.
export async function migrate(sql: Sql, options: MigrateOptions = {}): Promise<string[]> {
  const { dir = migrationsDir, functionsFile = defaultFunctionsFile, onFunctionsApplied = () => {} } = options;
  const known = migrationFiles(dir);
  const files = known.filter((name) => options.through === undefined || name <= options.through);
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
      await inTransactionWithRetries(connection, file, options, async () => {
        await connection.file(join(dir, file));
        await connection`insert into schema_migrations (version) values (${file})`;
      });
      applied.push(file);
      done.add(file);
    }
    // The file defines the functions of exactly this code's migrations: not of a schema stopped short of
    // them (`through`), nor of a newer release's, whose functions an older release must never overwrite.
    const { missing, unknown } = difference([...done], known);
    if (missing.length === 0 && unknown.length === 0) {
      const checksum = createHash('sha256').update(readFileSync(functionsFile)).digest('hex');
      await connection`
        create table if not exists schema_functions (
          checksum   text not null,
          applied_at timestamptz not null default now()
        )`;
      const [recorded] = await connection`select checksum from schema_functions`;
      if (recorded?.checksum !== checksum) {
        await inTransactionWithRetries(connection, basename(functionsFile), options, async () => {
          await connection.file(functionsFile);
          await connection`delete from schema_functions`;
          await connection`insert into schema_functions (checksum) values (${checksum})`;
        });
        onFunctionsApplied(checksum);
      }
    }
    return applied;
  } finally {
    await connection`select pg_advisory_unlock(${migrationLockKey})`.catch(() => {});
    connection.release();
  }
}

// Runs `work` in a transaction of its own that waits at most `lockTimeoutMs` for a lock, so that checkouts
// queued behind its request (behind a long reader, say) wait no longer than that; it is then rolled back
// and tried again after a growing pause. Its statements have no time limit.
async function inTransactionWithRetries(connection: postgres.ReservedSql, name: string, options: MigrateOptions, work: () => Promise<void>): Promise<void> {
  const { lockTimeoutMs = 1000, attempts = 8, onRetry = () => {} } = options;
  for (let attempt = 1; ; attempt += 1) {
    await connection`begin`;
    try {
      await connection`select set_config('lock_timeout', ${`${lockTimeoutMs}ms`}, true), set_config('statement_timeout', '0', true)`;
      await work();
      await connection`commit`;
      return;
    } catch (error) {
      await connection`rollback`.catch(() => {});
      if (!isLockTimeout(error) || attempt >= attempts) throw error;
      onRetry(name, attempt, error);
      await sleep(Math.min(8000, 250 * 2 ** attempt) * (0.5 + Math.random() / 2));
    }
  }
}

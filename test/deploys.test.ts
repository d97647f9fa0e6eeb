// Deploys never stop the sale: a migration that cannot take its locks gives way to checkouts and tries
// again, and with MIGRATE=off an instance starts only on the schema it was written for.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { migrate, migrationFiles } from '../src/migrate.ts';
import { cleanUp, createDatabase, dropRedisPrefix, startInstance, testEnv, uniquePrefix, type Instance } from './helpers.ts';

// How long a report holds its read lock: long enough that a checkout stopped for it is told apart from
// one that waited about a lock timeout, on a slow machine too.
const readerHoldMs = 4000;

test('a migration queued behind a long reader holds checkouts up no longer than its lock timeout, then applies', { timeout: 60_000 }, async (t) => {
  const database = await createDatabase();
  const prefix = uniquePrefix();
  const dir = await mkdtemp(join(tmpdir(), 'flash-migration-'));
  let instance: Instance | undefined;
  let release = () => {};
  try {
    instance = await startInstance(testEnv(database, prefix));
    const items = (await database.sql<{ id: number }[]>`select id from items order by id limit 1000`).map((row) => row.id);
    // A report that reads checkout_attempts for seconds: its lock lets checkouts through, not a schema change.
    let reading!: () => void;
    const isReading = new Promise<void>((resolve) => (reading = resolve));
    const reader = database.sql.begin(async (tx) => {
      await tx`select count(*) from checkout_attempts`;
      reading();
      await new Promise<void>((resolve) => (release = resolve));
    });
    await isReading;

    let running = true;
    const latencies: number[] = [];
    const statuses = new Map<number, number>();
    const buyers = Array.from({ length: 8 }, async (_, client) => {
      for (let round = 0; running; round += 1) {
        const startedAt = performance.now();
        const response = await fetch(`${instance!.url}/checkout?user_id=deploy-${client}-${round}&id=${items[(client * 97 + round) % items.length]}`, { method: 'POST' });
        await response.arrayBuffer();
        latencies.push(performance.now() - startedAt);
        statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      }
    });

    // Needs an exclusive lock on checkout_attempts: it queues behind the reader, and checkouts behind it.
    await writeFile(join(dir, '9000_add_a_column.sql'), 'alter table checkout_attempts add column deploy_note text;\n');
    const retries: number[] = [];
    const migrating = migrate(database.sql, { dir, lockTimeoutMs: 300, attempts: 30, onRetry: (_file, attempt) => retries.push(attempt) });
    await new Promise((resolve) => setTimeout(resolve, readerHoldMs));
    release();
    await reader;
    assert.deepEqual(await migrating, ['9000_add_a_column.sql']);
    running = false;
    await Promise.all(buyers);

    const [column] = await database.sql`select 1 from information_schema.columns where table_name = 'checkout_attempts' and column_name = 'deploy_note'`;
    assert.ok(column, 'the migration applied once the reader was done');
    assert.ok(retries.length >= 2, `the migration gave way and tried again (${retries.length} retries)`);
    assert.deepEqual([...statuses.keys()], [200], `every checkout succeeded: ${JSON.stringify([...statuses])}`);
    // Without the lock timeout, checkouts stop for the reader's whole hold; with it, for about one timeout.
    const slowest = Math.max(...latencies);
    assert.ok(slowest < readerHoldMs / 2, `slowest checkout ${Math.round(slowest)} ms, the reader held its lock ${readerHoldMs} ms`);
    t.diagnostic(`${latencies.length} checkouts, slowest ${Math.round(slowest)} ms; ${retries.length} tries given up while the reader held its lock`);
  } finally {
    release();
    await cleanUp([() => instance?.stop(), () => database.drop(), () => dropRedisPrefix(prefix), () => rm(dir, { recursive: true })]);
  }
});

test('MIGRATE=off: an instance refuses a schema older or newer than it knows, saying which, and serves its own', { timeout: 60_000 }, async () => {
  const [previous, latest] = migrationFiles().slice(-2) as [string, string];
  const database = await createDatabase({ migrateThrough: previous });
  const prefix = uniquePrefix();
  let instance: Instance | undefined;
  try {
    const env = testEnv(database, prefix, { MIGRATE: 'off' });
    await assert.rejects(startInstance(env), (error: Error) => error.message.includes(`refusing to start: the database lacks migrations this version needs (${latest})`));
    const [missing] = await database.sql`select 1 from schema_migrations where version = ${latest}`;
    assert.equal(missing, undefined, 'MIGRATE=off applied nothing');

    await migrate(database.sql);
    await database.sql`insert into schema_migrations (version) values ('9999_from_a_newer_release.sql')`;
    await assert.rejects(startInstance(env), (error: Error) => error.message.includes('refusing to start: the database has migrations this version does not know (9999_from_a_newer_release.sql)'));

    await database.sql`delete from schema_migrations where version = '9999_from_a_newer_release.sql'`;
    instance = await startInstance(env);
    const sales = (await (await fetch(`${instance.url}/sales`)).json()) as { sales: { open: boolean }[] };
    assert.ok(sales.sales.some((sale) => sale.open), 'it serves, with the current sale open');
  } finally {
    await cleanUp([() => instance?.stop(), () => database.drop(), () => dropRedisPrefix(prefix)]);
  }
});

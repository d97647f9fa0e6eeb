// checkout_attempts over months: partitions by month made ahead of time, retention that drops whole
// partitions and nothing else, and migrations 0006-0008 bringing an existing table into that layout while
// checkouts go on.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { connect } from '../src/db.ts';
import { migrate } from '../src/migrate.ts';
import { newCode } from '../src/shop.ts';
import { createAttemptPartitions, dropOldAttemptPartitions, recordRefusedCheckouts } from '../src/store.ts';
import { cleanUp, createDatabase, currentSaleId, type TestDatabase } from './helpers.ts';

// A code as newCode() makes them, issued in another second.
function codeAt(at: Date): string {
  const bytes = randomBytes(16);
  bytes.writeUInt32BE(Math.floor(at.getTime() / 1000), 0);
  return bytes.toString('base64url');
}

const daysFromNow = (days: number) => new Date(Date.now() + days * 86_400_000);

async function partitionOf(database: TestDatabase, where: { code?: string; id?: number }): Promise<string> {
  const [row] = await database.sql<{ partition: string }[]>`
    select tableoid::regclass::text as partition from checkout_attempts
    where ${where.code === undefined ? database.sql`id = ${where.id!}` : database.sql`code = ${where.code}`}`;
  return row!.partition;
}

async function issue(database: TestDatabase, codes: string[], itemId: number, user = 'keeper') {
  const rows = await database.sql<{ outcome: string }[]>`
    select outcome from checkout(${codes.map(() => user)}::text[], ${codes.map(() => itemId)}::bigint[], ${codes}::text[], 600)`;
  assert.deepEqual(rows.map((row) => row.outcome), codes.map(() => 'issued'));
}

async function buy(database: TestDatabase, code: string): Promise<string> {
  const [row] = await database.sql<{ outcome: string }[]>`select outcome from purchase(${[code]}::text[])`;
  return row!.outcome;
}

describe('partitions and retention', () => {
  let database: TestDatabase;
  let items: number[] = [];

  before(async () => {
    database = await createDatabase();
    const saleId = await currentSaleId(database.sql, 50, 50);
    items = (await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id`).map((row) => row.id);
  });

  after(() => cleanUp([() => database?.drop()]));

  test('partitions cover at least the month ahead, and every attempt, refused ones too, lands in a month', async () => {
    const partitions = await database.sql<{ name: string; endsAt: Date }[]>`select name, ends_at as "endsAt" from attempt_partitions()`;
    const reach = Math.max(...partitions.map((partition) => partition.endsAt.getTime()));
    assert.ok(reach >= daysFromNow(28).getTime(), `partitions end ${new Date(reach).toISOString()}`);

    const code = newCode();
    await issue(database, [code], items[0]!);
    assert.notEqual(await partitionOf(database, { code }), 'checkout_attempts_other');
    await recordRefusedCheckouts(database.sql, [{ outcome: 'rate_limited', userId: 'flood', itemId: null, detail: '/checkout?user_id=flood' }]);
    const [refused] = await database.sql<{ id: number; keyed: boolean }[]>`
      select id, code_key is not null as keyed from checkout_attempts where user_id = 'flood'`;
    assert.ok(refused!.keyed, 'a refused attempt gets a key of its own time');
    assert.notEqual(await partitionOf(database, { id: refused!.id }), 'checkout_attempts_other');
  });

  test('the scheduler makes months ahead once: a second call makes none', async () => {
    const made = await database.sql<{ made: number }[]>`select create_attempt_partitions(4) as made`;
    assert.ok(made[0]!.made >= 1, `made ${made[0]!.made}`);
    assert.equal(await createAttemptPartitions(database.sql), 0);
    const names = (await database.sql<{ name: string }[]>`select name from attempt_partitions() order by ends_at`).map((row) => row.name);
    assert.equal(new Set(names).size, names.length);
    const reach = await database.sql<{ endsAt: Date }[]>`select max(ends_at) as "endsAt" from attempt_partitions()`;
    assert.ok(reach[0]!.endsAt.getTime() >= daysFromNow(4 * 28).getTime());
  });

  test('retention detaches and drops whole partitions past the setting, and codes in the others still buy meanwhile', async () => {
    // Codes of two months to come, as if issued then: one in two months, the others in three.
    const later = codeAt(daysFromNow(62));
    const latest = codeAt(daysFromNow(95));
    await issue(database, [later], items[2]!, 'later');
    await issue(database, [latest], items[3]!, 'latest');
    const live = Array.from({ length: 6 }, (_, index) => codeAt(new Date(daysFromNow(95).getTime() + index * 1000)));
    for (const [index, code] of live.entries()) await issue(database, [code], items[4 + index]!, `live-${index}`);
    const laterPartition = await partitionOf(database, { code: later });
    const latestPartition = await partitionOf(database, { code: latest });
    assert.notEqual(laterPartition, latestPartition);

    // As if it were 100 days from now with 31 days kept: the partitions that end before day 69 go.
    const at = daysFromNow(100);
    const expected = (await database.sql<{ name: string }[]>`
      select name from attempt_partitions() where ends_at <= ${at} - interval '31 days' order by ends_at`).map((row) => row.name);
    assert.ok(expected.includes(laterPartition) && !expected.includes(latestPartition), expected.join());
    const kept = await database.sql<{ count: number }[]>`select count(*) as count from checkout_attempts where code_key >= code_key(${latest})`;

    // Purchases of codes in a kept month run while the others go: each is bought, as without retention.
    const buying = Promise.all(live.map((code) => buy(database, code)));
    const dropped = await dropOldAttemptPartitions(database.sql, 31, at);
    assert.deepEqual(dropped, expected);
    assert.deepEqual(await buying, live.map(() => 'purchased'));

    const left = (await database.sql<{ name: string }[]>`select name from attempt_partitions()`).map((row) => row.name);
    for (const name of dropped) {
      assert.ok(!left.includes(name));
      const [table] = await database.sql`select to_regclass(${name}) as oid`;
      assert.equal(table!.oid, null, `${name} is dropped, not only detached`);
    }
    assert.equal(await buy(database, later), 'code_unknown', 'a code of a dropped month is gone with it');
    assert.equal(await buy(database, latest), 'purchased', 'a code of a kept month still buys');
    assert.equal(await buy(database, latest), 'replayed');
    const still = await database.sql<{ count: number }[]>`select count(*) as count from checkout_attempts where code_key >= code_key(${latest})`;
    assert.equal(still[0]!.count, kept[0]!.count, 'the kept partitions lost no row');
  });
});

describe('migrations 0006-0008 on a table with history', () => {
  let database: TestDatabase;

  before(async () => {
    database = await createDatabase({ migrateThrough: '0005_sold_counts.sql' });
  });

  after(() => cleanUp([() => database?.drop()]));

  test('codes issued before it still buy and replay; refused attempts get keys; checkouts go on meanwhile', { timeout: 180_000 }, async (t) => {
    const { sql } = database;
    const saleId = await currentSaleId(sql, 100, 100);
    const items = (await sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id`).map((row) => row.id);
    const bought = newCode();
    const unused = newCode();
    await issue(database, [bought], items[0]!, 'before');
    await issue(database, [unused], items[5]!, 'before');
    assert.equal(await buy(database, bought), 'purchased');
    // A code of the days before migration 0004 (random first bytes), and a million attempts of history:
    // refused ones without a key, as they were stored then.
    const legacy = randomBytes(16).toString('base64url');
    await sql`
      insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_key, expires_at)
      values ('issued', 'legacy', ${items[1]!}, ${saleId}, ${legacy}, code_key(${legacy}), now() + interval '1 hour')`;
    const rows = 1_000_000;
    await sql`
      insert into checkout_attempts (created_at, outcome, user_id, item_id, sale_id, code_key, detail)
      select now() - interval '20 days' + n * interval '1 second',
             case when n % 4 = 0 then 'rate_limited' else 'item_sold' end, 'u' || n % 5000, ${items[2]!}, ${saleId},
             case when n % 4 = 0 then null
                  else substring(int8send(extract(epoch from now() - interval '20 days')::bigint + n) from 5 for 4) || sha256(int8send(n)) end,
             case when n % 4 = 0 then '/checkout?user_id=u' || n % 5000 end
      from generate_series(1, ${rows}) as n`;
    const before = await sql<{ count: number }[]>`select count(*) as count from checkout_attempts`;

    // Checkouts on another connection while the migration runs: the longest wait is the lock it held.
    let migrating = true;
    const waits: number[] = [];
    const checkouts = (async () => {
      const other = connect(database.url, { max: 1 });
      while (migrating) {
        const started = performance.now();
        await other`select outcome from checkout(${['during']}::text[], ${[items[3]!]}::bigint[], ${[newCode()]}::text[], 600)`;
        waits.push(performance.now() - started);
      }
      await other.end({ timeout: 5 });
    })();
    const startedAt = performance.now();
    const applied = await migrate(sql);
    assert.deepEqual(applied.slice(0, 3), ['0006_attempt_keys.sql', '0007_attempt_keys_backfill.sql', '0008_partitioned_attempts.sql']);
    const migrationMs = performance.now() - startedAt;
    migrating = false;
    await checkouts;
    const longest = Math.max(...waits);
    t.diagnostic(`migrations 0006-0008 over ${before[0]!.count} attempts: ${Math.round(migrationMs)} ms; ${waits.length} checkouts meanwhile, the longest waited ${Math.round(longest)} ms`);
    assert.ok(waits.length > 1, 'checkouts went on while the table was migrated');

    const after = await sql<{ count: number; keyless: number }[]>`
      select count(*) as count, count(*) filter (where code_key is null) as keyless from checkout_attempts`;
    assert.equal(after[0]!.count, before[0]!.count + waits.length, 'every attempt kept, and every checkout made meanwhile');
    assert.equal(after[0]!.keyless, 0);
    assert.equal(await buy(database, bought), 'replayed');
    assert.equal(await buy(database, unused), 'purchased');
    assert.equal(await buy(database, legacy), 'purchased', 'a code from before migration 0004 is found in the default partition');
    const fresh = newCode();
    await issue(database, [fresh], items[4]!, 'after');
    assert.equal(await buy(database, fresh), 'purchased');
    const [next] = await sql<{ id: number }[]>`select id from checkout_attempts where code = ${fresh}`;
    const [largest] = await sql<{ id: number }[]>`select max(id) as id from checkout_attempts where code is distinct from ${fresh}`;
    assert.ok(next!.id > largest!.id, 'ids go on from the largest one');
  });
});

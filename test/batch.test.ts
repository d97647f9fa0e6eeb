import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { coalesce } from '../src/batch.ts';
import * as store from '../src/store.ts';
import { createDatabase, currentSaleId, type TestDatabase } from './helpers.ts';

// A queue that no test below fills or waits out.
const roomy = { maxQueued: 1000, queueTimeoutMs: 60_000 };

test('coalesce: callers arriving while a statement runs go together, each gets its own answer', async () => {
  const batches: number[][] = [];
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  const double = coalesce(async (inputs: number[]) => {
    batches.push(inputs);
    if (batches.length === 1) await gate; // the first statement is slow: the others queue behind it
    return inputs.map((input) => input * 2);
  }, { maxBatch: 3, maxInFlight: 1, ...roomy });

  const first = double(1);
  await new Promise((resolve) => setImmediate(resolve));
  const rest = [2, 3, 4, 5, 6, 7].map((input) => double(input));
  release();
  assert.deepEqual(await Promise.all([first, ...rest]), [2, 4, 6, 8, 10, 12, 14]);
  assert.deepEqual(batches, [[1], [2, 3, 4], [5, 6, 7]], 'batches of at most maxBatch, in arrival order');
});

test('coalesce: a second statement starts alongside the first only when a full batch is waiting', async () => {
  const started: number[][] = [];
  const gates: (() => void)[] = [];
  const echo = coalesce(async (inputs: number[]) => {
    started.push(inputs);
    await new Promise<void>((resolve) => gates.push(resolve));
    return inputs;
  }, { maxBatch: 3, maxInFlight: 2, ...roomy });
  const tick = () => new Promise((resolve) => setImmediate(resolve));

  const calls = [echo(1)];
  await tick();
  calls.push(echo(2), echo(3));
  await tick();
  assert.deepEqual(started, [[1]], 'two waiting are less than a batch: they wait for the first statement');
  calls.push(echo(4));
  await tick();
  assert.deepEqual(started, [[1], [2, 3, 4]], 'a full batch waiting starts a second statement at once');
  calls.push(echo(5));
  await tick();
  assert.equal(started.length, 2, 'never more than maxInFlight statements');
  gates.forEach((open) => open());
  await tick();
  gates.slice(2).forEach((open) => open());
  assert.deepEqual(await Promise.all(calls), [1, 2, 3, 4, 5]);
  assert.deepEqual(started, [[1], [2, 3, 4], [5]]);
});

test('coalesce: with lingerMs, a batch that is not full waits for company, before the first statement and after each', async () => {
  const started: number[][] = [];
  const gates: (() => void)[] = [];
  const echo = coalesce(async (inputs: number[]) => {
    started.push(inputs);
    await new Promise<void>((resolve) => gates.push(resolve));
    return inputs;
  }, { maxBatch: 3, maxInFlight: 1, lingerMs: 200, ...roomy });
  const tick = () => new Promise((resolve) => setImmediate(resolve));
  const outlast = () => new Promise((resolve) => setTimeout(resolve, 250)); // set after the linger: fires after it

  const calls = [echo(1)];
  await tick();
  calls.push(echo(2));
  await tick();
  assert.deepEqual(started, [], 'a lone call lingers');
  await outlast();
  assert.deepEqual(started, [[1, 2]], 'the lingering calls go together');
  calls.push(echo(3));
  gates[0]!();
  await tick();
  assert.equal(started.length, 1, 'after a statement, a call that is not a batch lingers again');
  await outlast();
  assert.deepEqual(started, [[1, 2], [3]]);
  gates[1]!();
  await tick();
  calls.push(echo(4), echo(5), echo(6));
  await tick();
  assert.deepEqual(started.at(-1), [4, 5, 6], 'a full batch does not linger');
  gates[2]!();
  assert.deepEqual(await Promise.all(calls), [1, 2, 3, 4, 5, 6]);
});

test('coalesce: a failed statement fails its own callers only', async () => {
  const run = coalesce(async (inputs: string[]) => {
    if (inputs.includes('bad')) throw new Error('statement failed');
    return inputs.map((input) => input.toUpperCase());
  }, { maxBatch: 10, maxInFlight: 1, ...roomy });
  const bad = run('bad');
  const sameBatch = run('x');
  await assert.rejects(bad, /statement failed/);
  await assert.rejects(sameBatch, /statement failed/);
  assert.equal(await run('later'), 'LATER');
});

test('coalesce: a call that cannot start within its budget, or finds the queue full, is refused at once and never run', async () => {
  const ran: number[] = [];
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  let shed = 0;
  const run = coalesce(async (inputs: number[]) => {
    ran.push(...inputs);
    await gate; // the first statement hangs, as on a frozen server
    return inputs;
  }, { maxBatch: 64, maxInFlight: 1, maxQueued: 3, queueTimeoutMs: 100 }, () => (shed += 1));

  const first = run(1);
  await new Promise((resolve) => setImmediate(resolve));
  const started = performance.now();
  const settled: string[] = [];
  const waiting = [run(2), run(3), run(4)].map((call) =>
    call.then(() => 'answered', (error: { code?: string }) => error.code).finally(() => settled.push('waiting')),
  );
  const full = await run(5).then(() => 'answered', (error: { code?: string }) => error.code).finally(() => settled.push('full'));
  assert.equal(full, 'overloaded', 'a fourth waiting call finds the queue full');
  assert.deepEqual(settled, ['full'], 'refused at once, before any waiting call ran out of budget');
  assert.deepEqual(await Promise.all(waiting), ['overloaded', 'overloaded', 'overloaded']);
  const waitedMs = performance.now() - started;
  assert.ok(waitedMs >= 90, `refused when the budget ran out, not before (${waitedMs} ms)`);
  release();
  assert.equal(await first, 1);
  assert.equal(await run(6), 6, 'the queue serves again once the statement returns');
  assert.deepEqual(ran, [1, 6], 'no refused call ever reached the statement');
  assert.equal(shed, 4);
});

let database: TestDatabase;
before(async () => {
  database = await createDatabase();
  await database.sql`select * from ensure_current_sale(3600, 100, 2)`;
});
after(async () => database.drop());

test('one purchase statement decides a mixed batch exactly as one at a time would', async () => {
  const saleId = await currentSaleId(database.sql, 100, 2);
  const code = (name: string) => name.padEnd(22, '0');
  const checkouts = await store.checkout(
    database.sql,
    [
      { userId: 'ann', itemId: 1, code: code('a1') },
      { userId: 'ann', itemId: 2, code: code('a2') },
      { userId: 'ann', itemId: 3, code: code('a3') },
      { userId: 'bob', itemId: 1, code: code('b1') },
      { userId: 'cid', itemId: 4, code: code('c4') },
      { userId: 'bob', itemId: 999_999, code: code('bx') },
    ],
    600,
  );
  assert.deepEqual(checkouts.map((row) => row.outcome), ['issued', 'issued', 'issued', 'issued', 'issued', 'item_unknown']);

  const results = await store.purchase(database.sql, [code('a1'), code('b1'), code('a2'), code('a3'), code('a1'), code('nope'), code('c4')]);
  assert.deepEqual(
    results.map((row) => [row.outcome, row.itemId, row.userId]),
    [
      ['purchased', 1, 'ann'],
      ['item_sold', 1, 'bob'],
      ['purchased', 2, 'ann'],
      ['limit_reached', 3, 'ann'],
      ['replayed', 1, 'ann'],
      ['code_unknown', null, null],
      ['purchased', 4, 'cid'],
    ],
  );
  assert.equal(results[4]!.purchasedAt?.getTime(), results[0]!.purchasedAt?.getTime(), 'the replay repeats the receipt');

  // Refusals leave nothing behind: bob, who bought nothing, has no row; the counts match the items.
  const buyers = await database.sql<{ userId: string; bought: number }[]>`
    select user_id as "userId", bought from sale_buyers where sale_id = ${saleId} order by user_id`;
  assert.deepEqual([...buyers], [{ userId: 'ann', bought: 2 }, { userId: 'cid', bought: 1 }]);
  const [item3] = await database.sql`select buyer_id from items where id = 3`;
  assert.equal(item3!.buyer_id, null);
});

test('a checkout statement sent again (a lost connection, retried) records nothing twice and answers the same', async () => {
  const saleId = await currentSaleId(database.sql, 100, 2);
  const [free] = await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} and buyer_id is null order by id desc limit 1`;
  const requests = [
    { userId: 'dan', itemId: free!.id, code: 'retry-issued'.padEnd(22, '0') },
    { userId: 'dan', itemId: 999_999, code: 'retry-unknown'.padEnd(22, '0') },
  ];
  const first = await store.checkout(database.sql, requests, 600);
  const again = await store.checkout(database.sql, requests, 600);
  assert.deepEqual(again, first);
  const [count] = await database.sql<{ count: number }[]>`select count(*) as count from checkout_attempts where user_id = 'dan'`;
  assert.equal(count!.count, 2);
});

// A young table (a fresh database, the first sale) has no statistics, and each connection keeps the plans
// it made then (generic plans, migration 0003) while the tables grow: a plan that read a tiny table whole
// would read it whole at every call later on. The batched functions must only ever look rows up by key.
test('plans made on a fresh database, still used once the tables have grown, read only the rows they need', async () => {
  const fresh = await createDatabase();
  try {
    await fresh.sql`select * from ensure_current_sale(3600, 100, 2)`;
    const code = (name: string) => name.padEnd(22, 'z');
    // One connection: the plans it caches now are the ones it uses below.
    const connection = await fresh.sql.reserve();
    let reads: { table: string; rows: number }[];
    try {
      await store.checkout(connection, [{ userId: 'ann', itemId: 1, code: code('a1') }], 600);
      await store.purchase(connection, [code('a1'), code('unknown')]);
      // The tables grow, with no ANALYZE (autovacuum is far too slow to run in between).
      await connection`
        insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_key, expires_at)
        select 'issued', 'grow' || n, 1, 1, 'grow' || n, code_key('grow' || n), now() from generate_series(1, 5000) n`;
      await connection`insert into sale_buyers (sale_id, user_id, bought) select 1, 'grow' || n, 1 from generate_series(1, 5000) n`;
      // pg_stat_xact_user_tables counts this transaction's reads (and earlier unflushed ones): take the difference.
      const counts = () => connection<{ table: string; rows: number }[]>`
        select relname as table, seq_tup_read + coalesce(idx_tup_fetch, 0) as rows from pg_stat_xact_user_tables
        where relname in ('checkout_attempts', 'items', 'sale_buyers', 'sales') order by relname`;
      await connection`begin`;
      const before = await counts();
      await store.checkout(connection, [{ userId: 'dee', itemId: 5, code: code('d5') }, { userId: 'eve', itemId: 6, code: code('e6') }], 600);
      await store.purchase(connection, [code('d5'), code('e6'), code('unknown')]);
      reads = (await counts()).map((row, index) => ({ table: row.table, rows: row.rows - before[index]!.rows }));
      await connection`rollback`;
    } finally {
      connection.release();
    }
    assert.equal(reads.length, 4, 'the statistics of this transaction cover the four tables');
    // Two checkouts and three purchases look up a handful of rows in each table, whatever its size.
    assert.deepEqual(reads.filter((row) => row.rows > 20), [], 'tables read beyond the rows looked up');
  } finally {
    await fresh.drop();
  }
});

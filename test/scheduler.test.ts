// The scheduler over long stretches: it sleeps in bounded steps (Node fires a timer of over ~24.8 days
// at once), and a boundary that passed while no instance ran opens no sale afterwards.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyBaseLogger } from 'fastify';
import type { Sql } from '../src/db.ts';
import { startScheduler } from '../src/scheduler.ts';
import { cleanUp, createDatabase, type TestDatabase } from './helpers.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const quiet = { info() {}, warn() {}, error() {} } as unknown as FastifyBaseLogger;

let database: TestDatabase;

before(async () => {
  database = await createDatabase();
});

after(() => cleanUp([() => database?.drop()]));

// The same connection, counting the statements that name `text`.
function counting(sql: Sql, text: string) {
  const counter = { calls: 0, sql: undefined as unknown as Sql };
  counter.sql = ((strings: TemplateStringsArray, ...values: unknown[]) => {
    if (strings.join('').includes(text)) counter.calls += 1;
    return sql(strings, ...(values as never[]));
  }) as unknown as Sql;
  return counter;
}

test('the longest SALE_INTERVAL does not spin the scheduler: one look at the sale, not one per millisecond', async () => {
  const counter = counting(database.sql, 'ensure_current_sale');
  const rules = { saleIntervalSeconds: 366 * 24 * 3600, saleSize: 5, perUserLimit: 2 };
  const warnings: string[] = [];
  const onWarning = (warning: Error) => warnings.push(warning.name);
  process.on('warning', onWarning);
  const scheduler = startScheduler(counter.sql, rules, quiet);
  try {
    await sleep(1500);
  } finally {
    scheduler.stop();
    process.off('warning', onWarning);
  }
  assert.equal(counter.calls, 1, `ensure_current_sale called ${counter.calls} times in 1.5 s`);
  assert.ok(!warnings.includes('TimeoutOverflowWarning'), 'no timer longer than Node allows');
  const [sale] = await database.sql<{ size: number }[]>`select size from sales where size = 5`;
  assert.ok(sale, 'the current sale of the long interval exists');
  await database.sql`delete from items where sale_id in (select id from sales where size = 5)`;
  await database.sql`delete from sales where size = 5`;
});

test('a boundary that passed while no scheduler ran opens no sale afterwards; the current one opens at start', { timeout: 30_000 }, async () => {
  const rules = { saleIntervalSeconds: 2, saleSize: 3, perUserLimit: 2 };
  const salesOfSize3 = () =>
    database.sql<{ epoch: number }[]>`
      select extract(epoch from starts_at)::float8 as epoch from sales where size = 3 order by starts_at`;
  const waitForSales = async (count: number) => {
    const deadline = Date.now() + 5000;
    while ((await salesOfSize3()).length < count) {
      assert.ok(Date.now() < deadline, `no sale number ${count}`);
      await sleep(50);
    }
  };

  const first = startScheduler(database.sql, rules, quiet);
  await waitForSales(1);
  first.stop();
  // Two boundaries or more pass with no scheduler running.
  await sleep(4500);
  const second = startScheduler(database.sql, rules, quiet);
  try {
    await waitForSales(2);
    const [clock] = await database.sql<{ boundary: number }[]>`
      select extract(epoch from sale_boundary(now(), 2))::float8 as boundary`;
    const sales = await salesOfSize3();
    assert.ok(sales[1]!.epoch - sales[0]!.epoch >= 4, `the missed boundaries stay empty: ${JSON.stringify(sales)}`);
    assert.ok(clock!.boundary - sales[1]!.epoch <= 2, 'the sale opened at restart is the current one (or the one before)');
  } finally {
    second.stop();
  }
});

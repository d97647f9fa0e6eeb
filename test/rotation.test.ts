// Sale rotation with several instances: three service processes race at every boundary of a 2-second
// SALE_INTERVAL against one database. PostgreSQL's unique starts_at must let exactly one of them create
// each sale, with all its items, at every boundary, without gaps; older unsold sales keep selling.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { auditSales, violations } from '../src/audit.ts';
import { createDatabase, dropRedisPrefix, startInstance, testEnv, uniquePrefix, stopWithin, type Instance, type TestDatabase } from './helpers.ts';

const intervalSeconds = 2;
const saleSize = 10_000;
const defaultPerUserLimit = 10;
const prefix = uniquePrefix();

let database: TestDatabase | undefined;
const instances: Instance[] = [];

// Last resort if the runner dies before after(): no service process outlives this file.
process.once('exit', () => {
  for (const instance of instances) instance.child.kill('SIGKILL');
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function request(instance: Instance, method: string, path: string) {
  const response = await fetch(`${instance.url}${path}`, { method, signal: AbortSignal.timeout(5000) });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

function outputs(): string {
  return instances.map((instance, index) => `--- instance ${index} ---\n${instance.output()}`).join('\n');
}

type SaleRow = { id: number; epoch: number; size: number; perUserLimit: number; items: number; createdLagMs: number };

async function readSales(db: TestDatabase) {
  const sales = await db.sql<SaleRow[]>`
    select s.id, extract(epoch from s.starts_at)::float8 as epoch, s.size, s.per_user_limit as "perUserLimit",
           (select count(*) from items i where i.sale_id = s.id) as items,
           (extract(epoch from s.created_at - s.starts_at) * 1000)::float8 as "createdLagMs"
    from sales s order by s.starts_at`;
  const [clock] = await db.sql<{ boundary: number; sinceBoundaryMs: number }[]>`
    select extract(epoch from sale_boundary(now(), ${intervalSeconds}))::float8 as boundary,
           (extract(epoch from now() - sale_boundary(now(), ${intervalSeconds})) * 1000)::float8 as "sinceBoundaryMs"`;
  return { sales, boundary: clock!.boundary, sinceBoundaryMs: clock!.sinceBoundaryMs };
}

before(async () => {
  database = await createDatabase();
});

after(async () => {
  // SIGKILL whatever the test did not stop cleanly, then drop everything this file made.
  await Promise.all(
    instances.map(async (instance) => {
      if (instance.child.exitCode === null && instance.child.signalCode === null) {
        instance.child.kill('SIGKILL');
        await instance.stop('SIGKILL');
      }
    }),
  );
  await database?.drop();
  await dropRedisPrefix(prefix).catch(() => {});
});

test('three instances open exactly one full sale per 2-second boundary, and older sales still sell', { timeout: 90_000 }, async () => {
  const db = database!;
  const [start] = await db.sql<{ boundary: number }[]>`
    select extract(epoch from sale_boundary(now(), ${intervalSeconds}))::float8 as boundary`;
  const env = testEnv(db, prefix, { SALE_INTERVAL: String(intervalSeconds) });

  // Start all three at once; keep every one that started so that after() can kill it even if another failed.
  const started = await Promise.allSettled([startInstance(env), startInstance(env), startInstance(env)]);
  for (const result of started) if (result.status === 'fulfilled') instances.push(result.value);
  const failed = started.find((result) => result.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;

  const [ready] = await db.sql<{ boundary: number }[]>`
    select extract(epoch from sale_boundary(now(), ${intervalSeconds}))::float8 as boundary`;

  // About four boundaries pass while the three schedulers race.
  await sleep(8_000);

  // The current boundary's sale must exist shortly after the boundary (scheduler slack + 10,000 inserts).
  let state = await readSales(db);
  const deadline = Date.now() + 1500;
  while (state.sales.at(-1)?.epoch !== state.boundary && Date.now() < deadline) {
    await sleep(100);
    state = await readSales(db);
  }
  const { sales, boundary } = state;
  const epochs = sales.map((sale) => sale.epoch);
  const context = `boundaries ${JSON.stringify(epochs)}, current ${boundary}\n${outputs()}`;

  assert.ok(sales.length > 0, `no sale at all\n${context}`);
  assert.equal(epochs.at(-1), boundary, `the current boundary's sale is missing\n${context}`);
  const first = sales[0]!;
  assert.ok(first.epoch >= start!.boundary && first.epoch <= ready!.boundary, `the first sale is not from the start-up boundary\n${context}`);
  assert.ok(sales.length >= 4, `expected at least 4 boundaries in ~8 s, got ${sales.length}\n${context}`);
  for (const [index, sale] of sales.entries()) {
    assert.equal(sale.epoch % intervalSeconds, 0, `sale ${sale.id} does not start on a boundary\n${context}`);
    if (index > 0) {
      assert.equal(sale.epoch - sales[index - 1]!.epoch, intervalSeconds, `gap or misplaced sale before sale ${sale.id}\n${context}`);
      // Opened by a scheduler at its boundary, not lazily by a later request.
      assert.ok(sale.createdLagMs >= 0 && sale.createdLagMs < 1000, `sale ${sale.id} created ${sale.createdLagMs} ms after its boundary\n${context}`);
    }
    assert.equal(sale.size, saleSize, `sale ${sale.id} size`);
    assert.equal(sale.perUserLimit, defaultPerUserLimit, `sale ${sale.id} per-user limit`);
    assert.equal(sale.items, saleSize, `sale ${sale.id} has ${sale.items} items although three instances raced\n${context}`);
  }
  const [totals] = await db.sql<{ items: number }[]>`select count(*) as items from items`;
  assert.equal(totals!.items, saleSize * sales.length, 'items outside the sales counted');

  // The first sale, several boundaries old and unsold, still sells through any instance.
  const [item] = await db.sql<{ id: number }[]>`select id from items where sale_id = ${first.id} order by id limit 1`;
  const seller = instances[1]!;
  const checkout = await request(seller, 'POST', `/checkout?user_id=rotation-user&id=${item!.id}`);
  assert.equal(checkout.status, 200, JSON.stringify(checkout.body));
  assert.equal(checkout.body.sale_id, first.id);
  const purchase = await request(seller, 'POST', `/purchase?code=${checkout.body.code as string}`);
  assert.equal(purchase.status, 200, JSON.stringify(purchase.body));
  assert.equal(purchase.body.message, 'Purchase successful');
  assert.equal(purchase.body.item_id, item!.id);
  assert.equal(purchase.body.sale_id, first.id);
  assert.equal(purchase.body.user_id, 'rotation-user');
  const [sold] = await db.sql<{ buyerId: string | null }[]>`select buyer_id as "buyerId" from items where id = ${item!.id}`;
  assert.equal(sold!.buyerId, 'rotation-user');

  // Every instance lists the open sales, newest first, and the purchase within the listing's snapshot
  // second and the sold figure's half second.
  for (const instance of instances) {
    let listed = await request(instance, 'GET', '/sales?limit=100');
    for (const deadline = Date.now() + 3000; Date.now() < deadline; listed = await request(instance, 'GET', '/sales?limit=100')) {
      const entry = (listed.body.sales as { id: number; sold: number }[]).find((sale) => sale.id === first.id);
      if (entry?.sold === 1) break;
      await sleep(100);
    }
    assert.equal(listed.status, 200, JSON.stringify(listed.body));
    const list = listed.body.sales as { id: number; starts_at: string; items: number; sold: number; open: boolean }[];
    assert.ok(list.length >= sales.length, `lists ${list.length} sales, the database has ${sales.length}`);
    const times = list.map((sale) => Date.parse(sale.starts_at));
    for (let index = 1; index < times.length; index += 1) {
      assert.ok(times[index - 1]! > times[index]!, `not newest first: ${JSON.stringify(list.map((sale) => sale.starts_at))}`);
    }
    assert.ok(list.every((sale) => sale.open && sale.items === saleSize), 'every listed sale is open with 10,000 items');
    const listedFirst = list.find((sale) => sale.id === first.id);
    assert.ok(listedFirst, 'the oldest, still open sale is listed');
    assert.equal(listedFirst.sold, 1);
    assert.ok(Date.parse(listed.body.next_sale_at as string) > times[0]!, 'next_sale_at is after the newest sale');
  }

  const audit = await auditSales(db.sql);
  assert.ok(audit.length >= sales.length);
  for (const sale of audit) assert.deepEqual(violations(sale), [], `sale ${sale.saleId}`);

  // An orderly drain: every instance exits 0 on SIGTERM, promptly.
  const codes = await Promise.all(instances.map((instance) => stopWithin(instance, 5000)));
  assert.deepEqual(codes, [0, 0, 0], `exit codes on SIGTERM\n${outputs()}`);
});

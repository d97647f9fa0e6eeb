// READ_DATABASE_URL: browsing goes to a streaming replica while checkout and purchase decide on the
// primary. The test runs its own primary and a standby of it (the shared server allows no replication),
// pauses the standby's replay, and sees the browsing endpoints answer the standby's older state while
// the sale itself stays correct on the primary.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { auditSales, violations } from '../src/audit.ts';
import { connect } from '../src/db.ts';
import { cleanUp, dropRedisPrefix, startInstance, testEnv, uniquePrefix, type Instance } from './helpers.ts';
import { startCluster, type Cluster } from './postgres-cluster.ts';

const prefix = uniquePrefix();
let primary: Cluster | undefined;
let standby: Cluster | undefined;
let instance: Instance | undefined;

before(async () => {
  primary = await startCluster();
  standby = await startCluster({ standbyOf: primary });
});

after(() =>
  cleanUp([
    () => instance?.stop('SIGKILL'),
    () => standby?.stop(),
    () => primary?.stop(),
    () => dropRedisPrefix(prefix),
  ]),
);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(method: string, path: string) {
  const response = await fetch(`${instance!.url}${path}`, { method, signal: AbortSignal.timeout(5000) });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

// Until `check` holds of the answer to GET `path`, for at most 10 s.
async function eventually(path: string, check: (body: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const reply = await call('GET', path);
    if (reply.status === 200 && check(reply.body)) return reply.body;
    assert.ok(Date.now() < deadline, `GET ${path} never matched: ${reply.status} ${JSON.stringify(reply.body)}`);
    await sleep(100);
  }
}

test('browsing reads the replica, checkout and purchase decide on the primary', { timeout: 120_000 }, async () => {
  const env = testEnv({ url: primary!.url('flash') }, prefix, {
    READ_DATABASE_URL: standby!.url('flash'),
    SALE_SIZE: '20',
    PER_USER_LIMIT: '2',
  });
  instance = await startInstance(env);
  const onPrimary = connect(primary!.url('flash'), { max: 1 });
  const onStandby = connect(standby!.url('flash'), { max: 1 });
  try {
    // The sale opened on the primary reaches the standby (the database itself too: the instance was ready
    // once the primary had it), and browsing lists it.
    const [sale] = await onPrimary<{ id: number }[]>`select id from sales order by starts_at desc limit 1`;
    const saleId = sale!.id;
    const listing = await eventually('/sales', (body) => (body.sales as { id: number }[]).some((entry) => entry.id === saleId));
    const [recovery] = await onStandby<{ standby: boolean }[]>`select pg_is_in_recovery() as standby`;
    assert.equal(recovery!.standby, true, 'the read server is a standby');
    assert.equal((listing.sales as { items: number }[])[0]!.items, 20);
    const page = await call('GET', `/sales/${saleId}/items?available=true&limit=3`);
    const [first, second] = (page.body.items as { id: number }[]).map((item) => item.id);

    // The standby stops replaying: from here on it shows the past.
    await onStandby`select pg_wal_replay_pause()`;
    const checkout = await call('POST', `/checkout?user_id=reader&id=${first}`);
    assert.equal(checkout.status, 200);
    const purchase = await call('POST', `/purchase?code=${checkout.body.code as string}`);
    assert.equal(purchase.status, 200, JSON.stringify(purchase.body));

    // Browsing answers from the standby: the item still looks unsold, the buyer has nothing yet.
    await sleep(1500); // past the sold figure's refresh and the listing's snapshot
    assert.equal((await call('GET', `/items/${first}`)).body.sold, false);
    assert.deepEqual((await call('GET', '/users/reader/purchases')).body.purchases, []);
    assert.equal((await call('GET', `/sales/${saleId}`)).body.sold, 0);
    const available = await call('GET', `/sales/${saleId}/items?available=true&limit=1`);
    assert.equal((available.body.items as { id: number }[])[0]!.id, first);

    // The sale is decided on the primary all the same: the item cannot be bought twice.
    const late = await call('POST', `/checkout?user_id=late&id=${first}`);
    assert.equal(late.status, 409);
    assert.equal(late.body.error, 'item_sold');
    const [row] = await onPrimary<{ buyer: string }[]>`select buyer_id as buyer from items where id = ${first!}`;
    assert.equal(row!.buyer, 'reader');

    // Replay resumes: browsing catches up with the primary.
    await onStandby`select pg_wal_replay_resume()`;
    await eventually(`/items/${first}`, (body) => body.sold === true);
    await eventually('/users/reader/purchases', (body) => (body.purchases as unknown[]).length === 1);
    await eventually(`/sales/${saleId}`, (body) => body.sold === 1);
    const again = await call('POST', `/checkout?user_id=reader&id=${second}`);
    assert.equal((await call('POST', `/purchase?code=${again.body.code as string}`)).status, 200);
    await eventually('/sales', (body) => (body.sales as { id: number; sold: number }[]).some((entry) => entry.id === saleId && entry.sold === 2));

    for (const audit of await auditSales(onPrimary)) assert.deepEqual(violations(audit), [], `sale ${audit.saleId}`);
  } finally {
    await onPrimary.end({ timeout: 5 });
    await onStandby.end({ timeout: 5 });
  }
});

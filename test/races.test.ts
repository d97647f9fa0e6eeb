// Races against two real service processes sharing one database and one Redis prefix: the per-user
// limit under a burst, one item wanted by many, and a whole sale drained by thousands of shoppers.
// Every test ends with the invariant audit of every sale.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test, type TestContext } from 'node:test';
import { Pool } from 'undici';
import { auditSales, violations } from '../src/audit.ts';
import {
  cleanUp,
  createDatabase,
  currentSaleId,
  dropRedisPrefix,
  readJson,
  startInstance,
  testEnv,
  uniquePrefix,
  type Instance,
  type TestDatabase,
} from './helpers.ts';

const connectionsPerInstance = 48;
const requestTimeoutMs = 30_000;

let database: TestDatabase | undefined;
let saleId = 0;
const prefix = uniquePrefix();
const instances: Instance[] = [];
const pools: Pool[] = [];
let turn = 0;

type Item = { id: number; sale_id: number; sold: boolean };
type Body = {
  error?: string;
  message?: string;
  code?: string;
  user_id?: string;
  item_id?: number;
  sale_id?: number;
  items?: Item[];
  next_after?: number | null;
};
type Reply = { status: number; body: Body; instance: number };

// One request to the next instance in turn, its body read whole: the two instances take alternate requests.
async function send(method: 'GET' | 'POST', path: string): Promise<Reply> {
  const instance = turn++ % pools.length;
  const response = await pools[instance]!.request({
    method,
    path,
    headersTimeout: requestTimeoutMs,
    bodyTimeout: requestTimeoutMs,
  });
  return { status: response.statusCode, body: await readJson<Body>(response.body), instance };
}

const describe = (reply: Reply) => `${reply.status} ${reply.body.error ?? ''} ${reply.body.message ?? ''} (instance ${reply.instance})`;

function sql() {
  assert.ok(database, 'the test database exists');
  return database.sql;
}

async function availableItems(sale: number, limit: number, afterId = 0): Promise<Item[]> {
  const reply = await send('GET', `/sales/${sale}/items?available=true&limit=${limit}&after=${afterId}`);
  assert.equal(reply.status, 200, describe(reply));
  return reply.body.items!;
}

async function checkoutCode(userId: string, itemId: number): Promise<string> {
  const reply = await send('POST', `/checkout?user_id=${encodeURIComponent(userId)}&id=${itemId}`);
  assert.equal(reply.status, 200, `checkout of item ${itemId} for ${userId}: ${describe(reply)}`);
  assert.equal(reply.body.item_id, itemId);
  assert.equal(reply.body.user_id, userId);
  assert.match(reply.body.code!, /^[A-Za-z0-9_-]{22}$/);
  return reply.body.code!;
}

// The invariant audit over every sale of the database: no violation anywhere.
async function assertAuditClean(): Promise<void> {
  const report = await auditSales(sql());
  assert.ok(report.length > 0, 'the audit sees at least one sale');
  const problems = report.flatMap((sale) => violations(sale).map((problem) => `sale ${sale.saleId}: ${problem}`));
  assert.deepEqual(problems, []);
}

before(async () => {
  database = await createDatabase();
  saleId = await currentSaleId(database.sql);
  const env = testEnv(database, prefix);
  // Started one after the other so that a failure leaves the first one registered for after().
  for (let index = 0; index < 2; index += 1) {
    const instance = await startInstance(env);
    instances.push(instance);
    pools.push(
      new Pool(instance.url, {
        connections: connectionsPerInstance,
        headersTimeout: requestTimeoutMs,
        bodyTimeout: requestTimeoutMs,
        connectTimeout: 10_000,
      }),
    );
  }
  assert.notEqual(instances[0]!.child.pid, instances[1]!.child.pid);
});

after(async () => {
  await cleanUp([
    ...pools.map((pool) => () => pool.destroy()),
    () =>
      Promise.all(
        instances.map(async (instance) => {
          let timer: NodeJS.Timeout | undefined;
          const killed = new Promise<void>((resolve) => {
            timer = setTimeout(() => {
              instance.child.kill('SIGKILL');
              resolve();
            }, 15_000);
          });
          await Promise.race([instance.stop('SIGTERM'), killed]).finally(() => clearTimeout(timer));
          const output = instance.output().trim();
          if (output !== '') console.log(`instance on port ${instance.port} logged:\n${output.slice(-4000)}`);
        }),
      ),
    () => database?.drop(),
    () => dropRedisPrefix(prefix),
  ]);
});

test('50 concurrent purchases by one user: exactly the per-user limit of 10 succeed', async () => {
  const userId = `limit-${randomBytes(4).toString('hex')}`;
  const items = await availableItems(saleId, 50);
  assert.equal(items.length, 50);
  const codes = await Promise.all(items.map((item) => checkoutCode(userId, item.id)));
  assert.equal(new Set(codes).size, 50);

  const replies = await Promise.all(codes.map((code) => send('POST', `/purchase?code=${code}`)));

  const successes = replies.filter((reply) => reply.status === 200);
  const refusals = replies.filter((reply) => reply.status !== 200);
  assert.equal(successes.length, 10, replies.map(describe).join('\n'));
  for (const reply of successes) {
    assert.equal(reply.body.message, 'Purchase successful');
    assert.equal(reply.body.user_id, userId);
    assert.equal(reply.body.sale_id, saleId);
  }
  assert.equal(refusals.length, 40);
  for (const reply of refusals) {
    assert.equal(reply.status, 429, describe(reply));
    assert.equal(reply.body.error, 'limit_reached', describe(reply));
    assert.ok(reply.body.message!.includes('User has reached the maximum of 10 items per sale'), describe(reply));
  }
  assert.ok(new Set(replies.map((reply) => reply.instance)).size === 2, 'both instances answered');

  const owned = await sql()<{ id: number; purchaseCode: string }[]>`
    select id, purchase_code as "purchaseCode" from items where sale_id = ${saleId} and buyer_id = ${userId} order by id`;
  assert.equal(owned.length, 10);
  assert.deepEqual(
    owned.map((row) => row.id),
    successes.map((reply) => reply.body.item_id!).sort((a, b) => a - b),
    'the items the user owns are the ones the successful purchases named',
  );
  const [buyer] = await sql()<{ bought: number }[]>`
    select bought from sale_buyers where sale_id = ${saleId} and user_id = ${userId}`;
  assert.equal(buyer?.bought, 10);
  // A refused purchase changes nothing: the other 40 items are still for sale.
  const refusedIds = items.map((item) => item.id).filter((id) => !owned.some((row) => row.id === id));
  const [stillFree] = await sql()<{ count: number }[]>`
    select count(*) as count from items where id in ${sql()(refusedIds)} and buyer_id is null`;
  assert.equal(stillFree!.count, 40);

  await assertAuditClean();
});

test('200 users with codes for the same item: exactly one buys it', async () => {
  const [item] = await availableItems(saleId, 1);
  assert.ok(item);
  const tag = randomBytes(4).toString('hex');
  const users = Array.from({ length: 200 }, (_, index) => `same-${tag}-${index}`);
  const codes = await Promise.all(users.map((userId) => checkoutCode(userId, item.id)));
  assert.equal(new Set(codes).size, 200);

  const replies = await Promise.all(codes.map((code) => send('POST', `/purchase?code=${code}`)));

  const winners = replies.filter((reply) => reply.status === 200);
  assert.equal(winners.length, 1, replies.filter((reply) => reply.status !== 409).map(describe).join('\n'));
  const winner = winners[0]!;
  assert.equal(winner.body.message, 'Purchase successful');
  assert.equal(winner.body.item_id, item.id);
  const losers = replies.filter((reply) => reply.status !== 200);
  assert.equal(losers.length, 199);
  for (const reply of losers) {
    assert.equal(reply.status, 409, describe(reply));
    assert.equal(reply.body.error, 'item_sold', describe(reply));
  }

  const winnerIndex = replies.indexOf(winner);
  assert.equal(winner.body.user_id, users[winnerIndex]);
  const [row] = await sql()<{ buyerId: string; purchaseCode: string }[]>`
    select buyer_id as "buyerId", purchase_code as "purchaseCode" from items where id = ${item.id}`;
  assert.equal(row?.buyerId, users[winnerIndex]);
  assert.equal(row?.purchaseCode, codes[winnerIndex]);
  const buyers = await sql()<{ userId: string; bought: number }[]>`
    select user_id as "userId", bought from sale_buyers where sale_id = ${saleId} and user_id like ${`same-${tag}-%`}`;
  assert.deepEqual([...buyers], [{ userId: users[winnerIndex], bought: 1 }]);

  await assertAuditClean();
});

test('2,000 concurrent shoppers drain a fresh 10,000-item sale', { timeout: 330_000 }, async (t: TestContext) => {
  const size = 10_000;
  const limit = 10;
  const shoppers = 2_000;
  const pageSize = 50;
  const budgetMs = 240_000;

  const [sale] = await sql()<{ id: number }[]>`
    insert into sales (starts_at, size, per_user_limit) values (now() - interval '10 days', ${size}, ${limit}) returning id`;
  const drainId = sale!.id;
  await sql()`
    insert into items (sale_id, seed) select ${drainId}, floor(random() * 2147483647)::int from generate_series(1, ${size})`;
  const [range] = await sql()<{ min: number; max: number }[]>`
    select min(id) as min, max(id) as max from items where sale_id = ${drainId}`;
  const firstId = range!.min;
  const span = range!.max - range!.min + 1;

  const counts = new Map<string, number>();
  const count = (key: string) => counts.set(key, (counts.get(key) ?? 0) + 1);
  const unexpected: string[] = [];
  const perInstance = [0, 0];
  let checkoutsSent = 0;
  let requests = 0;
  let timedOut = false;
  const boughtBy = new Map<string, number[]>();

  const started = Date.now();
  const deadline = started + budgetMs;

  async function call(kind: string, method: 'GET' | 'POST', path: string): Promise<Reply> {
    requests += 1;
    const reply = await send(method, path);
    perInstance[reply.instance]! += 1;
    count(`${kind} ${reply.status} ${reply.body.error ?? ''}`.trim());
    return reply;
  }

  async function page(afterId: number): Promise<Item[] | undefined> {
    const reply = await call('items', 'GET', `/sales/${drainId}/items?available=true&limit=${pageSize}&after=${afterId}`);
    if (reply.status !== 200) {
      unexpected.push(`items page: ${describe(reply)}`);
      return undefined;
    }
    return reply.body.items!;
  }

  async function shopper(index: number): Promise<void> {
    const userId = `drain-${index}`;
    const mine: number[] = [];
    boughtBy.set(userId, mine);
    // Bounded: every round either buys, loses a race, or ends the shopper; the deadline ends them all.
    for (let round = 0; mine.length < limit; round += 1) {
      if (Date.now() > deadline || round > 10_000) {
        timedOut = true;
        return;
      }
      const offset = firstId - 1 + Math.floor(Math.random() * span);
      let items = await page(offset);
      // Nothing past a random offset: look from the start before calling the sale sold out.
      if (items && items.length === 0 && offset > firstId - 1) items = await page(firstId - 1);
      if (!items) return;
      if (items.length === 0) return; // sold out
      const item = items[Math.floor(Math.random() * items.length)]!;

      checkoutsSent += 1;
      const checkout = await call('checkout', 'POST', `/checkout?user_id=${userId}&id=${item.id}`);
      if (checkout.status === 409 && checkout.body.error === 'item_sold') continue;
      if (checkout.status !== 200) {
        unexpected.push(`checkout of ${item.id} by ${userId}: ${describe(checkout)}`);
        return;
      }

      const purchase = await call('purchase', 'POST', `/purchase?code=${checkout.body.code}`);
      if (purchase.status === 200) {
        if (purchase.body.message !== 'Purchase successful' || purchase.body.user_id !== userId || purchase.body.item_id !== item.id) {
          unexpected.push(`purchase of ${item.id} by ${userId} answered ${JSON.stringify(purchase.body)}`);
          return;
        }
        mine.push(item.id);
      } else if (purchase.status === 409 && purchase.body.error === 'item_sold') {
        continue;
      } else if (purchase.status === 429 && purchase.body.error === 'limit_reached') {
        // This shopper buys one item at a time: the limit can only be reached with 10 items bought.
        if (mine.length < limit) unexpected.push(`limit_reached for ${userId} holding ${mine.length} items`);
        return;
      } else {
        unexpected.push(`purchase of ${item.id} by ${userId}: ${describe(purchase)}`);
        return;
      }
    }
  }

  const outcomes = await Promise.allSettled(Array.from({ length: shoppers }, (_, index) => shopper(index)));
  const elapsedMs = Date.now() - started;
  const rate = Math.round(requests / (elapsedMs / 1000));
  const summary = [...counts.entries()].sort().map(([key, value]) => `${key}: ${value}`).join(', ');
  t.diagnostic(`drain: ${elapsedMs} ms, ${requests} requests, ${rate} requests/s, ${checkoutsSent} checkouts`);
  t.diagnostic(`responses: ${summary}; per instance: ${perInstance.join(' / ')}`);
  console.log(`drain: ${(elapsedMs / 1000).toFixed(1)} s, ${requests} requests, ${rate} requests/s; ${summary}`);

  const crashed = outcomes.flatMap((outcome) => (outcome.status === 'rejected' ? [String(outcome.reason)] : []));
  assert.deepEqual(crashed.slice(0, 10), [], `${crashed.length} shoppers failed on a request`);
  assert.deepEqual(unexpected.slice(0, 20), [], `${unexpected.length} unexpected responses`);
  assert.equal(timedOut, false, `the sale was not drained within ${budgetMs} ms`);
  for (const key of counts.keys()) {
    assert.ok(
      ['items 200', 'checkout 200', 'checkout 409 item_sold', 'purchase 200', 'purchase 409 item_sold', 'purchase 429 limit_reached'].includes(key),
      `unexpected response kind: ${key}`,
    );
  }
  assert.ok(perInstance.every((served) => served > 0), 'both instances served');

  // What the shoppers were told agrees with itself: 10,000 distinct items, nobody over the limit.
  const allBought = [...boughtBy.values()].flat();
  assert.equal(allBought.length, size);
  assert.equal(new Set(allBought).size, size);
  assert.ok([...boughtBy.values()].every((items) => items.length <= limit));

  // And with the database.
  const [sold] = await sql()<{ sold: number; distinctIds: number; distinctCodes: number }[]>`
    select count(*) as sold, count(distinct id) as "distinctIds", count(distinct purchase_code) as "distinctCodes"
    from items where sale_id = ${drainId} and buyer_id is not null`;
  assert.deepEqual(sold, { sold: size, distinctIds: size, distinctCodes: size });
  const [left] = await sql()<{ count: number }[]>`select count(*) as count from items where sale_id = ${drainId} and buyer_id is null`;
  assert.equal(left!.count, 0);
  const overLimit = await sql()<{ buyerId: string; count: number }[]>`
    select buyer_id as "buyerId", count(*) as count from items
    where sale_id = ${drainId} and buyer_id is not null
    group by buyer_id having count(*) > ${limit}`;
  assert.deepEqual([...overLimit], []);
  const owners = await sql()<{ buyerId: string; ids: number[] }[]>`
    select buyer_id as "buyerId", array_agg(id order by id)::int[] as ids from items
    where sale_id = ${drainId} and buyer_id is not null group by buyer_id`;
  const told = new Map([...boughtBy.entries()].filter(([, ids]) => ids.length > 0).map(([userId, ids]) => [userId, [...ids].sort((a, b) => a - b)]));
  assert.deepEqual(new Map(owners.map((row) => [row.buyerId, row.ids])), told, 'each buyer owns exactly the items their purchases reported');
  const [counted] = await sql()<{ buyers: number; bought: number }[]>`
    select count(*) as buyers, coalesce(sum(bought), 0)::int as bought from sale_buyers where sale_id = ${drainId}`;
  assert.deepEqual(counted, { buyers: told.size, bought: size });

  // Every checkout request the shoppers sent was recorded, whatever its outcome.
  const [attempts] = await sql()<{ byItem: number; bySale: number; issued: number }[]>`
    select count(*) as "byItem",
           count(*) filter (where c.sale_id = ${drainId}) as "bySale",
           count(*) filter (where c.outcome = 'issued') as issued
    from checkout_attempts c where c.item_id in (select id from items where sale_id = ${drainId})`;
  assert.equal(attempts!.byItem, checkoutsSent);
  assert.equal(attempts!.bySale, checkoutsSent);
  assert.equal(attempts!.issued, counts.get('checkout 200') ?? 0);

  await assertAuditClean();
});

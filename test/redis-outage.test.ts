// Redis only protects (the shared rate limits): with Redis unreachable from the start, killed mid-traffic
// or hung, the service must keep selling correctly through PostgreSQL, answer promptly, report the outage
// on /health, and pick Redis up again once it is back.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, test } from 'node:test';
import { createClient } from 'redis';
import { auditSales, violations } from '../src/audit.ts';
import {
  createDatabase, dropRedisPrefix, freePort, limitsNeverReached, startInstance, startRedisServer, stopWithin, testEnv, uniquePrefix, type Instance, type TestDatabase,
} from './helpers.ts';

// A redis-server of this file's own, killed in after().
async function startRedis(port: number): Promise<ChildProcess> {
  const server = await startRedisServer(port);
  redisServers.push(server);
  return server;
}

const perUserLimit = 3;
// Every request must answer within this, whatever Redis is doing.
const boundMs = 2000;
const prefix = uniquePrefix();

let database: TestDatabase | undefined;
const instances: Instance[] = [];
const redisServers: ChildProcess[] = [];

// Last resort if the runner dies before after(): no child outlives this file.
process.once('exit', () => {
  for (const instance of instances) instance.child.kill('SIGKILL');
  for (const server of redisServers) server.kill('SIGKILL');
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function exited(child: ChildProcess): Promise<void> {
  return alive(child) ? new Promise((resolve) => child.once('exit', () => resolve())) : Promise.resolve();
}

before(async () => {
  database = await createDatabase();
});

after(async () => {
  await Promise.all(
    instances.map(async (instance) => {
      if (alive(instance.child)) {
        instance.child.kill('SIGKILL');
        await instance.stop('SIGKILL');
      }
    }),
  );
  await Promise.all(
    redisServers.map(async (server) => {
      if (alive(server)) {
        server.kill('SIGKILL');
        await exited(server);
      }
    }),
  );
  await database?.drop();
  await dropRedisPrefix(prefix).catch(() => {});
});

type Answer = { status: number; body: Record<string, unknown>; ms: number };

// One HTTP call, timed; every answer must come within boundMs and never be a 5xx (unless allowed, for /health).
async function call(instance: Instance, method: string, path: string, allow5xx = false): Promise<Answer> {
  const started = performance.now();
  // Give up a little after the bound, so that a hung request fails the test quickly instead of stalling it.
  const response = await fetch(`${instance.url}${path}`, { method, signal: AbortSignal.timeout(boundMs + 1000) }).catch((error: Error) => {
    throw new Error(`${method} ${path}: no answer within ${boundMs + 1000} ms (${error.message})`);
  });
  const body = (await response.json()) as Record<string, unknown>;
  const ms = performance.now() - started;
  const what = `${method} ${path} -> ${response.status} ${JSON.stringify(body)} in ${ms.toFixed(0)} ms`;
  assert.ok(ms < boundMs, `too slow: ${what}`);
  if (!allow5xx) assert.ok(response.status < 500, `server error: ${what}\n${instance.output()}`);
  return { status: response.status, body, ms };
}

async function checkout(instance: Instance, userId: string, itemId: number): Promise<Answer> {
  return call(instance, 'POST', `/checkout?user_id=${userId}&id=${itemId}`);
}

async function purchase(instance: Instance, code: string): Promise<Answer> {
  return call(instance, 'POST', `/purchase?code=${code}`);
}

// Checkout then purchase, both expected to succeed; returns the receipt.
async function buy(instance: Instance, userId: string, itemId: number): Promise<Record<string, unknown>> {
  const issued = await checkout(instance, userId, itemId);
  assert.equal(issued.status, 200, JSON.stringify(issued.body));
  const bought = await purchase(instance, issued.body.code as string);
  assert.equal(bought.status, 200, JSON.stringify(bought.body));
  assert.equal(bought.body.message, 'Purchase successful');
  assert.equal(bought.body.item_id, itemId);
  assert.equal(bought.body.user_id, userId);
  assert.equal(bought.body.code, issued.body.code);
  return bought.body;
}

function assertRefused(answer: Answer, status: number, error: string): void {
  assert.equal(answer.status, status, JSON.stringify(answer.body));
  assert.equal(answer.body.error, error);
}

// Unsold items never handed out before in this file, all of one sale.
let lastItem = 0;
async function freshItems(saleId: number, count: number): Promise<number[]> {
  const rows = await database!.sql<{ id: number }[]>`
    select id from items where sale_id = ${saleId} and buyer_id is null and id > ${lastItem} order by id limit ${count}`;
  assert.equal(rows.length, count);
  lastItem = rows.at(-1)!.id;
  return rows.map((row) => row.id);
}

// The sale that /sales reports as current; it must carry this file's per-user limit.
async function currentSale(instance: Instance): Promise<number> {
  const listed = await call(instance, 'GET', '/sales');
  assert.equal(listed.status, 200);
  const [sale] = listed.body.sales as { id: number; per_user_limit: number }[];
  assert.equal(sale!.per_user_limit, perUserLimit);
  return sale!.id;
}

async function health(instance: Instance): Promise<Answer> {
  return call(instance, 'GET', '/health', true);
}

async function healthBecomes(instance: Instance, status: number, withinMs: number): Promise<Answer> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const answer = await health(instance);
    if (answer.status === status || Date.now() > deadline) return answer;
    await sleep(100);
  }
}

// Whether our own Redis holds a key matching `pattern` (wait a little for it).
async function redisHas(port: number, pattern: string): Promise<boolean> {
  const client = createClient({ url: `redis://127.0.0.1:${port}`, socket: { reconnectStrategy: false } });
  await client.connect();
  try {
    const deadline = Date.now() + 2000;
    for (;;) {
      if ((await client.keys(pattern)).length > 0) return true;
      if (Date.now() > deadline) return false;
      await sleep(50);
    }
  } finally {
    client.destroy();
  }
}

test('with a wrong REDIS_URL the service starts, says so on /health, and sells correctly', { timeout: 60_000 }, async () => {
  const deadPort = await freePort(); // nothing listens there
  const instance = await startInstance(
    testEnv(database!, prefix, { REDIS_URL: `redis://127.0.0.1:${deadPort}`, PER_USER_LIMIT: String(perUserLimit) }),
  );
  instances.push(instance);

  const status = await health(instance);
  assert.equal(status.status, 503);
  assert.deepEqual(status.body, { status: 'error', database: 'ok', redis: 'error' });

  const saleId = await currentSale(instance);
  const [contested, ...limitItems] = await freshItems(saleId, 1 + perUserLimit + 1);

  // Two users hold codes for the same item: the first purchase wins, the second is refused.
  const first = await checkout(instance, 'dead-a', contested!);
  const second = await checkout(instance, 'dead-b', contested!);
  assert.equal(first.status, 200);
  assert.equal(second.status, 200);
  const receipt = await purchase(instance, first.body.code as string);
  assert.equal(receipt.status, 200, JSON.stringify(receipt.body));
  assert.equal(receipt.body.user_id, 'dead-a');
  assert.equal(receipt.body.item_id, contested);
  assert.equal(receipt.body.sale_id, saleId);
  const replay = await purchase(instance, first.body.code as string);
  assert.equal(replay.status, 200);
  assert.deepEqual(replay.body, receipt.body);
  assertRefused(await purchase(instance, second.body.code as string), 409, 'item_sold');
  assertRefused(await checkout(instance, 'dead-c', contested!), 409, 'item_sold');

  // The per-user limit holds without Redis: three purchases, then limit_reached, and the item stays unsold.
  const receipts = [];
  for (const itemId of limitItems.slice(0, perUserLimit)) receipts.push(await buy(instance, 'dead-limit', itemId));
  const over = await checkout(instance, 'dead-limit', limitItems.at(-1)!);
  assert.equal(over.status, 200);
  assertRefused(await purchase(instance, over.body.code as string), 429, 'limit_reached');
  assertRefused(await purchase(instance, over.body.code as string), 429, 'limit_reached');
  // A code that filled the limit still replays its receipt.
  const again = await purchase(instance, receipts[0]!.code as string);
  assert.equal(again.status, 200);
  assert.deepEqual(again.body, receipts[0]);
  const [overItem] = await database!.sql<{ buyerId: string | null }[]>`
    select buyer_id as "buyerId" from items where id = ${limitItems.at(-1)!}`;
  assert.equal(overItem!.buyerId, null);

  assert.deepEqual((await health(instance)).body, { status: 'error', database: 'ok', redis: 'error' });
  assert.equal(await stopWithin(instance, 5000), 0, `exit code on SIGTERM without Redis\n${instance.output()}`);
});

// An instance pointed at a redis-server of this test's own, with rate limits on (never reached), so that
// every request uses Redis; ready once /health says Redis is up (it connects in the background).
async function startWithOwnRedis() {
  const redisPort = await freePort();
  const redis = await startRedis(redisPort);
  const instance = await startInstance(
    testEnv(database!, prefix, {
      REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      PER_USER_LIMIT: String(perUserLimit),
      ...limitsNeverReached,
    }),
  );
  instances.push(instance);
  const up = await healthBecomes(instance, 200, 10_000);
  return { redisPort, redis, instance, up };
}

test('when Redis dies mid-traffic the service keeps selling correctly, then picks Redis up again', { timeout: 90_000 }, async () => {
  const { redisPort, redis, instance, up } = await startWithOwnRedis();
  assert.equal(up.status, 200, JSON.stringify(up.body));
  assert.deepEqual(up.body, { status: 'ok', database: 'ok', redis: 'ok' });

  const saleId = await currentSale(instance);
  const [contested, ...items] = await freshItems(saleId, 80);
  const nextItem = () => {
    const id = items.shift();
    assert.ok(id !== undefined, 'ran out of test items');
    return id;
  };

  // With Redis up: a sale, its replay and a refused rival; the rate limits must actually count in Redis.
  const winner = await checkout(instance, 'cut-a', contested!);
  const rival = await checkout(instance, 'cut-b', contested!);
  assert.equal(winner.status, 200);
  assert.equal(rival.status, 200);
  const receipt = await purchase(instance, winner.body.code as string);
  assert.equal(receipt.status, 200, JSON.stringify(receipt.body));
  assert.ok(await redisHas(redisPort, `${prefix}rate:*cut-a*`), 'the checkout was counted in Redis');
  assert.deepEqual((await purchase(instance, winner.body.code as string)).body, receipt.body);
  assertRefused(await purchase(instance, rival.body.code as string), 409, 'item_sold');

  // A user at the limit while Redis is up.
  const limitReceipts = [];
  for (let n = 0; n < perUserLimit; n += 1) limitReceipts.push(await buy(instance, 'cut-limit', nextItem()));
  const overCode = (await checkout(instance, 'cut-limit', nextItem())).body.code as string;
  assertRefused(await purchase(instance, overCode), 429, 'limit_reached');

  // Codes issued while Redis is up, to be used after it dies.
  const pending = [];
  for (let n = 0; n < 3; n += 1) {
    const itemId = nextItem();
    const issued = await checkout(instance, `cut-pending-${n}`, itemId);
    assert.equal(issued.status, 200);
    pending.push({ userId: `cut-pending-${n}`, itemId, code: issued.body.code as string });
  }

  // Cut: SIGKILL, and keep going at once.
  redis.kill('SIGKILL');
  await exited(redis);

  for (const { userId, itemId, code } of pending) {
    const bought = await purchase(instance, code);
    assert.equal(bought.status, 200, JSON.stringify(bought.body));
    assert.equal(bought.body.user_id, userId);
    assert.equal(bought.body.item_id, itemId);
  }
  // Several rounds, spread over the client's reconnect attempts.
  const cutStarted = Date.now();
  let round = 0;
  while (Date.now() - cutStarted < 2500) {
    assert.deepEqual((await purchase(instance, winner.body.code as string)).body, receipt.body, 'replay during the outage');
    assertRefused(await purchase(instance, rival.body.code as string), 409, 'item_sold');
    assertRefused(await checkout(instance, `cut-late-${round}`, contested!), 409, 'item_sold');
    assertRefused(await purchase(instance, overCode), 429, 'limit_reached');
    const replayLimit = await purchase(instance, limitReceipts[round % perUserLimit]!.code as string);
    assert.equal(replayLimit.status, 200);
    assert.deepEqual(replayLimit.body, limitReceipts[round % perUserLimit]);
    // A fresh item: two codes, the first buys it, the second is refused.
    const itemId = nextItem();
    const first = await checkout(instance, `cut-fresh-${round}`, itemId);
    const second = await checkout(instance, `cut-other-${round}`, itemId);
    assert.equal(first.status, 200);
    assert.equal(second.status, 200);
    const bought = await purchase(instance, first.body.code as string);
    assert.equal(bought.status, 200, JSON.stringify(bought.body));
    assertRefused(await purchase(instance, second.body.code as string), 409, 'item_sold');
    assert.deepEqual((await purchase(instance, first.body.code as string)).body, bought.body);
    round += 1;
    await sleep(100);
  }
  assert.ok(round >= 3, `only ${round} rounds during the outage`);

  // The user at the limit stays there without Redis.
  const overAgain = await checkout(instance, 'cut-limit', nextItem());
  assert.equal(overAgain.status, 200);
  assertRefused(await purchase(instance, overAgain.body.code as string), 429, 'limit_reached');

  const down = await health(instance);
  assert.equal(down.status, 503);
  assert.deepEqual(down.body, { status: 'error', database: 'ok', redis: 'error' });

  // Redis comes back on the same port: /health recovers within ~10 s and the limits count there again.
  await startRedis(redisPort); // tracked in redisServers, killed in after()
  const back = await healthBecomes(instance, 200, 10_000);
  assert.equal(back.status, 200, `health after Redis restarted: ${JSON.stringify(back.body)}\n${instance.output()}`);
  assert.deepEqual(back.body, { status: 'ok', database: 'ok', redis: 'ok' });
  const afterwards = nextItem();
  await buy(instance, 'cut-after', afterwards);
  assert.ok(await redisHas(redisPort, `${prefix}rate:*cut-after*`), 'the limits count in Redis again after it returned');

  const audit = await auditSales(database!.sql);
  assert.ok(audit.length > 0);
  for (const sale of audit) assert.deepEqual(violations(sale), [], `sale ${sale.saleId}`);
  const overLimit = await database!.sql`
    select i.sale_id, i.buyer_id, count(*) as bought
    from items i join sales s on s.id = i.sale_id
    where i.buyer_id is not null
    group by i.sale_id, i.buyer_id, s.per_user_limit
    having count(*) > s.per_user_limit`;
  assert.deepEqual([...overLimit], [], 'buyers over the limit');
  const [limited] = await database!.sql<{ bought: number }[]>`
    select count(*) as bought from items where sale_id = ${saleId} and buyer_id = 'cut-limit'`;
  assert.equal(limited!.bought, perUserLimit);

  assert.equal(await stopWithin(instance, 5000), 0, `exit code on SIGTERM\n${instance.output()}`);
});

// Redis alive but silent (SIGSTOP: the connection stays up, nothing answers, like a black-holed network).
// REDIS_TIMEOUT_MS must bound every Redis command, so the service sells through PostgreSQL as above.
// node-redis's command timeout only covers a command's wait to be written, so redis.ts bounds each call itself.
test('when Redis hangs, purchases still answer within the bound through PostgreSQL', { timeout: 60_000 }, async () => {
  const { redis, instance, up } = await startWithOwnRedis();
  assert.deepEqual(up.body, { status: 'ok', database: 'ok', redis: 'ok' });

  const saleId = await currentSale(instance);
  const [contested, fresh] = await freshItems(saleId, 2);
  const winner = await checkout(instance, 'hang-a', contested!);
  const rival = await checkout(instance, 'hang-b', contested!);
  const receipt = await purchase(instance, winner.body.code as string);
  assert.equal(receipt.status, 200, JSON.stringify(receipt.body));

  redis.kill('SIGSTOP');
  try {
    // Every answer within the bound (call() asserts it), and right.
    assert.deepEqual((await purchase(instance, winner.body.code as string)).body, receipt.body);
    assertRefused(await purchase(instance, rival.body.code as string), 409, 'item_sold');
    await buy(instance, 'hang-c', fresh!);
    const down = await health(instance);
    assert.equal(down.status, 503);
    assert.deepEqual(down.body, { status: 'error', database: 'ok', redis: 'error' });
  } finally {
    redis.kill('SIGCONT');
  }
  const back = await healthBecomes(instance, 200, 10_000);
  assert.deepEqual(back.body, { status: 'ok', database: 'ok', redis: 'ok' });

  for (const sale of await auditSales(database!.sql)) assert.deepEqual(violations(sale), [], `sale ${sale.saleId}`);
  assert.equal(await stopWithin(instance, 5000), 0, `exit code on SIGTERM\n${instance.output()}`);
});

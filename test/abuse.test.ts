import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  createDatabase, currentSaleId, dropRedisPrefix, freePort, startApp, uniquePrefix, type TestApp, type TestDatabase,
} from './helpers.ts';

let database: TestDatabase;
let saleId: number;
const prefixes: string[] = [];
const apps: TestApp[] = [];

before(async () => {
  database = await createDatabase();
  saleId = await currentSaleId(database.sql);
});
after(async () => {
  for (const app of apps) await app.close();
  await database.drop();
  for (const prefix of prefixes) await dropRedisPrefix(prefix);
});

async function limitedApp(overrides: Record<string, string>, prefix = uniquePrefix()): Promise<TestApp> {
  prefixes.push(prefix);
  const app = await startApp(database, prefix, { RATE_LIMIT: 'on', ...overrides });
  apps.push(app);
  await waitForRedis(app);
  return app;
}

async function waitForRedis(app: TestApp): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    if ((await app.app.inject({ method: 'GET', url: '/health' })).json().redis === 'ok') return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

let nextItem = 0;
async function freshItem(): Promise<number> {
  const [row] = await database.sql<{ id: number }[]>`
    select id from items where sale_id = ${saleId} and buyer_id is null and id > ${nextItem} order by id limit 1`;
  nextItem = row!.id;
  return row!.id;
}

function assertLimited(response: { statusCode: number; headers: Record<string, unknown>; json: () => unknown }) {
  assert.equal(response.statusCode, 429);
  assert.equal((response.json() as { error: string }).error, 'rate_limited');
  assert.ok(Number(response.headers['retry-after']) >= 1, 'Retry-After says when to come back');
}

test('requests per client address are limited across instances, with 429 and Retry-After', async () => {
  const prefix = uniquePrefix();
  const first = await limitedApp({ RATE_LIMIT_ADDRESS_MAX: '6' }, prefix);
  const second = await limitedApp({ RATE_LIMIT_ADDRESS_MAX: '6' }, prefix);
  for (const app of [first, second, first, second, first, second]) {
    assert.equal((await app.app.inject({ method: 'GET', url: `/sales/${saleId}` })).statusCode, 200);
  }
  assertLimited(await second.app.inject({ method: 'GET', url: `/sales/${saleId}` }));
  assertLimited(await first.app.inject({ method: 'GET', url: `/sales/${saleId}` }));
  // Another address has its own budget.
  const other = await first.app.inject({ method: 'GET', url: `/sales/${saleId}`, remoteAddress: '10.0.0.7' });
  assert.equal(other.statusCode, 200);
});

test('checkouts per user are limited, and a limited checkout is still recorded', async () => {
  const app = await limitedApp({ RATE_LIMIT_USER_MAX: '3' });
  for (let index = 0; index < 3; index += 1) {
    const reply = await app.app.inject({ method: 'POST', url: `/checkout?user_id=eager&id=${await freshItem()}` });
    assert.equal(reply.statusCode, 200);
  }
  const item = await freshItem();
  assertLimited(await app.app.inject({ method: 'POST', url: `/checkout?user_id=eager&id=${item}` }));
  const [row] = await database.sql<{ outcome: string; userId: string; itemId: number }[]>`
    select outcome, user_id as "userId", item_id as "itemId" from checkout_attempts order by id desc limit 1`;
  assert.deepEqual(row, { outcome: 'rate_limited', userId: 'eager', itemId: item });
  const calm = await app.app.inject({ method: 'POST', url: `/checkout?user_id=calm&id=${item}` });
  assert.equal(calm.statusCode, 200, 'another user is not slowed');
});

test('a burst of refused checkouts, limited and malformed at once, is recorded whole, each as sent', async () => {
  const app = await limitedApp({ RATE_LIMIT_USER_MAX: '2' });
  const item = await freshItem();
  for (let index = 0; index < 2; index += 1) {
    assert.equal((await app.app.inject({ method: 'POST', url: `/checkout?user_id=burst-flood&id=${item}` })).statusCode, 200);
  }
  // Sent together, they share statements: rows with and without a user or an item go in one insert.
  // The first has no user: a null first in an array sent to PostgreSQL, and the string "null" later.
  const sent = Array.from({ length: 40 }, (_, index) => [
    { url: `/checkout?id=${item}&burst=${index}`, outcome: 'bad_request', userId: null, itemId: item },
    { url: `/checkout?user_id=null&id=abc&burst=${index}`, outcome: 'bad_request', userId: 'null', itemId: null },
    { url: `/checkout?user_id=burst-flood&id=${item}&n=${index}`, outcome: 'rate_limited', userId: 'burst-flood', itemId: item },
  ][index % 3]!);
  const replies = await Promise.all(sent.map((request) => app.app.inject({ method: 'POST', url: request.url })));
  assert.deepEqual(replies.map((reply) => reply.statusCode), sent.map((request) => (request.outcome === 'rate_limited' ? 429 : 400)));
  const rows = await database.sql<{ outcome: string; userId: string | null; itemId: number | null; detail: string }[]>`
    select outcome, user_id as "userId", item_id as "itemId", detail from checkout_attempts
    where detail like '%burst%' and outcome <> 'issued'`;
  const byUrl = new Map(rows.map((row) => [row.detail, row]));
  assert.equal(rows.length, sent.length, 'one row per refused request');
  for (const request of sent) {
    assert.deepEqual(byUrl.get(request.url), { outcome: request.outcome, userId: request.userId, itemId: request.itemId, detail: request.url });
  }
});

test('a burst of unknown codes from one address is limited; real codes before it are not', async () => {
  const app = await limitedApp({ RATE_LIMIT_BAD_CODE_MAX: '3' });
  const checkout = await app.app.inject({ method: 'POST', url: `/checkout?user_id=honest&id=${await freshItem()}` });
  for (let index = 0; index < 10; index += 1) {
    const reply = await app.app.inject({ method: 'POST', url: `/purchase?code=${'A'.repeat(21)}${index}` });
    assert.equal(reply.statusCode, index < 3 ? 404 : 429, `guess ${index}`);
  }
  assertLimited(await app.app.inject({ method: 'POST', url: `/purchase?code=${checkout.json().code}` }));
  const elsewhere = await app.app.inject({ method: 'POST', url: `/purchase?code=${checkout.json().code}`, remoteAddress: '10.0.0.8' });
  assert.equal(elsewhere.statusCode, 200, 'the guesser is limited, not the code');
});

test('with Redis unreachable the limits let requests through (degrade open)', async () => {
  const app = await startApp(database, uniquePrefix(), {
    RATE_LIMIT: 'on', RATE_LIMIT_ADDRESS_MAX: '1', RATE_LIMIT_USER_MAX: '1', REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
  });
  apps.push(app);
  for (let index = 0; index < 3; index += 1) {
    const reply = await app.app.inject({ method: 'POST', url: `/checkout?user_id=open&id=${await freshItem()}` });
    assert.equal(reply.statusCode, 200);
  }
});

test('RATE_LIMIT=off switches every limit off', async () => {
  const app = await startApp(database, uniquePrefix(), { RATE_LIMIT: 'off', RATE_LIMIT_ADDRESS_MAX: '1' });
  apps.push(app);
  for (let index = 0; index < 3; index += 1) {
    const reply = await app.app.inject({ method: 'GET', url: `/sales/${saleId}` });
    assert.equal(reply.statusCode, 200);
    assert.equal(reply.headers['x-ratelimit-limit'], undefined);
  }
});

test('a client that sends its request too slowly is cut off at REQUEST_TIMEOUT_MS', async () => {
  const { startInstance, testEnv } = await import('./helpers.ts');
  const { connect } = await import('node:net');
  const prefix = uniquePrefix();
  prefixes.push(prefix);
  const instance = await startInstance(testEnv(database, prefix, { REQUEST_TIMEOUT_MS: '1000' }));
  try {
    const socket = connect(instance.port, '127.0.0.1');
    socket.write('POST /checkout?user_id=slow&id=1 HTTP/1.1\r\nHost: x\r\n'); // headers never finish
    let answer = '';
    socket.on('data', (chunk) => (answer += chunk));
    const started = Date.now();
    await new Promise((resolve) => socket.once('close', resolve));
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 5000, `closed after ${elapsed} ms`);
    // The idle socket timeout usually strikes first (a bare close); Node's request timeout answers 408.
    assert.ok(answer === '' || /^HTTP\/1\.1 408/.test(answer), answer);
  } finally {
    await instance.stop();
  }
});

test("what Node's HTTP parser refuses is answered in the service's own JSON: 431 headers_too_large, 400 bad_request", async () => {
  const { startInstance, testEnv } = await import('./helpers.ts');
  const { connect } = await import('node:net');
  const prefix = uniquePrefix();
  prefixes.push(prefix);
  const instance = await startInstance(testEnv(database, prefix));
  const raw = (request: Buffer) =>
    new Promise<string>((resolve) => {
      const socket = connect(instance.port, '127.0.0.1');
      let answer = '';
      socket.on('data', (chunk) => (answer += chunk));
      socket.once('close', () => resolve(answer));
      socket.write(request);
    });
  try {
    const cases: [Buffer, number, string][] = [
      [Buffer.from(`GET /sales HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`), 431, 'headers_too_large'],
      [Buffer.concat([Buffer.from('GET /sales/'), Buffer.from([0xff]), Buffer.from(' HTTP/1.1\r\nHost: x\r\n\r\n')]), 400, 'bad_request'],
      [Buffer.from('NOT HTTP AT ALL\r\n\r\n'), 400, 'bad_request'],
    ];
    for (const [request, status, code] of cases) {
      const answer = await raw(request);
      assert.match(answer, new RegExp(`^HTTP/1\\.1 ${status} `), answer.slice(0, 200));
      assert.match(answer, /content-type: application\/json/i);
      const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>;
      assert.deepEqual(Object.keys(body).sort(), ['error', 'message']);
      assert.equal(body.error, code);
    }
  } finally {
    await instance.stop();
  }
});

// The HTTP contract of every endpoint and every error response: status, body shape, and what the
// database holds afterwards. Talks to the same app server.ts builds, through inject().
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { errorStatus } from '../src/errors.ts';
import { newCode } from '../src/shop.ts';
import { ensureCurrentSale, refreshSoldCounts } from '../src/store.ts';
import {
  createDatabase,
  currentSaleId,
  dropRedisPrefix,
  startApp,
  uniquePrefix,
  type TestApp,
  type TestDatabase,
} from './helpers.ts';

const LIMIT_MESSAGE_10 = 'User has reached the maximum of 10 items per sale';
const CODE_PATTERN = /^[A-Za-z0-9_-]{22}$/;

let database: TestDatabase;
let testApp: TestApp;
const prefix = uniquePrefix();
let saleId = 0;
let itemIds: number[] = [];
let nextItemIndex = 0;
let userCounter = 0;

before(async () => {
  database = await createDatabase();
  // A snapshot of a millisecond: these tests read the listing right after changing it.
  testApp = await startApp(database, prefix, { SALES_SNAPSHOT_MS: '1' });
  saleId = await currentSaleId(database.sql);
  itemIds = (await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id`).map((row) => row.id);
  assert.equal(itemIds.length, 10_000);
});

after(async () => {
  await testApp?.close();
  await database?.drop();
  await dropRedisPrefix(prefix);
});

// ---------------------------------------------------------------------------------------------
// Helpers

type Json = Record<string, unknown>;
type Issued = { code: string; user_id: string; item_id: number; sale_id: number; expires_at: string };
type Receipt = { message: string; code: string; item_id: number; sale_id: number; user_id: string; purchased_at: string };
type Reply = { status: number; body: Json; text: string; headers: Record<string, unknown> };

// An item of the current sale that no other test has used (and so is unsold).
function freshItem(): number {
  const id = itemIds[nextItemIndex++];
  assert.ok(id !== undefined, 'ran out of items');
  return id;
}

function newUser(label = 'user'): string {
  userCounter += 1;
  return `${label}-${userCounter}`;
}

async function send(method: 'GET' | 'POST', url: string, app: TestApp = testApp): Promise<Reply> {
  const response = await app.app.inject({ method, url });
  let body: Json = {};
  if (String(response.headers['content-type'] ?? '').startsWith('application/json')) body = response.json() as Json;
  return { status: response.statusCode, body, text: response.body, headers: response.headers };
}

const show = (reply: Reply) => `${reply.status} ${reply.text.slice(0, 300)}`;

// Every error: the status, JSON {"error", "message"} and nothing else, and no stack trace or SQL in it.
function assertError(reply: Reply, status: number, code: string): void {
  assert.equal(reply.status, status, show(reply));
  assert.match(String(reply.headers['content-type']), /^application\/json/, show(reply));
  assert.deepEqual(Object.keys(reply.body).sort(), ['error', 'message'], show(reply));
  assert.equal(reply.body.error, code, show(reply));
  assert.equal(typeof reply.body.message, 'string');
  assert.ok((reply.body.message as string).length > 0, 'the message is not empty');
  assertNoLeak(reply.text);
}

function assertNoLeak(text: string): void {
  assert.doesNotMatch(text, /\n\s*at\s|\bat .+:\d+:\d+|\.ts:\d+|node_modules/, `no stack trace in ${text}`);
  assert.doesNotMatch(text, /\b(select|insert into|delete from|update \w+ set)\b|syntax error|relation "|violates|postgres/i, `no SQL in ${text}`);
}

async function checkout(userId: string, itemId: number, app: TestApp = testApp): Promise<Issued> {
  const reply = await send('POST', `/checkout?user_id=${encodeURIComponent(userId)}&id=${itemId}`, app);
  assert.equal(reply.status, 200, show(reply));
  return reply.body as Issued;
}

async function purchase(code: string, app: TestApp = testApp): Promise<Reply> {
  return send('POST', `/purchase?code=${encodeURIComponent(code)}`, app);
}

async function buy(userId: string, itemId: number, app: TestApp = testApp): Promise<Receipt> {
  const issued = await checkout(userId, itemId, app);
  const reply = await purchase(issued.code, app);
  assert.equal(reply.status, 200, show(reply));
  return reply.body as Receipt;
}

// Everything a request could change besides checkout_attempts, as comparable values.
async function snapshot(sql = database.sql) {
  const [row] = await sql<
    { sales: number; items: number; sold: number; itemsHash: string; buyers: number; bought: number; buyersHash: string }[]
  >`
    select (select count(*) from sales) as sales,
           (select count(*) from items) as items,
           (select count(*) from items where buyer_id is not null) as sold,
           (select coalesce(md5(string_agg(id || '|' || buyer_id || '|' || purchase_code || '|' || sold_at, ',' order by id)), '')
              from items where buyer_id is not null) as "itemsHash",
           (select count(*) from sale_buyers) as buyers,
           (select coalesce(sum(bought), 0) from sale_buyers) as bought,
           (select coalesce(md5(string_agg(sale_id || '|' || user_id || '|' || bought, ',' order by sale_id, user_id)), '')
              from sale_buyers) as "buyersHash"`;
  return row!;
}

async function attemptsCount(sql = database.sql) {
  const [row] = await sql<{ count: number; maxId: number }[]>`
    select count(*) as count, coalesce(max(id), 0) as "maxId" from checkout_attempts`;
  return row!;
}

type Attempt = {
  id: number;
  outcome: string;
  userId: string | null;
  itemId: number | null;
  saleId: number | null;
  code: string | null;
  expiresAt: Date | null;
  detail: string | null;
};

async function attemptsAfter(maxId: number, sql = database.sql): Promise<Attempt[]> {
  return sql<Attempt[]>`
    select id, outcome, user_id as "userId", item_id as "itemId", sale_id as "saleId", code,
           expires_at as "expiresAt", detail
    from checkout_attempts where id > ${maxId} order by id`;
}

async function itemRow(itemId: number) {
  const [row] = await database.sql<{ buyerId: string | null; purchaseCode: string | null; soldAt: Date | null; saleId: number }[]>`
    select buyer_id as "buyerId", purchase_code as "purchaseCode", sold_at as "soldAt", sale_id as "saleId"
    from items where id = ${itemId}`;
  return row;
}

async function boughtBy(userId: string, sale = saleId): Promise<number | undefined> {
  const [row] = await database.sql<{ bought: number }[]>`
    select bought from sale_buyers where sale_id = ${sale} and user_id = ${userId}`;
  return row?.bought;
}

// ---------------------------------------------------------------------------------------------
// POST /checkout

describe('POST /checkout', () => {
  test('codes name the second they were issued in and stay distinct across refills of the random pool', () => {
    const from = Math.floor(Date.now() / 1000);
    const codes = Array.from({ length: 2_000 }, () => newCode()); // the pool holds 256: several refills
    const to = Math.floor(Date.now() / 1000);
    for (const code of codes) {
      assert.match(code, CODE_PATTERN);
      const second = Buffer.from(code, 'base64url').readUInt32BE(0);
      assert.ok(second >= from && second <= to, `code ${code} names second ${second}, not ${from}-${to}`);
    }
    assert.equal(new Set(codes).size, codes.length);
    // No random bytes reused at an offset: no two codes share even the first 8 of their 12 random bytes.
    assert.equal(new Set(codes.map((code) => Buffer.from(code, 'base64url').subarray(4, 12).toString('hex'))).size, codes.length);
  });

  // Migration 0004: new codes must key at the index's right edge, or every checkout and purchase touches
  // leaves all over an index that grows with every attempt ever made.
  test('a code from a later second keys after every code of earlier seconds', async (t) => {
    const start = Date.UTC(2026, 10, 25, 12, 0, 0);
    t.mock.timers.enable({ apis: ['Date'], now: start });
    const seconds = [0, 1, 2, 60, 3600, 86_400 * 400];
    const codes = seconds.map((second) => {
      t.mock.timers.setTime(start + second * 1000 + 999);
      return [newCode(), newCode(), newCode()];
    });
    t.mock.timers.reset();
    const keys = await database.sql<{ key: Buffer }[]>`
      select code_key(code) as key from unnest(${codes.flat()}::text[]) with ordinality as c(code, n) order by n`;
    const secondOf = (index: number) => seconds[Math.floor(index / 3)]!;
    for (let a = 0; a < keys.length; a += 1) {
      for (let b = 0; b < keys.length; b += 1) {
        if (secondOf(a) < secondOf(b)) assert.ok(Buffer.compare(keys[a]!.key, keys[b]!.key) < 0, `${codes.flat()[a]} keys before ${codes.flat()[b]}`);
      }
    }
  });

  test('issues a fresh 22-character base64url code on every call and records it', async () => {
    const user = newUser('buyer');
    const itemId = freshItem();
    const before = await snapshot();
    const { maxId } = await attemptsCount();
    const started = Date.now();

    const bodies: Issued[] = [];
    for (let call = 0; call < 5; call += 1) {
      const reply = await send('POST', `/checkout?user_id=${user}&id=${itemId}`);
      assert.equal(reply.status, 200, show(reply));
      assert.match(String(reply.headers['content-type']), /^application\/json/);
      assert.deepEqual(Object.keys(reply.body).sort(), ['code', 'expires_at', 'item_id', 'sale_id', 'user_id']);
      const body = reply.body as Issued;
      assert.match(body.code, CODE_PATTERN);
      assert.equal(body.user_id, user);
      assert.equal(body.item_id, itemId);
      assert.equal(body.sale_id, saleId);
      const expiresAt = Date.parse(body.expires_at);
      assert.ok(Number.isFinite(expiresAt), `expires_at is a date: ${body.expires_at}`);
      assert.equal(new Date(expiresAt).toISOString(), body.expires_at, 'expires_at is an ISO-8601 UTC timestamp');
      // The default CODE_TTL is 600 seconds.
      assert.ok(expiresAt > started + 590_000 && expiresAt < Date.now() + 610_000, `expires_at ${body.expires_at} is ~10 minutes away`);
      bodies.push(body);
    }
    assert.equal(new Set(bodies.map((body) => body.code)).size, bodies.length, 'every code is distinct');

    const rows = await attemptsAfter(maxId);
    assert.equal(rows.length, bodies.length, 'one attempt per checkout');
    for (const [index, row] of rows.entries()) {
      const body = bodies[index]!;
      assert.equal(row.outcome, 'issued');
      assert.equal(row.code, body.code);
      assert.equal(row.userId, user);
      assert.equal(row.itemId, itemId);
      assert.equal(row.saleId, saleId);
      assert.equal(row.expiresAt?.toISOString(), body.expires_at);
    }
    // A checkout never holds or sells the item.
    assert.deepEqual(await snapshot(), before);
    assert.equal((await itemRow(itemId))?.buyerId, null);
  });

  test('an unknown item is 404 item_unknown and recorded as such', async () => {
    const user = newUser('unknown-item');
    const lastId = itemIds.at(-1)!;
    for (const missing of [lastId + 1000, 999_999_999_999_999]) {
      const before = await snapshot();
      const { maxId } = await attemptsCount();
      const reply = await send('POST', `/checkout?user_id=${user}&id=${missing}`);
      assertError(reply, 404, 'item_unknown');
      const rows = await attemptsAfter(maxId);
      assert.equal(rows.length, 1);
      assert.equal(rows[0]!.outcome, 'item_unknown');
      assert.equal(rows[0]!.userId, user);
      assert.equal(rows[0]!.itemId, missing);
      assert.equal(rows[0]!.saleId, null);
      assert.equal(rows[0]!.code, null);
      assert.equal(rows[0]!.expiresAt, null);
      assert.deepEqual(await snapshot(), before);
    }
  });

  test('a sold item is 409 item_sold and recorded as such', async () => {
    const itemId = freshItem();
    const owner = newUser('owner');
    await buy(owner, itemId);
    const late = newUser('late');
    const before = await snapshot();
    const { maxId } = await attemptsCount();

    const reply = await send('POST', `/checkout?user_id=${late}&id=${itemId}`);
    assertError(reply, 409, 'item_sold');

    const rows = await attemptsAfter(maxId);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.outcome, 'item_sold');
    assert.equal(rows[0]!.userId, late);
    assert.equal(rows[0]!.itemId, itemId);
    assert.equal(rows[0]!.saleId, saleId);
    assert.equal(rows[0]!.code, null);
    assert.deepEqual(await snapshot(), before);
    assert.equal((await itemRow(itemId))?.buyerId, owner);
  });

  describe('bad parameters: 400 bad_request, one bad_request attempt, nothing else changed', () => {
    const valid = () => `user_id=${newUser('bad')}`;
    // [label, query string builder]: every other parameter is valid, with an unsold item, so that a
    // request the validation let through would issue a code and be caught.
    const cases: [string, (item: number) => string][] = [
      ['no parameters at all', () => ''],
      ['missing user_id', (item) => `id=${item}`],
      ['missing id', () => valid()],
      ['empty user_id', (item) => `user_id=&id=${item}`],
      ['empty id', () => `${valid()}&id=`],
      ['both empty', () => 'user_id=&id='],
      ['non-numeric id', () => `${valid()}&id=abc`],
      ['id 1e3', () => `${valid()}&id=1e3`],
      ['id " 7" (percent-encoded space)', () => `${valid()}&id=%207`],
      ['id " 7" (plus as space)', () => `${valid()}&id=+7`],
      ['id "7 " (trailing space)', (item) => `${valid()}&id=${item}%20`],
      ['id 0x10', () => `${valid()}&id=0x10`],
      ['negative id', () => `${valid()}&id=-5`],
      ['zero id', () => `${valid()}&id=0`],
      ['decimal id', (item) => `${valid()}&id=${item}.0`],
      ['16-digit id', () => `${valid()}&id=1234567890123456`],
      ['30-digit id', () => `${valid()}&id=${'9'.repeat(30)}`],
      ['user_id of 65 characters', (item) => `user_id=${'a'.repeat(65)}&id=${item}`],
      ['user_id of 10,000 characters', (item) => `user_id=${'a'.repeat(10_000)}&id=${item}`],
      ['unicode user_id', (item) => `user_id=${encodeURIComponent('zoë-Ünïcødé')}&id=${item}`],
      ['emoji user_id', (item) => `user_id=${encodeURIComponent('🛒shopper')}&id=${item}`],
      ['long emoji user_id (cut inside a surrogate pair when recorded)', (item) => `user_id=${encodeURIComponent('a' + '😀'.repeat(150))}&id=${item}`],
      ['user_id with a space', (item) => `user_id=${encodeURIComponent('bob smith')}&id=${item}`],
      ['user_id with a slash', (item) => `user_id=${encodeURIComponent('bob/smith')}&id=${item}`],
      ['repeated id', (item) => `${valid()}&id=${item}&id=${item + 1}`],
      ['repeated identical id', (item) => `${valid()}&id=${item}&id=${item}`],
      ['repeated user_id', (item) => `user_id=a&user_id=b&id=${item}`],
      ['SQL injection in id', () => `${valid()}&id=${encodeURIComponent('1; drop table items')}`],
      ['SQL injection in user_id', (item) => `user_id=${encodeURIComponent("' or 1=1 --")}&id=${item}`],
      ['SQL injection after a valid id', (item) => `${valid()}&id=${encodeURIComponent(`${item}; drop table items`)}`],
      ['NUL byte in user_id', (item) => `user_id=a%00b&id=${item}`],
      ['NUL byte alone as user_id', (item) => `user_id=%00&id=${item}`],
      ['NUL byte in id', (item) => `${valid()}&id=${item}%00`],
      ['invalid percent-encoding in user_id', (item) => `user_id=%E0%A4%A&id=${item}`],
    ];

    for (const [label, query] of cases) {
      test(label, async () => {
        const itemId = freshItem();
        const search = query(itemId);
        const url = `/checkout${search === '' ? '' : `?${search}`}`;
        const before = await snapshot();
        const { maxId } = await attemptsCount();

        const reply = await send('POST', url);
        assertError(reply, 400, 'bad_request');

        const rows = await attemptsAfter(maxId);
        assert.equal(rows.length, 1, `exactly one attempt recorded for ${url.slice(0, 80)}`);
        const row = rows[0]!;
        assert.equal(row.outcome, 'bad_request');
        assert.equal(row.code, null);
        assert.equal(row.expiresAt, null);
        assert.equal(row.saleId, null);
        assert.ok(row.detail !== null && row.detail.startsWith('/checkout'), `detail keeps the request: ${row.detail?.slice(0, 80)}`);
        // A refusal is kept small: a flood of them must not fill the disk.
        assert.ok(row.detail!.length <= 200);
        assert.ok(row.userId === null || (row.userId.length <= 100 && !row.userId.includes('\0')));
        assert.deepEqual(await snapshot(), before, 'items and sale_buyers untouched');
        assert.equal((await itemRow(itemId))?.buyerId, null);
      });
    }

    // The text a refused checkout sends reaches SQL only through the recorder, which keeps it: each of these
    // would change a table if it were spliced into the recorder's insert instead of bound.
    test('injection attempts are recorded verbatim as bad requests and change no table; the sale still sells', async () => {
      await buy(newUser('before-injection'), freshItem());
      const payloads = [
        "x', null, null); delete from sale_buyers; --",
        "x', null, null); update sale_buyers set bought = 0; --",
        "x', null, null); drop table sold_tallies; --",
        "x', null, null); delete from checkout_attempts; --",
      ];
      const tables = () => database.sql<{ name: string }[]>`select tablename as name from pg_tables where schemaname = 'public' order by 1`;
      const counts = async () => {
        const [row] = await database.sql`
          select (select count(*) from sales) as sales, (select count(*) from items) as items,
                 (select count(*) from items where buyer_id is not null) as sold, (select count(*) from sale_buyers) as buyers,
                 (select count(*) from sold_tallies) as tallies, (select count(*) from checkout_attempts) as attempts`;
        return { ...row! };
      };
      const tablesBefore = await tables();
      const countsBefore = await counts();
      const before = await snapshot();
      const { maxId } = await attemptsCount();

      const encode = (text: string) => encodeURIComponent(text).replaceAll("'", '%27');
      const urls = payloads.map((payload) => `/checkout?user_id=${encode(payload)}&id=${freshItem()}`);
      for (const url of urls) assertError(await send('POST', url), 400, 'bad_request');

      const rows = await attemptsAfter(maxId);
      assert.deepEqual(
        rows.map((row) => [row.outcome, row.userId, row.detail]),
        payloads.map((payload, index) => ['bad_request', payload, urls[index]!.slice(0, 200)]),
      );
      assert.deepEqual(await tables(), tablesBefore);
      assert.deepEqual(await counts(), { ...countsBefore, attempts: countsBefore.attempts + payloads.length });
      assert.deepEqual(await snapshot(), before);
      const itemId = freshItem();
      const buyer = newUser('after-injection');
      await buy(buyer, itemId);
      assert.equal((await itemRow(itemId))?.buyerId, buyer);
    });
  });

  test('a user at the limit still gets a code at checkout', async () => {
    const user = newUser('full');
    for (let index = 0; index < 10; index += 1) await buy(user, freshItem());
    assert.equal(await boughtBy(user), 10);
    const itemId = freshItem();
    const { maxId } = await attemptsCount();
    const reply = await send('POST', `/checkout?user_id=${user}&id=${itemId}`);
    assert.equal(reply.status, 200, show(reply));
    assert.match((reply.body as Issued).code, CODE_PATTERN);
    const rows = await attemptsAfter(maxId);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.outcome, 'issued');
  });
});

// ---------------------------------------------------------------------------------------------
// POST /purchase

describe('POST /purchase', () => {
  test('a valid code buys the item and answers the receipt', async () => {
    const user = newUser('purchaser');
    const itemId = freshItem();
    const issued = await checkout(user, itemId);
    const before = await snapshot();
    const { count } = await attemptsCount();

    const reply = await purchase(issued.code);
    assert.equal(reply.status, 200, show(reply));
    assert.match(String(reply.headers['content-type']), /^application\/json/);
    assert.deepEqual(Object.keys(reply.body).sort(), ['code', 'item_id', 'message', 'purchased_at', 'sale_id', 'user_id']);
    const receipt = reply.body as Receipt;
    assert.equal(receipt.message, 'Purchase successful');
    assert.equal(receipt.code, issued.code);
    assert.equal(receipt.item_id, itemId);
    assert.equal(receipt.sale_id, saleId);
    assert.equal(receipt.user_id, user);
    assert.equal(new Date(receipt.purchased_at).toISOString(), receipt.purchased_at);

    const row = await itemRow(itemId);
    assert.equal(row?.buyerId, user);
    assert.equal(row?.purchaseCode, issued.code);
    assert.equal(row?.soldAt?.toISOString(), receipt.purchased_at);
    assert.equal(await boughtBy(user), 1);
    const afterwards = await snapshot();
    assert.equal(afterwards.sold, before.sold + 1);
    assert.equal(afterwards.bought, before.bought + 1);
    assert.equal(afterwards.buyers, before.buyers + 1);
    assert.equal((await attemptsCount()).count, count, 'a purchase records no checkout attempt');
  });

  test('replaying a code answers the identical receipt and sells the item once', async () => {
    const user = newUser('replayer');
    const itemId = freshItem();
    const issued = await checkout(user, itemId);
    const first = await purchase(issued.code);
    assert.equal(first.status, 200, show(first));
    const before = await snapshot();

    for (let replay = 0; replay < 3; replay += 1) {
      const again = await purchase(issued.code);
      assert.equal(again.status, 200, show(again));
      assert.equal(again.text, first.text, 'the identical body');
    }
    assert.deepEqual(await snapshot(), before);
    assert.equal(await boughtBy(user), 1);
    const [owned] = await database.sql<{ count: number }[]>`select count(*) as count from items where purchase_code = ${issued.code}`;
    assert.equal(owned!.count, 1);
  });

  test('a well-formed unknown code is 404 code_unknown and changes nothing', async () => {
    const before = await snapshot();
    const { count } = await attemptsCount();
    for (const code of [randomBytes(16).toString('base64url'), 'A'.repeat(22), '-'.repeat(22), '_'.repeat(22)]) {
      assert.match(code, CODE_PATTERN);
      assertError(await purchase(code), 404, 'code_unknown');
    }
    assert.deepEqual(await snapshot(), before);
    assert.equal((await attemptsCount()).count, count);
  });

  describe('malformed codes: 400 bad_request, nothing changed', () => {
    const cases: [string, (code: string) => string][] = [
      ['missing code', () => '/purchase'],
      ['empty code', () => '/purchase?code='],
      ['21 characters', (code) => `/purchase?code=${code.slice(0, 21)}`],
      ['23 characters', (code) => `/purchase?code=${code}A`],
      ['a valid code with a trailing space', (code) => `/purchase?code=${code}%20`],
      ['standard base64 characters + and /', (code) => `/purchase?code=${encodeURIComponent(`${code.slice(0, 20)}+/`)}`],
      ['padding =', (code) => `/purchase?code=${encodeURIComponent(`${code.slice(0, 21)}=`)}`],
      ['a dot', (code) => `/purchase?code=${code.slice(0, 21)}.`],
      ['a NUL byte', (code) => `/purchase?code=${code.slice(0, 21)}%00`],
      ['unicode', (code) => `/purchase?code=${encodeURIComponent(`${code.slice(0, 21)}é`)}`],
      ['SQL injection', () => `/purchase?code=${encodeURIComponent("' or 1=1 --")}`],
      ['repeated valid code', (code) => `/purchase?code=${code}&code=${code}`],
      ['very long', (code) => `/purchase?code=${code.repeat(500)}`],
    ];
    for (const [label, url] of cases) {
      test(label, async () => {
        // A real, unexpired code for an unsold item: a request that slipped through would buy it.
        const itemId = freshItem();
        const issued = await checkout(newUser('malformed'), itemId);
        const before = await snapshot();
        const { count } = await attemptsCount();
        assertError(await send('POST', url(issued.code)), 400, 'bad_request');
        assert.deepEqual(await snapshot(), before);
        assert.equal((await attemptsCount()).count, count, 'a purchase records no checkout attempt');
        assert.equal((await itemRow(itemId))?.buyerId, null);
      });
    }
  });

  test('an expired code is 410 code_expired and changes nothing, however often it is tried', async () => {
    const user = newUser('slow');
    const itemId = freshItem();
    const issued = await checkout(user, itemId);
    await database.sql`update checkout_attempts set expires_at = now() - interval '1 second' where code = ${issued.code}`;
    const before = await snapshot();

    assertError(await purchase(issued.code), 410, 'code_expired');
    assertError(await purchase(issued.code), 410, 'code_expired');

    assert.deepEqual(await snapshot(), before);
    assert.equal((await itemRow(itemId))?.buyerId, null);
    assert.equal(await boughtBy(user), undefined);
    // A fresh checkout of the same item still works.
    assert.equal((await buy(user, itemId)).item_id, itemId);
  });

  test('a code that bought its item still replays after it expired', async () => {
    const user = newUser('early');
    const itemId = freshItem();
    const issued = await checkout(user, itemId);
    const first = await purchase(issued.code);
    assert.equal(first.status, 200, show(first));
    await database.sql`update checkout_attempts set expires_at = now() - interval '1 second' where code = ${issued.code}`;
    const again = await purchase(issued.code);
    assert.equal(again.status, 200, show(again));
    assert.equal(again.text, first.text);
    assert.equal(await boughtBy(user), 1);
  });

  test('with CODE_TTL=1 a code expires by itself: 410 code_expired', async () => {
    const shortApp = await startApp(database, prefix, { CODE_TTL: '1' });
    try {
      const user = newUser('ttl');
      const itemId = freshItem();
      const issued = await checkout(user, itemId, shortApp);
      const ttl = Date.parse(issued.expires_at) - Date.now();
      assert.ok(ttl > 0 && ttl <= 1100, `expires in about a second (${ttl} ms)`);
      await sleep(1500);
      const before = await snapshot();
      assertError(await purchase(issued.code, shortApp), 410, 'code_expired');
      assertError(await purchase(issued.code), 410, 'code_expired');
      assert.deepEqual(await snapshot(), before);
      assert.equal((await itemRow(itemId))?.buyerId, null);
    } finally {
      await shortApp.close();
    }
  });

  test('an expired code is 410 code_expired even when its item was sold to another code', async () => {
    const shortApp = await startApp(database, prefix, { CODE_TTL: '1' });
    try {
      const itemId = freshItem();
      const late = await checkout(newUser('late'), itemId, shortApp);
      const winner = await checkout(newUser('quick'), itemId, shortApp);
      assert.equal((await purchase(winner.code, shortApp)).status, 200);
      await sleep(1500);
      assertError(await purchase(late.code, shortApp), 410, 'code_expired');
    } finally {
      await shortApp.close();
    }
  });

  test("a code for an item sold to another user's code is 409 item_sold, however often it is tried", async () => {
    const itemId = freshItem();
    const winner = newUser('winner');
    const loser = newUser('loser');
    const winnerCode = await checkout(winner, itemId);
    const loserCode = await checkout(loser, itemId);
    const receipt = await purchase(winnerCode.code);
    assert.equal(receipt.status, 200, show(receipt));
    const before = await snapshot();

    for (let attempt = 0; attempt < 2; attempt += 1) {
      assertError(await purchase(loserCode.code), 409, 'item_sold');
      const replay = await purchase(winnerCode.code);
      assert.equal(replay.status, 200, show(replay));
      assert.equal(replay.text, receipt.text);
    }

    assert.deepEqual(await snapshot(), before);
    const row = await itemRow(itemId);
    assert.equal(row?.buyerId, winner);
    assert.equal(row?.purchaseCode, winnerCode.code);
    assert.equal(await boughtBy(loser), undefined);
    assert.equal(await boughtBy(winner), 1);
  });

  test('the 11th purchase of a user is 429 limit_reached, however often it is tried', async () => {
    const user = newUser('greedy');
    const bought: Receipt[] = [];
    for (let index = 0; index < 10; index += 1) bought.push(await buy(user, freshItem()));
    const eleventh = freshItem();
    const issued = await checkout(user, eleventh);
    const before = await snapshot();

    const refused = await purchase(issued.code);
    assertError(refused, 429, 'limit_reached');
    assert.ok(refused.text.includes(LIMIT_MESSAGE_10), refused.text);
    assert.equal(refused.body.message, LIMIT_MESSAGE_10);

    const again = await purchase(issued.code);
    assertError(again, 429, 'limit_reached');
    assert.equal(again.text, refused.text);
    // A code that filled the limit still replays its receipt.
    const replay = await purchase(bought[0]!.code);
    assert.equal(replay.status, 200, show(replay));
    assert.deepEqual(replay.body, bought[0]);
    // A new code for yet another item is refused too.
    const other = await checkout(user, freshItem());
    assertError(await purchase(other.code), 429, 'limit_reached');

    assert.deepEqual(await snapshot(), before);
    assert.equal(await boughtBy(user), 10);
    assert.equal((await itemRow(eleventh))?.buyerId, null);
    const [owned] = await database.sql<{ count: number }[]>`
      select count(*) as count from items where buyer_id = ${user} and sale_id = ${saleId}`;
    assert.equal(owned!.count, 10);
  });

  test('the limit is the one stored with the sale: PER_USER_LIMIT=3 on a fresh database says 3', async () => {
    const limitDatabase = await createDatabase();
    const limitPrefix = uniquePrefix();
    const limitApp = await startApp(limitDatabase, limitPrefix, { PER_USER_LIMIT: '3' });
    try {
      await ensureCurrentSale(limitDatabase.sql, limitApp.config); // as start-up does
      const sales = await send('GET', '/sales', limitApp);
      assert.equal(sales.status, 200, show(sales));
      const sale = (sales.body.sales as Json[])[0]!;
      assert.equal(sale.per_user_limit, 3);
      const items = (await limitDatabase.sql<{ id: number }[]>`select id from items where sale_id = ${sale.id as number} order by id limit 5`).map(
        (row) => row.id,
      );
      const user = 'limited-user';
      for (const itemId of items.slice(0, 3)) await buy(user, itemId, limitApp);
      const issued = await checkout(user, items[3]!, limitApp);
      const before = await snapshot(limitDatabase.sql);

      const refused = await purchase(issued.code, limitApp);
      assertError(refused, 429, 'limit_reached');
      assert.equal(refused.body.message, 'User has reached the maximum of 3 items per sale');
      assert.ok(!refused.text.includes('maximum of 10'));
      const again = await purchase(issued.code, limitApp);
      assert.equal(again.status, 429);
      assert.equal(again.text, refused.text);

      assert.deepEqual(await snapshot(limitDatabase.sql), before);
      const [row] = await limitDatabase.sql<{ bought: number }[]>`select bought from sale_buyers where user_id = ${user}`;
      assert.equal(row!.bought, 3);
    } finally {
      await limitApp.close();
      await limitDatabase.drop();
      await dropRedisPrefix(limitPrefix);
    }
  });

  test('an instance started with another PER_USER_LIMIT keeps the existing sale at its own limit', async () => {
    const otherPrefix = uniquePrefix();
    const otherApp = await startApp(database, otherPrefix, { PER_USER_LIMIT: '3' });
    try {
      const user = newUser('other-instance');
      for (let index = 0; index < 4; index += 1) await buy(user, freshItem(), otherApp);
      assert.equal(await boughtBy(user), 4);
    } finally {
      await otherApp.close();
      await dropRedisPrefix(otherPrefix);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// GET /health

describe('GET /health', () => {
  test('answers ok for PostgreSQL and Redis', async () => {
    const reply = await send('GET', '/health');
    assert.equal(reply.status, 200, show(reply));
    assert.deepEqual(reply.body, { status: 'ok', database: 'ok', redis: 'ok' });
  });
});

// ---------------------------------------------------------------------------------------------
// Sales and items

type SaleView = { id: number; starts_at: string; items: number; sold: number; per_user_limit: number; open: boolean };
type ItemView = { id: number; sale_id: number; name: string; image_url: string; sold: boolean };

async function soldCount(sale = saleId): Promise<number> {
  const [row] = await database.sql<{ count: number }[]>`select count(*) as count from items where sale_id = ${sale} and buyer_id is not null`;
  return row!.count;
}

describe('GET /sales', () => {
  test('lists the current sale with its 10,000 items and the sold count of the database', async () => {
    // Sell one more right here, so the count is not trivially zero.
    await buy(newUser('sales-list'), freshItem());
    await refreshSoldCounts(database.sql);
    const reply = await send('GET', '/sales');
    assert.equal(reply.status, 200, show(reply));
    assert.deepEqual(Object.keys(reply.body).sort(), ['next_after', 'next_sale_at', 'sales']);
    const sales = reply.body.sales as SaleView[];
    // The sale of this file (saleId) is the current one unless the test run crossed an hour boundary.
    const [latest] = await database.sql<{ id: number }[]>`select id from sales order by starts_at desc limit 1`;
    assert.equal(sales[0]!.id, latest!.id, 'newest first');
    const current = sales.find((sale) => sale.id === saleId);
    assert.ok(current, 'the current sale is listed');
    assert.deepEqual(Object.keys(current).sort(), ['id', 'items', 'open', 'per_user_limit', 'sold', 'starts_at']);
    assert.equal(current.items, 10_000);
    assert.equal(current.per_user_limit, 10);
    assert.equal(current.sold, await soldCount(current.id));
    assert.ok(current.sold > 0);
    assert.equal(current.open, true);
    for (const sale of sales) assert.equal(sale.sold, await soldCount(sale.id));
    const startsAt = Date.parse(sales[0]!.starts_at);
    const nextSaleAt = Date.parse(reply.body.next_sale_at as string);
    assert.ok(startsAt <= Date.now(), 'the current sale has started');
    assert.ok(nextSaleAt > Date.now(), 'next_sale_at is in the future');
    assert.equal(nextSaleAt - startsAt, 3600_000, 'sales are an hour apart');
    assert.equal(startsAt % 3600_000, 0, 'on the hour');
  });

  test('rejects a bad latest parameter with 400 bad_request', async () => {
    for (const latest of ['0', '101', 'abc', '-1']) {
      assertError(await send('GET', `/sales?latest=${latest}`), 400, 'bad_request');
    }
    assert.equal((await send('GET', '/sales?latest=1')).status, 200);
  });
});

describe('GET /sales/:id', () => {
  test('answers one sale, as listed', async () => {
    await refreshSoldCounts(database.sql);
    const reply = await send('GET', `/sales/${saleId}`);
    assert.equal(reply.status, 200, show(reply));
    const sale = reply.body as SaleView;
    assert.equal(sale.id, saleId);
    assert.equal(sale.items, 10_000);
    assert.equal(sale.sold, await soldCount());
    const listed = ((await send('GET', '/sales')).body.sales as SaleView[]).find((entry) => entry.id === saleId);
    assert.deepEqual(sale, listed);
  });

  test('a missing sale is 404 not_found', async () => {
    assertError(await send('GET', `/sales/${saleId + 1000}`), 404, 'not_found');
    assertError(await send('GET', '/sales/999999999999999'), 404, 'not_found');
  });

  test('a non-numeric or out-of-range id is 400 bad_request', async () => {
    for (const id of ['abc', '0', '-1', '1e3', '0x10', '1.5', '1234567890123456', encodeURIComponent("1' or '1'='1")]) {
      assertError(await send('GET', `/sales/${id}`), 400, 'bad_request');
    }
  });
});

describe('GET /sales/:id/items', () => {
  test('the default page: 100 items of the sale in id order, sold flags as in the database', async () => {
    const reply = await send('GET', `/sales/${saleId}/items`);
    assert.equal(reply.status, 200, show(reply));
    assert.deepEqual(Object.keys(reply.body).sort(), ['items', 'next_after']);
    const items = reply.body.items as ItemView[];
    assert.equal(items.length, 100);
    assert.deepEqual(items.map((item) => item.id), itemIds.slice(0, 100));
    assert.equal(reply.body.next_after, itemIds[99]);
    const sold = new Set(
      (await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} and buyer_id is not null`).map((row) => row.id),
    );
    for (const item of items) {
      assert.deepEqual(Object.keys(item).sort(), ['id', 'image_url', 'name', 'sale_id', 'sold']);
      assert.equal(item.sale_id, saleId);
      assert.equal(item.sold, sold.has(item.id));
      assert.equal(item.image_url, `/items/${item.id}/image`);
      assert.ok(item.name.length > 0);
    }
  });

  test('keyset pages over every item: no overlap, no gap, next_after null at the end', async () => {
    const seen: number[] = [];
    let afterId = 0;
    let pages = 0;
    for (;;) {
      const reply = await send('GET', `/sales/${saleId}/items?limit=500&after=${afterId}`);
      assert.equal(reply.status, 200, show(reply));
      const items = reply.body.items as ItemView[];
      pages += 1;
      for (const item of items) {
        assert.ok(item.id > (seen.at(-1) ?? 0), 'ids increase across pages: no overlap');
        seen.push(item.id);
      }
      if (reply.body.next_after === null) break;
      assert.equal(reply.body.next_after, items.at(-1)!.id);
      afterId = reply.body.next_after as number;
      assert.ok(pages < 100, 'pagination ends');
    }
    assert.deepEqual(seen, itemIds);
  });

  test('available=true pages over the unsold items only, ending with next_after null', async () => {
    await buy(newUser('paging'), freshItem());
    const unsold = (
      await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} and buyer_id is null order by id`
    ).map((row) => row.id);
    assert.ok(unsold.length < 10_000);
    const seen: number[] = [];
    let afterId = 0;
    let lastPage: ItemView[] | undefined;
    for (let pages = 0; ; pages += 1) {
      assert.ok(pages < 100, 'pagination ends');
      const reply = await send('GET', `/sales/${saleId}/items?available=true&limit=500&after=${afterId}`);
      assert.equal(reply.status, 200, show(reply));
      const items = reply.body.items as ItemView[];
      for (const item of items) {
        assert.equal(item.sold, false);
        assert.ok(item.id > (seen.at(-1) ?? 0), 'no overlap');
        seen.push(item.id);
      }
      lastPage = items;
      if (reply.body.next_after === null) break;
      afterId = reply.body.next_after as number;
    }
    assert.deepEqual(seen, unsold, 'exactly the unsold items');
    if (unsold.length % 500 !== 0) assert.ok(lastPage!.length > 0, 'the last page holds the last items');
  });

  test('a short page near the end has next_after null; a page past the end is empty', async () => {
    const tail = await send('GET', `/sales/${saleId}/items?limit=10&after=${itemIds.at(-4)!}`);
    assert.equal(tail.status, 200, show(tail));
    assert.deepEqual((tail.body.items as ItemView[]).map((item) => item.id), itemIds.slice(-3));
    assert.equal(tail.body.next_after, null);
    const past = await send('GET', `/sales/${saleId}/items?after=${itemIds.at(-1)!}`);
    assert.equal(past.status, 200, show(past));
    assert.deepEqual(past.body, { items: [], next_after: null });
  });

  test('limit bounds: 1 and 500 pass, 0, 501 and non-numbers are 400 bad_request', async () => {
    const one = await send('GET', `/sales/${saleId}/items?limit=1`);
    assert.equal(one.status, 200, show(one));
    assert.equal((one.body.items as ItemView[]).length, 1);
    const most = await send('GET', `/sales/${saleId}/items?limit=500`);
    assert.equal((most.body.items as ItemView[]).length, 500);
    for (const query of ['limit=0', 'limit=501', 'limit=-1', 'limit=abc', 'limit=1.5', 'after=-1', 'after=abc', 'available=maybe']) {
      assertError(await send('GET', `/sales/${saleId}/items?${query}`), 400, 'bad_request');
    }
  });

  test('a missing sale is 404 not_found; a non-numeric id is 400', async () => {
    assertError(await send('GET', `/sales/${saleId + 1000}/items`), 404, 'not_found');
    assertError(await send('GET', `/sales/${saleId + 1000}/items?available=true`), 404, 'not_found');
    assertError(await send('GET', '/sales/abc/items'), 400, 'bad_request');
    assertError(await send('GET', '/sales/0/items'), 400, 'bad_request');
  });
});

describe('GET /items/:id', () => {
  test('answers the item with a stable non-empty name', async () => {
    const itemId = freshItem();
    const first = await send('GET', `/items/${itemId}`);
    assert.equal(first.status, 200, show(first));
    const item = first.body as ItemView;
    assert.deepEqual(Object.keys(item).sort(), ['id', 'image_url', 'name', 'sale_id', 'sold']);
    assert.equal(item.id, itemId);
    assert.equal(item.sale_id, saleId);
    assert.equal(item.sold, false);
    assert.equal(item.image_url, `/items/${itemId}/image`);
    assert.equal(typeof item.name, 'string');
    assert.ok(item.name.trim().length > 0);
    for (let call = 0; call < 3; call += 1) assert.deepEqual((await send('GET', `/items/${itemId}`)).body, item);
    // The same name appears in the listing.
    const listed = (await send('GET', `/sales/${saleId}/items?limit=1&after=${itemId - 1}`)).body.items as ItemView[];
    assert.deepEqual(listed[0], item);
    await buy(newUser('item-view'), itemId);
    const sold = (await send('GET', `/items/${itemId}`)).body as ItemView;
    assert.deepEqual(sold, { ...item, sold: true });
  });

  test('an unknown item is 404 item_unknown; a bad id is 400', async () => {
    assertError(await send('GET', `/items/${itemIds.at(-1)! + 1000}`), 404, 'item_unknown');
    for (const id of ['abc', '0', '-1', '1e3', '1234567890123456']) {
      assertError(await send('GET', `/items/${id}`), 400, 'bad_request');
    }
  });
});

describe('GET /items/:id/image', () => {
  test('answers a cacheable SVG, the same for the same item, different for another', async () => {
    const [a, b] = [freshItem(), freshItem()];
    const first = await send('GET', `/items/${a}/image`);
    assert.equal(first.status, 200, show(first));
    assert.match(String(first.headers['content-type']), /^image\/svg\+xml/);
    assert.ok(first.text.startsWith('<svg'), first.text.slice(0, 40));
    assert.ok(first.text.trimEnd().endsWith('</svg>'));
    assert.ok(first.headers['cache-control'], 'cache-control is set');
    assert.match(String(first.headers['cache-control']), /max-age=\d+/);
    const again = await send('GET', `/items/${a}/image`);
    assert.equal(again.text, first.text, 'the same picture every time');
    const other = await send('GET', `/items/${b}/image`);
    assert.equal(other.status, 200);
    assert.ok(other.text.startsWith('<svg'));
    assert.notEqual(other.text, first.text, 'two items, two pictures');
  });

  test('an unknown item is 404 item_unknown JSON; a bad id is 400', async () => {
    assertError(await send('GET', `/items/${itemIds.at(-1)! + 1000}/image`), 404, 'item_unknown');
    assertError(await send('GET', '/items/abc/image'), 400, 'bad_request');
  });
});

describe('GET /users/:user_id/purchases', () => {
  test('lists what the user bought, newest first, with an optional sale filter', async () => {
    const user = newUser('collector');
    const receipts: Receipt[] = [];
    for (let index = 0; index < 3; index += 1) receipts.push(await buy(user, freshItem()));
    // A checkout alone is not a purchase.
    await checkout(user, freshItem());

    const reply = await send('GET', `/users/${user}/purchases`);
    assert.equal(reply.status, 200, show(reply));
    assert.deepEqual(Object.keys(reply.body).sort(), ['purchases', 'user_id']);
    assert.equal(reply.body.user_id, user);
    const purchases = reply.body.purchases as Json[];
    assert.deepEqual(
      purchases.map((entry) => entry.item_id),
      receipts.map((receipt) => receipt.item_id).reverse(),
    );
    const rows = await database.sql<{ id: number; soldAt: Date }[]>`
      select id, sold_at as "soldAt" from items where buyer_id = ${user} order by sold_at desc, id desc`;
    assert.deepEqual(purchases.map((entry) => entry.item_id), rows.map((row) => row.id));
    for (const [index, entry] of purchases.entries()) {
      assert.deepEqual(Object.keys(entry).sort(), ['image_url', 'item_id', 'name', 'purchased_at', 'sale_id']);
      assert.equal(entry.sale_id, saleId);
      assert.equal(entry.purchased_at, rows[index]!.soldAt.toISOString());
      assert.equal(entry.image_url, `/items/${entry.item_id as number}/image`);
      const item = (await send('GET', `/items/${entry.item_id as number}`)).body;
      assert.equal(entry.name, item.name);
    }
    const receiptTimes = new Map(receipts.map((receipt) => [receipt.item_id, receipt.purchased_at]));
    for (const entry of purchases) assert.equal(entry.purchased_at, receiptTimes.get(entry.item_id as number));

    const filtered = await send('GET', `/users/${user}/purchases?sale_id=${saleId}`);
    assert.equal(filtered.status, 200);
    assert.deepEqual(filtered.body, reply.body);
    const otherSale = await send('GET', `/users/${user}/purchases?sale_id=${saleId + 1000}`);
    assert.equal(otherSale.status, 200);
    assert.deepEqual(otherSale.body, { user_id: user, purchases: [] });
    const nobody = await send('GET', `/users/${newUser('nobody')}/purchases`);
    assert.equal(nobody.status, 200);
    assert.deepEqual((nobody.body.purchases as Json[]).length, 0);
  });

  test('accepts every allowed character in a user id', async () => {
    const user = `A.b_c-d:e@f${userCounter++}`;
    const receipt = await buy(user, freshItem());
    const reply = await send('GET', `/users/${encodeURIComponent(user)}/purchases`);
    assert.equal(reply.status, 200, show(reply));
    assert.equal(reply.body.user_id, user);
    assert.deepEqual((reply.body.purchases as Json[]).map((entry) => entry.item_id), [receipt.item_id]);
  });

  test('an invalid user id or sale_id is 400 bad_request', async () => {
    for (const user of [
      encodeURIComponent('bob smith'),
      encodeURIComponent('zoë'),
      encodeURIComponent("' or 1=1 --"),
      'a'.repeat(65),
      'a'.repeat(100),
      'a%00b',
    ]) {
      assertError(await send('GET', `/users/${user}/purchases`), 400, 'bad_request');
    }
    for (const sale of ['abc', '0', '-1', '1e3', '']) {
      assertError(await send('GET', `/users/valid-user/purchases?sale_id=${sale}`), 400, 'bad_request');
    }
  });

  // Fastify's router refuses path parameters over maxParamLength (100 by default) before any schema
  // runs, so these invalid ids would come back as "no such route" instead of a bad request.
  test('an id longer than 100 characters in the path is 400 bad_request too, not 404', async () => {
    assertError(await send('GET', `/users/${'a'.repeat(101)}/purchases`), 400, 'bad_request');
    assertError(await send('GET', `/users/${'a'.repeat(1000)}/purchases`), 400, 'bad_request');
    assertError(await send('GET', `/sales/${'1'.repeat(101)}`), 400, 'bad_request');
    assertError(await send('GET', `/sales/${'1'.repeat(101)}/items`), 400, 'bad_request');
    assertError(await send('GET', `/items/${'1'.repeat(101)}`), 400, 'bad_request');
  });
});

describe('validation messages', () => {
  // Written for people: the field and what it takes, from the schema's description, never a pattern.
  const cases: [string, string, string][] = [
    ['GET', '/sales?limit=abc', 'limit must be a whole number from 1 to 100: the open sales per page'],
    ['GET', '/sales/1/items?limit=501', 'limit must be a whole number from 1 to 500: the items per page'],
    ['GET', '/sales/1/items?available=maybe', 'available must be true or false: only items not yet sold'],
    ['POST', '/checkout?id=1', 'user_id is required'],
    ['POST', '/checkout?user_id=..&id=1', 'user_id must be 1 to 64 letters, digits or _ . : @ -, not only dots'],
    ['POST', '/checkout?user_id=a&id=0x10', 'id must be a positive whole number'],
    ['POST', '/purchase?code=short', 'code must be the 22-character code from checkout'],
    ['GET', '/items/abc', 'id must be a positive whole number'],
  ];
  for (const [method, url, message] of cases) {
    test(`${method} ${url}: 400 "${message}"`, async () => {
      const response = await testApp.app.inject({ method: method as 'GET' | 'POST', url });
      assert.equal(response.statusCode, 400);
      assert.deepEqual(response.json(), { error: 'bad_request', message });
    });
  }
});

describe('requests refused before validation (body and content type)', () => {
  // errors.ts: "this table alone maps codes to HTTP statuses": an error body's code must agree with the status.
  const statusOf: Record<string, number> = errorStatus;
  const cases: [string, Record<string, string>, string][] = [
    ['invalid JSON body', { 'content-type': 'application/json' }, '{bad'],
    ['empty JSON body', { 'content-type': 'application/json' }, ''],
    ['a body over the 1 KiB limit', { 'content-type': 'application/json' }, JSON.stringify({ pad: 'x'.repeat(2000) })],
    ['an unsupported content type', { 'content-type': 'text/xml' }, '<a/>'],
  ];
  for (const [label, headers, payload] of cases) {
    test(`POST /checkout with ${label}: a 4xx whose error code matches its status, recorded once`, async () => {
      const itemId = freshItem();
      const before = await snapshot();
      const { maxId } = await attemptsCount();
      const response = await testApp.app.inject({ method: 'POST', url: `/checkout?user_id=${newUser('body')}&id=${itemId}`, headers, payload });
      const reply: Reply = { status: response.statusCode, body: response.json() as Json, text: response.body, headers: response.headers };
      assert.ok(reply.status >= 400 && reply.status < 500, show(reply));
      assertError(reply, reply.status, String(reply.body.error));
      assert.equal(statusOf[String(reply.body.error)], reply.status, `error code "${String(reply.body.error)}" is not a ${reply.status}`);
      const rows = await attemptsAfter(maxId);
      assert.equal(rows.length, 1);
      assert.equal(rows[0]!.outcome, 'bad_request');
      assert.deepEqual(await snapshot(), before);
    });
  }
});

describe('form-encoded posts (curl -d \'\')', () => {
  test('a checkout and a purchase sent with an empty form body work: parameters travel in the query', async () => {
    const headers = { 'content-type': 'application/x-www-form-urlencoded' };
    const checkoutReply = await testApp.app.inject({ method: 'POST', url: `/checkout?user_id=${newUser('form')}&id=${freshItem()}`, headers, payload: '' });
    assert.equal(checkoutReply.statusCode, 200, checkoutReply.body);
    const purchaseReply = await testApp.app.inject({ method: 'POST', url: `/purchase?code=${checkoutReply.json().code}`, headers, payload: '' });
    assert.equal(purchaseReply.statusCode, 200, purchaseReply.body);
    assert.equal(purchaseReply.json().message, 'Purchase successful');
  });
});

describe('unknown routes', () => {
  test('answer 404 not_found JSON', async () => {
    for (const [method, url] of [
      ['GET', '/nope'],
      ['POST', '/nope?x=1'],
      ['GET', '/checkout?user_id=u&id=1'],
      ['GET', '/purchase?code=x'],
      ['POST', '/health'],
      ['POST', '/sales'],
    ] as const) {
      const { maxId } = await attemptsCount();
      const reply = await send(method, url);
      assertError(reply, 404, 'not_found');
      assert.equal((await attemptsAfter(maxId)).length, 0, 'a wrong route records no checkout attempt');
    }
  });
});

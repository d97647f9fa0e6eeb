// The HTTP contract of POST /purchase: receipts, replays, expiry, sold items and the per-user limit, and
// what the database holds afterwards. Talks to the same app server.ts builds, through inject().
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, test } from 'node:test';
import { ensureCurrentSale } from '../src/store.ts';
import {
  assertError,
  attemptsCount,
  boughtBy,
  buy,
  checkout,
  CODE_PATTERN,
  createDatabase,
  database,
  dropRedisPrefix,
  freshItem,
  itemRow,
  type Json,
  LIMIT_MESSAGE_10,
  newUser,
  prefix,
  purchase,
  type Receipt,
  saleId,
  send,
  show,
  snapshot,
  startApp,
  uniquePrefix,
  useContractApp,
} from './helpers.ts';

useContractApp();

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
    // Exactly the ten items, each bought with its own code (as the reference client checks).
    const owned = await database.sql<{ id: number; code: string }[]>`
      select id, purchase_code as code from items where buyer_id = ${user} and sale_id = ${saleId} order by id`;
    assert.deepEqual(owned.map((row) => [row.id, row.code]), bought.map((receipt) => [receipt.item_id, receipt.code]));
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

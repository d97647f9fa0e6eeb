// The HTTP contract of POST /checkout: codes, outcomes, every bad parameter refused and recorded, and
// what the database holds afterwards. Talks to the same app server.ts builds, through inject().
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { newCode } from '../src/shop.ts';
import {
  assertError,
  attemptsAfter,
  attemptsCount,
  boughtBy,
  buy,
  CODE_PATTERN,
  database,
  freshItem,
  type Issued,
  itemIds,
  itemRow,
  newUser,
  saleId,
  send,
  show,
  snapshot,
  useContractApp,
} from './helpers.ts';

useContractApp();

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

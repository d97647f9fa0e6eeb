// The HTTP contract of the read endpoints (health, sales, items, images, a user's purchases): bodies,
// keyset pages and refusals. Talks to the same app server.ts builds, through inject().
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { refreshSoldCounts } from '../src/store.ts';
import {
  assertError,
  buy,
  checkout,
  database,
  freshItem,
  itemIds,
  type Json,
  newUser,
  type Receipt,
  saleId,
  send,
  show,
  useContractApp,
} from './helpers.ts';

useContractApp();

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
    const user = `A.b_c-d:e@f${newUser('')}`;
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

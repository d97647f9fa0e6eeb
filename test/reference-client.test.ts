// The reference client's scenario: one user checks out and buys items one by one up to the limit of
// 10; the 11th checkout still gives a code, and the 11th purchase is refused with 429 and the message
// the reference's clients look for. Then the database holds exactly what was sold.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ensureCurrentSale } from '../src/store.ts';
import { useTestApp } from './helpers.ts';

const LIMIT_MESSAGE = 'User has reached the maximum of 10 items per sale';

const fixture = useTestApp();

type Reply = { status: number; text: string; body: Record<string, unknown> };

async function post(url: string): Promise<Reply> {
  const response = await fixture.testApp.app.inject({ method: 'POST', url });
  return { status: response.statusCode, text: response.body, body: response.json() as Record<string, unknown> };
}

test('one user buys 10 items one by one; the 11th purchase is refused with 429', async () => {
  const user = 'reference-client-user';
  await ensureCurrentSale(fixture.database.sql, fixture.testApp.config); // as start-up does

  // Like the client: find the current sale and its available items through the API.
  const sales = await fixture.testApp.app.inject({ method: 'GET', url: '/sales' });
  assert.equal(sales.statusCode, 200, sales.body);
  const sale = (sales.json() as { sales: { id: number; items: number; per_user_limit: number }[] }).sales[0]!;
  assert.equal(sale.items, 10_000);
  assert.equal(sale.per_user_limit, 10);
  const page = await fixture.testApp.app.inject({ method: 'GET', url: `/sales/${sale.id}/items?available=true&limit=11` });
  assert.equal(page.statusCode, 200, page.body);
  const items = (page.json() as { items: { id: number; sold: boolean }[] }).items.map((item) => item.id);
  assert.equal(items.length, 11);

  const codes: string[] = [];
  for (const [index, itemId] of items.slice(0, 10).entries()) {
    const checkout = await post(`/checkout?user_id=${user}&id=${itemId}`);
    assert.equal(checkout.status, 200, `checkout ${index + 1}: ${checkout.text}`);
    const code = checkout.body.code as string;
    assert.match(code, /^[A-Za-z0-9_-]{22}$/);
    codes.push(code);

    const purchase = await post(`/purchase?code=${code}`);
    assert.equal(purchase.status, 200, `purchase ${index + 1}: ${purchase.text}`);
    assert.equal(purchase.body.message, 'Purchase successful');
    assert.equal(purchase.body.item_id, itemId);
    assert.equal(purchase.body.user_id, user);
    assert.equal(purchase.body.sale_id, sale.id);
  }

  const eleventh = items[10]!;
  const checkout = await post(`/checkout?user_id=${user}&id=${eleventh}`);
  assert.equal(checkout.status, 200, `the 11th checkout: ${checkout.text}`);
  const code = checkout.body.code as string;
  assert.match(code, /^[A-Za-z0-9_-]{22}$/);
  assert.ok(!codes.includes(code));

  const refused = await post(`/purchase?code=${code}`);
  assert.equal(refused.status, 429, refused.text);
  assert.ok(refused.text.includes(LIMIT_MESSAGE), refused.text);
  assert.equal(refused.body.error, 'limit_reached');
  assert.equal(refused.body.message, LIMIT_MESSAGE);

  // The database: exactly the 10 items, the counter at 10, the 11th unsold.
  const owned = await fixture.database.sql<{ id: number; purchaseCode: string }[]>`
    select id, purchase_code as "purchaseCode" from items
    where buyer_id = ${user} and sale_id = ${sale.id} order by id`;
  assert.deepEqual(owned.map((row) => row.id), items.slice(0, 10));
  assert.deepEqual(owned.map((row) => row.purchaseCode), codes);
  const [buyer] = await fixture.database.sql<{ bought: number }[]>`
    select bought from sale_buyers where sale_id = ${sale.id} and user_id = ${user}`;
  assert.equal(buyer?.bought, 10);
  const [unsold] = await fixture.database.sql<{ buyerId: string | null; purchaseCode: string | null; soldAt: Date | null }[]>`
    select buyer_id as "buyerId", purchase_code as "purchaseCode", sold_at as "soldAt" from items where id = ${eleventh}`;
  assert.deepEqual(unsold, { buyerId: null, purchaseCode: null, soldAt: null });
  const [attempts] = await fixture.database.sql<{ issued: number; other: number }[]>`
    select count(*) filter (where outcome = 'issued') as issued, count(*) filter (where outcome <> 'issued') as other
    from checkout_attempts where user_id = ${user}`;
  assert.deepEqual({ ...attempts }, { issued: 11, other: 0 });
});

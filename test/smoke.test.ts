import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ensureCurrentSale } from '../src/store.ts';
import { useTestApp } from './helpers.ts';

const fixture = useTestApp();

test('a checkout then a purchase sells the item', async () => {
  await ensureCurrentSale(fixture.database.sql, fixture.testApp.config); // as start-up does
  const sales = await fixture.testApp.app.inject({ method: 'GET', url: '/sales' });
  assert.equal(sales.statusCode, 200);
  const saleId = sales.json().sales[0].id;
  const [item] = await fixture.database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id limit 1`;
  const checkout = await fixture.testApp.app.inject({ method: 'POST', url: `/checkout?user_id=u1&id=${item!.id}` });
  assert.equal(checkout.statusCode, 200);
  const purchase = await fixture.testApp.app.inject({ method: 'POST', url: `/purchase?code=${checkout.json().code}` });
  assert.equal(purchase.statusCode, 200);
  assert.equal(purchase.json().message, 'Purchase successful');
  const [row] = await fixture.database.sql`select buyer_id from items where id = ${item!.id}`;
  assert.equal(row!.buyer_id, 'u1');
});

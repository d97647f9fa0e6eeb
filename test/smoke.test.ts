import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createDatabase, dropRedisPrefix, startApp, uniquePrefix, type TestApp, type TestDatabase } from './helpers.ts';

let database: TestDatabase;
let testApp: TestApp;
const prefix = uniquePrefix();

before(async () => {
  database = await createDatabase();
  testApp = await startApp(database, prefix);
});
after(async () => {
  await testApp.close();
  await database.drop();
  await dropRedisPrefix(prefix);
});

test('a checkout then a purchase sells the item', async () => {
  const sales = await testApp.app.inject({ method: 'GET', url: '/sales' });
  assert.equal(sales.statusCode, 200);
  const saleId = sales.json().sales[0].id;
  const [item] = await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id limit 1`;
  const checkout = await testApp.app.inject({ method: 'POST', url: `/checkout?user_id=u1&id=${item!.id}` });
  assert.equal(checkout.statusCode, 200);
  const purchase = await testApp.app.inject({ method: 'POST', url: `/purchase?code=${checkout.json().code}` });
  assert.equal(purchase.statusCode, 200);
  assert.equal(purchase.json().message, 'Purchase successful');
  const [row] = await database.sql`select buyer_id from items where id = ${item!.id}`;
  assert.equal(row!.buyer_id, 'u1');
});

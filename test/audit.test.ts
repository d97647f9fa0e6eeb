// The audit is the second path that checks the rules: every other test asks it for a clean bill, so
// here each kind of violation is written into the database behind the rules' back, one sale each, and
// the audit must name exactly that one. Constraints that make a violation impossible are dropped first.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { auditSales, violations, type SaleAudit } from '../src/audit.ts';
import { createDatabase, type TestDatabase } from './helpers.ts';

let database: TestDatabase;
const sql = () => database.sql;

before(async () => {
  database = await createDatabase();
});

after(async () => {
  await database?.drop();
});

let hour = 0;

// A sale of `items` items (its declared size may differ), ids in order.
async function newSale(size: number, perUserLimit: number, items = size): Promise<{ id: number; items: number[] }> {
  hour += 1;
  const [sale] = await sql()<{ id: number }[]>`
    insert into sales (starts_at, size, per_user_limit)
    values (timestamptz '2001-01-01 00:00:00+00' + make_interval(hours => ${hour}), ${size}, ${perUserLimit})
    returning id`;
  const rows = await sql()<{ id: number }[]>`
    insert into items (sale_id, seed) select ${sale!.id}, g from generate_series(1, ${items}) g returning id`;
  return { id: sale!.id, items: rows.map((row) => row.id).sort((a, b) => a - b) };
}

// A checkout through the service's own function; returns the issued code.
async function checkout(userId: string, itemId: number): Promise<string> {
  const code = `code-${userId}-${itemId}-${Math.random().toString(36).slice(2)}`;
  const [row] = await sql()<{ outcome: string }[]>`select outcome from checkout(${[userId]}::text[], ${[itemId]}::bigint[], ${[code]}::text[], 600)`;
  assert.equal(row!.outcome, 'issued');
  return code;
}

// A sale by the rules: checkout() then purchase().
async function buy(userId: string, itemId: number): Promise<string> {
  const code = await checkout(userId, itemId);
  const [row] = await sql()<{ outcome: string }[]>`select outcome from purchase(${[code]}::text[])`;
  assert.equal(row!.outcome, 'purchased');
  return code;
}

// A sale behind the rules' back: the item, the buyer's count and the sale's tally written directly.
async function forceSale(saleId: number, userId: string, itemId: number, code: string): Promise<void> {
  await sql()`update items set buyer_id = ${userId}, purchase_code = ${code}, sold_at = now() where id = ${itemId}`;
  await sql()`insert into sold_tallies (sale_id, items) values (${saleId}, 1)`;
  await sql()`
    insert into sale_buyers (sale_id, user_id, bought) values (${saleId}, ${userId}, 1)
    on conflict (sale_id, user_id) do update set bought = sale_buyers.bought + 1`;
}

test('the audit names each kind of violation, on the sale that has it, and nothing on a sound sale', async () => {
  const sound = await newSale(5, 2);
  await buy('alice', sound.items[0]!);
  await buy('alice', sound.items[1]!);
  await buy('bob', sound.items[2]!);
  await checkout('carol', sound.items[3]!); // a code never used: still sound

  const missingItem = await newSale(5, 2);
  await sql()`delete from items where id = ${missingItem.items[4]!}`;

  const oversold = await newSale(5, 10, 6);
  for (const [index, itemId] of oversold.items.entries()) await buy(`u${index}`, itemId);

  const overLimit = await newSale(5, 2);
  for (const itemId of overLimit.items.slice(0, 3)) await forceSale(overLimit.id, 'greedy', itemId, await checkout('greedy', itemId));

  const noCode = await newSale(5, 2);
  await forceSale(noCode.id, 'mallory', noCode.items[0]!, 'never-issued');
  const otherItemsCode = await checkout('mallory', noCode.items[2]!);
  await forceSale(noCode.id, 'mallory', noCode.items[1]!, otherItemsCode); // a real code, for another item

  const miscounted = await newSale(5, 3);
  await buy('dave', miscounted.items[0]!);
  await buy('erin', miscounted.items[1]!);
  await sql()`update sale_buyers set bought = 2 where sale_id = ${miscounted.id} and user_id = 'dave'`;
  await sql()`delete from sale_buyers where sale_id = ${miscounted.id} and user_id = 'erin'`;

  // Impossible while the constraints stand: one code on two items, and one item sold twice.
  await sql()`alter table items drop constraint items_purchase_code_key`;
  const codeTwice = await newSale(5, 2);
  const shared = await checkout('frank', codeTwice.items[0]!);
  await forceSale(codeTwice.id, 'frank', codeTwice.items[0]!, shared);
  await forceSale(codeTwice.id, 'frank', codeTwice.items[1]!, shared);

  await sql()`alter table items drop constraint items_pkey cascade`;
  const soldTwice = await newSale(6, 2, 5);
  await buy('grace', soldTwice.items[0]!);
  await sql()`
    insert into items (id, sale_id, seed, buyer_id, purchase_code, sold_at) overriding system value
    select id, sale_id, seed, 'heidi', purchase_code || '-again', sold_at from items where id = ${soldTwice.items[0]!}`;
  await sql()`insert into sale_buyers (sale_id, user_id, bought) values (${soldTwice.id}, 'heidi', 1)`;
  await sql()`insert into sold_tallies (sale_id, items) values (${soldTwice.id}, 1)`;

  // The sold figure browsing shows, ahead of what was sold (one tally not yet folded in).
  const figureAhead = await newSale(5, 2);
  await buy('ivan', figureAhead.items[0]!);
  await sql()`update sales set sold = 3 where id = ${figureAhead.id}`;

  const report = new Map((await auditSales(sql())).map((sale) => [sale.saleId, sale]));
  const found = (saleId: number) => violations(report.get(saleId)!);

  assert.deepEqual(found(sound.id), []);
  const figures = report.get(sound.id)!;
  assert.deepEqual(
    { items: figures.items, sold: figures.sold, buyers: figures.buyers, attempts: figures.attempts, attemptsIssued: figures.attemptsIssued },
    { items: 5, sold: 3, buyers: 2, attempts: 4, attemptsIssued: 4 },
  );
  assert.deepEqual(found(missingItem.id), ['has 4 items, not 5']);
  assert.deepEqual(found(oversold.id), ['has 6 items, not 5', 'sold 6 of 5']);
  assert.deepEqual(found(overLimit.id), ['1 buyers over the limit of 2']);
  assert.deepEqual(found(noCode.id), ['2 purchases without a matching issued code']);
  assert.deepEqual(found(miscounted.id), ['2 buyers whose counted purchases disagree with their items']);
  assert.deepEqual(found(codeTwice.id), ['1 purchases without a matching issued code', '1 codes used twice']);
  // The second row of item soldTwice.items[0] has a code nobody was issued, so that shows too.
  assert.deepEqual(found(soldTwice.id), ['1 items sold twice', '1 purchases without a matching issued code']);
  assert.deepEqual(found(figureAhead.id), ['sold figure 3 and tallies 1 disagree with 1 sold']);
  const twice: SaleAudit = report.get(soldTwice.id)!;
  assert.equal(twice.sold, 2);
});

// purchase() called straight from 32 connections at once, each call in its own transaction (no coalescer,
// no service), over buyers and items that overlap: several buyers racing for each item, each buyer's codes
// spread over many connections, more codes per buyer than the limit, some codes sent twice. PostgreSQL
// alone must keep the rules: no deadlock, nobody over the limit, no item sold twice, and every answer
// agrees with the database afterwards.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { auditSales, violations } from '../src/audit.ts';
import { connect, type Sql } from '../src/db.ts';
import { newCode } from '../src/shop.ts';
import * as store from '../src/store.ts';
import { createDatabase, currentSaleId } from './helpers.ts';

const connections = 32;
// Each round races 64 buyers of 4 codes each over 24 items of its own (each item wanted by about 11
// buyers) with a limit of 1, in calls of 6 codes. A wrong lock order deadlocks only when two calls
// interleave just so: eight rounds make that likely (it did in the first three, every time tried).
const rounds = 8;
const itemsPerRound = 24;
const perUserLimit = 1;
const users = 64;
const codesPerUser = 4;
const codesPerCall = 6;

type Answer = { code: string; outcome: string; itemId: number | null; userId: string | null };

// A fixed shuffle (a linear congruential generator), so that a failure can be run again as it was.
function shuffled<T>(values: T[], seed: number): T[] {
  const copy = [...values];
  let state = seed;
  for (let index = copy.length - 1; index > 0; index -= 1) {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    const other = state % (index + 1);
    [copy[index], copy[other]] = [copy[other]!, copy[index]!];
  }
  return copy;
}

// One round: checkouts, then every purchase from 32 connections at once, then each answer against the database.
async function race(admin: Sql, sql: Sql, saleId: number, round: number, itemIds: number[]): Promise<Set<string>> {
  // Buyer u wants items 5u, 5u + 7, ... of the round's items.
  const requests = Array.from({ length: users }, (_, user) =>
    Array.from({ length: codesPerUser }, (_, k) => ({ userId: `racer-${round}-${user}`, itemId: itemIds[(user * 5 + k * 7) % itemIds.length]!, code: newCode() })),
  ).flat();
  const issued = await store.checkout(admin, requests, 600);
  assert.ok(issued.every((row) => row.outcome === 'issued'));
  const ownerOf = new Map(requests.map((request) => [request.code, request]));

  // Every code once, a quarter of them twice, in calls of six whose order mixes buyers and items.
  const codes = shuffled([...requests.map((request) => request.code), ...requests.filter((_, index) => index % 4 === 0).map((request) => request.code)], 7 + round);
  const calls = Array.from({ length: Math.ceil(codes.length / codesPerCall) }, (_, index) => codes.slice(index * codesPerCall, (index + 1) * codesPerCall));

  const answers: Answer[] = [];
  const failures: { code?: string; message: string }[] = [];
  let next = 0;
  // Each connection takes the next call until none are left. The pause keeps the transaction's row
  // locks held a while, so that the other connections queue on them.
  const worker = async () => {
    while (next < calls.length) {
      const call = calls[next++]!;
      try {
        const rows = await sql.begin(async (tx) => {
          const decided = await tx<{ ord: number; outcome: string; itemId: number | null; userId: string | null }[]>`
            select ord, outcome, item_id as "itemId", user_id as "userId" from purchase(${call}::text[])`;
          await tx`select pg_sleep(0.03)`;
          return decided;
        });
        for (const row of rows) answers.push({ code: call[Number(row.ord) - 1]!, outcome: row.outcome, itemId: row.itemId, userId: row.userId });
      } catch (error) {
        failures.push(error as { code?: string; message: string });
      }
    }
  };
  await Promise.all(Array.from({ length: connections }, worker));

  assert.deepEqual(failures.map((failure) => `${failure.code} ${failure.message}`), [], `round ${round}: every call ended with an answer: no deadlock (40P01), no timeout`);
  assert.equal(answers.length, codes.length, 'every code was answered');

  const sold = await admin<{ id: number; buyerId: string; code: string }[]>`
    select id, buyer_id as "buyerId", purchase_code as code from items where id in ${admin(itemIds)} and buyer_id is not null`;
  const soldByCode = new Map(sold.map((item) => [item.code, item]));
  const buyers = new Map(
    (await admin<{ userId: string; bought: number }[]>`
      select user_id as "userId", bought from sale_buyers where sale_id = ${saleId} and user_id like ${`racer-${round}-%`}`).map((row) => [row.userId, row.bought]),
  );

  // Every answer agrees with the database.
  const purchasedBy = new Map<string, number>();
  const purchasedCodes = new Set<string>();
  for (const answer of answers) {
    const request = ownerOf.get(answer.code)!;
    const context = `round ${round}: ${answer.outcome} for ${request.userId} item ${request.itemId}`;
    assert.deepEqual([answer.userId, answer.itemId], [request.userId, request.itemId], context);
    const item = soldByCode.get(answer.code);
    switch (answer.outcome) {
      case 'purchased':
        assert.ok(!purchasedCodes.has(answer.code), `a code bought twice: ${context}`);
        purchasedCodes.add(answer.code);
        purchasedBy.set(request.userId, (purchasedBy.get(request.userId) ?? 0) + 1);
        assert.equal(item?.id, request.itemId, context);
        break;
      case 'replayed':
        assert.equal(item?.id, request.itemId, context);
        break;
      case 'item_sold': {
        const owner = sold.find((row) => row.id === request.itemId);
        assert.ok(owner && owner.code !== answer.code, `refused, yet the item is not another code's: ${context}`);
        break;
      }
      case 'limit_reached':
        assert.equal(item, undefined, context);
        assert.equal(buyers.get(request.userId), perUserLimit, `refused at the limit, yet the buyer is under it: ${context}`);
        break;
      default:
        assert.fail(`unexpected outcome: ${context}`);
    }
  }
  assert.equal(purchasedCodes.size, sold.length, 'every sold item is one purchase answered');
  for (const [userId, bought] of buyers) {
    assert.ok(bought <= perUserLimit, `${userId} bought ${bought}`);
    assert.equal(purchasedBy.get(userId), bought, `${userId}'s purchases answered and counted agree`);
  }
  return new Set(answers.map((answer) => answer.outcome));
}

test('purchase() from 32 connections at once over overlapping buyers and items: no deadlock, nobody over the limit, no item twice', { timeout: 120_000 }, async () => {
  const database = await createDatabase();
  const sql = connect(database.url, { max: connections, statementTimeoutMs: 30_000 });
  try {
    const saleId = await currentSaleId(database.sql, rounds * itemsPerRound, perUserLimit);
    const itemIds = (await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id`).map((row) => row.id);
    const outcomes = new Set<string>();
    for (let round = 0; round < rounds; round += 1) {
      const seen = await race(database.sql, sql, saleId, round, itemIds.slice(round * itemsPerRound, (round + 1) * itemsPerRound));
      for (const outcome of seen) outcomes.add(outcome);
    }
    // The race was real: buyers met the limit, lost items to each other, and sent codes again.
    assert.deepEqual([...outcomes].sort(), ['item_sold', 'limit_reached', 'purchased', 'replayed']);
    for (const audit of await auditSales(database.sql)) assert.deepEqual(violations(audit), [], `sale ${audit.saleId}`);
  } finally {
    await sql.end({ timeout: 5 });
    await database.drop();
  }
});

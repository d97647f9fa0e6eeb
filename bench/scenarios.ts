// The four scenarios. Each prepares what it needs, calls run.start() when the measured part begins,
// and returns the facts worth reporting besides the common measurements.
import { randomInt } from 'node:crypto';
import { availableItemIds, createFreshSale, preIssueCodes, saleInfo, type SaleInfo } from './database.ts';
import type { ScenarioName } from './options.ts';
import { runLoops, runPaced, type Run, type ScenarioResult } from './run.ts';
import { newTally, shop, type Tally } from './shopper.ts';

// Loops that never meet a deadline still end: no scenario sends more than this many tasks.
const maxTasks = 10_000_000;
const freshSaleSize = 10_000;

// The first open sale GET /sales lists (the current one when it has items left); a fresh one otherwise.
async function openSale(run: Run): Promise<{ sale: SaleInfo; fresh: boolean }> {
  const reply = await run.http.call('sales', 'GET', '/sales');
  if (reply.kind !== 'ok') throw new Error(`GET /sales answered ${reply.outcome}; is the service running at ${run.options.urls.join(', ')}?`);
  const open = (reply.body!.sales as { id: number; open: boolean }[]).find((sale) => sale.open);
  if (open) return { sale: await saleInfo(run.sql, open.id), fresh: false };
  return { sale: await createFreshSale(run.sql, freshSaleSize), fresh: true };
}

function tallyFacts(tally: Tally): ScenarioResult['facts'] {
  return [
    ['users started', tally.users],
    ['users who got all they wanted', tally.satisfied],
    ['items bought', tally.bought],
    ['items checked out and abandoned', tally.held],
    ['items lost to another buyer (409)', tally.lost],
    ['users stopped by the limit (429)', tally.limit],
    ['failed attempts (errors)', tally.error],
    ['item pages read', tally.pages],
  ];
}

async function flow(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const { sale, fresh } = await openSale(run);
  const tally = newTally();
  await run.start(() => `users ${tally.users}/${options.users}  bought ${tally.bought}`);
  await runLoops(run, options.concurrency, options.users, async (index) => {
    await run.think();
    await run.http.call('sales', 'GET', '/sales');
    const user = { id: `${run.runId}-f${index}`, wants: sale.perUserLimit, abandons: Math.random() < options.abandon };
    await shop(run, sale, user, tally, { think: true, onBought: () => {} });
  });
  return { saleId: sale.id, facts: [['sale', `${sale.id}${fresh ? ' (created: no open sale)' : ''}`], ...tallyFacts(tally)] };
}

// The last tenth of a sale is where users' pages of the list are stale: the split shows what it costs.
type Mark = { ms: number; requests: number; lost: number };

async function stampede(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const sale = await createFreshSale(run.sql, options.items);
  const tally = newTally();
  const nineTenths = Math.ceil(sale.size * 0.9);
  let atNineTenths: Mark | null = null;
  let soldOutMs: number | null = null;
  let purchases = 0;
  const onBought = () => {
    purchases += 1;
    if (purchases === nineTenths) atNineTenths = { ms: run.recorder.elapsedMs(), requests: run.recorder.total, lost: tally.lost };
    if (purchases === sale.size) {
      soldOutMs = run.recorder.elapsedMs();
      run.stop(`sold out: ${sale.size} purchases`);
    }
  };
  await run.start(() => `sold ${tally.bought}/${sale.size}  users ${tally.users}`);
  await runLoops(run, options.concurrency, options.users, async (index) => {
    const user = { id: `${run.runId}-s${index}`, wants: randomInt(1, sale.perUserLimit + 1), abandons: false };
    await shop(run, sale, user, tally, { think: false, onBought });
  });
  const mark = atNineTenths as Mark | null;
  const seconds = (ms: number | null) => (ms === null ? null : Number((ms / 1000).toFixed(3)));
  return {
    saleId: sale.id,
    fullSaleId: sale.id,
    facts: [
      ['sale', `${sale.id} (fresh, ${sale.size} items, ids ${sale.firstItemId}-${sale.lastItemId})`],
      ['time to sell out (s)', seconds(soldOutMs)],
      ['time to sell the first 90% (s)', seconds(mark?.ms ?? null)],
      ['requests until 90% sold', mark?.requests ?? null],
      ['requests for the last 10%', mark ? run.recorder.total - mark.requests : null],
      ['items lost to another buyer (409) in the last 10%', mark ? tally.lost - mark.lost : null],
      ...tallyFacts(tally),
      ['users who never started (sold out first)', options.users - tally.users],
    ],
  };
}

// As fast as the answers come back (closed loops), or paced at --rate requests per second (open loop).
async function drive(run: Run, total: number, task: (index: number, dueAt?: number) => Promise<void>): Promise<void> {
  const { rate, concurrency } = run.options;
  if (rate === null) await runLoops(run, concurrency, total, (index) => task(index));
  else await runPaced(run, rate, total, task);
}

function paceFacts(run: Run): ScenarioResult['facts'] {
  return run.options.rate === null ? [] : [['paced at (req/s)', run.options.rate]];
}

async function checkoutOnly(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const { sale, fresh } = await openSale(run);
  const ids = await availableItemIds(run.sql, sale.id);
  if (ids.length === 0) throw new Error(`sale ${sale.id} has no available items`);
  await run.start(undefined, { settle: true });
  await drive(run, maxTasks, async (index, dueAt) => {
    const itemId = ids[randomInt(ids.length)]!;
    await run.http.call('checkout', 'POST', `/checkout?user_id=${run.runId}-c${index % options.users}&id=${itemId}`, dueAt);
  });
  return {
    saleId: sale.id,
    facts: [['sale', `${sale.id}${fresh ? ' (created: no open sale)' : ''}`], ['items checked out at random', ids.length], ...paceFacts(run)],
  };
}

async function purchaseOnly(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const sale = await createFreshSale(run.sql, options.items);
  const ids = await availableItemIds(run.sql, sale.id);
  const codes = await preIssueCodes(run.sql, sale, ids, options.codes, run.runId);
  let used = 0;
  await run.start(() => `codes ${used}/${codes.length}`, { settle: true });
  await drive(run, codes.length, async (index, dueAt) => {
    used += 1;
    await run.http.call('purchase', 'POST', `/purchase?code=${codes[index]}`, dueAt);
  });
  if (used === codes.length) run.stop(`all ${codes.length} codes used`);
  return {
    saleId: sale.id,
    facts: [
      ['sale', `${sale.id} (fresh, ${sale.size} items)`],
      ['codes pre-issued in SQL', codes.length],
      ['codes used', used],
      ...paceFacts(run),
    ],
  };
}

export const scenarios: Record<ScenarioName, (run: Run) => Promise<ScenarioResult>> = {
  flow,
  stampede,
  'checkout-only': checkoutOnly,
  'purchase-only': purchaseOnly,
};

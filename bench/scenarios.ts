// The four scenarios. Each prepares what it needs, calls run.start() when the measured part begins,
// and returns the facts worth reporting besides the common measurements.
import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
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
    ['users stopped by the per-user limit (429 limit_reached)', tally.limit],
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

// Overload: checkouts as fast as they are answered (closed loop: the peak), a calm spell at a tenth of it
// (the normal p99), a flood on a fixed schedule at --rate or three times the peak, and the calm rate again
// from the moment the flood stops (how soon p99 is back to normal). Every latency counts from when its
// request was due. The service should shed (503 overloaded) what it cannot serve within its queue budget,
// and keep serving the rest at its peak.
// `late`: how long after its due time the generator got to send it (its own lag, not the service's).
type Answer = { dueAt: number; ms: number; late: number; ok: boolean; outcome: string };

const percentile = (values: number[], q: number) => {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
};
const round = (value: number) => Math.round(value * 10) / 10;

async function overload(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const { sale } = await openSale(run);
  const ids = await availableItemIds(run.sql, sale.id);
  let sent = 0;
  const phase = async (seconds: number, rate: number | null): Promise<Answer[]> => {
    const answers: Answer[] = [];
    const stopAt = performance.now() + seconds * 1000;
    const task = async (_index: number, dueAt = performance.now()) => {
      const late = performance.now() - dueAt;
      const index = sent++;
      const reply = await run.http.call('checkout', 'POST', `/checkout?user_id=${run.runId}-o${index % options.users}&id=${ids[randomInt(ids.length)]}`, dueAt);
      answers.push({ dueAt, ms: performance.now() - dueAt, late, ok: reply.status === 200, outcome: reply.outcome });
    };
    if (rate === null) await runLoops(run, options.concurrency, maxTasks, task, stopAt);
    else await runPaced(run, rate, maxTasks, task, stopAt);
    return answers;
  };
  const calmS = 3;
  const afterS = 5;
  await run.start(() => `sent ${sent}`, { settle: true, durationS: 2 * options.durationS + calmS + afterS + 30 });

  const closed = await phase(options.durationS, null);
  const peak = closed.filter((answer) => answer.ok).length / options.durationS;
  const calm = Math.max(1, Math.round(peak / 10));
  const normal = await phase(calmS, calm);
  const normalP99 = percentile(normal.map((answer) => answer.ms), 0.99);
  const rate = options.rate ?? Math.round(3 * peak);
  // The calm load starts when the flood stops sending, while the flood's last requests are still answered.
  const flooding = phase(options.durationS, rate);
  await new Promise((resolve) => setTimeout(resolve, options.durationS * 1000));
  const [flood, after] = await Promise.all([flooding, phase(afterS, calm)]);

  const served = flood.filter((answer) => answer.ok);
  const shed = flood.filter((answer) => answer.outcome === '503 overloaded').length;
  // Back to normal: from the first 250 ms window after the flood from which on no window's p99 is over twice
  // the calm one (or the calm one and 50 ms, as a few answers make a window's p99 its slowest).
  const floodEnd = Math.min(...after.map((answer) => answer.dueAt));
  const windows = Array.from({ length: afterS * 4 }, (_, w) =>
    percentile(after.filter((answer) => Math.floor((answer.dueAt - floodEnd) / 250) === w).map((answer) => answer.ms), 0.99));
  const recovered = windows.findLastIndex((p99) => p99 > Math.max(2 * normalP99, normalP99 + 50)) + 1;
  run.stop('phases done');
  return {
    saleId: sale.id,
    facts: [
      ['sale', sale.id],
      ['closed-loop peak, checkouts answered 200 a second', round(peak)],
      ['closed-loop p99 (ms)', round(percentile(closed.map((answer) => answer.ms), 0.99))],
      [`calm p99 at ${calm} req/s (ms)`, round(normalP99)],
      ['flood: offered req/s', rate],
      ['flood: offered / peak', round(rate / peak)],
      ['flood: served 200 a second', round(served.length / options.durationS)],
      ['flood: served / peak (%)', round((100 * served.length) / options.durationS / peak)],
      ['flood: p99 of the served (ms)', round(percentile(served.map((answer) => answer.ms), 0.99))],
      ['flood: p99 of the served from when sent (ms)', round(percentile(served.map((answer) => answer.ms - answer.late), 0.99))],
      ["flood: the generator's own lag, p99 (ms)", round(percentile(flood.map((answer) => answer.late), 0.99))],
      ['flood: slowest answer (ms)', round(Math.max(...flood.map((answer) => answer.ms)))],
      ['flood: shed (503 overloaded)', shed],
      ['flood: other answers', flood.length - served.length - shed],
      ['after the flood: back to normal p99 within (ms)', recovered === windows.length ? null : recovered * 250],
      ['after the flood: p99 by 250 ms window (ms)', windows.map((p99) => (Number.isNaN(p99) ? '-' : round(p99))).join(' ')],
    ],
  };
}

export const scenarios: Record<ScenarioName, (run: Run) => Promise<ScenarioResult>> = {
  flow,
  stampede,
  'checkout-only': checkoutOnly,
  'purchase-only': purchaseOnly,
  overload,
};

// The five scenarios of the load generator, and what they share: the run's state and clock, the loops
// that drive requests, the sales and codes they prepare in SQL, and the simulated shopper. Each scenario
// prepares what it needs, calls run.start() when the measured part begins, and returns its own facts.
import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Sql } from '../src/db.ts';
import { newCode } from '../src/shop.ts';
import { percentile, type Http, type Recorder } from './client.ts';

export const scenarioNames = ['flow', 'stampede', 'checkout-only', 'purchase-only', 'overload'] as const;
export type ScenarioName = (typeof scenarioNames)[number];

export type Options = {
  scenario: ScenarioName;
  urls: string[];
  databaseUrl: string;
  durationS: number;
  users: number;
  connections: number;
  concurrency: number;
  items: number;
  codes: number;
  thinkMs: [number, number];
  abandon: number;
  // requests per second on a fixed schedule (open loop); null: as fast as answered
  rate: number | null;
  warmUpMs: number;
  out: string;
};

export type Facts = Record<string, string | number | null>;
export type Snapshot = { lastAttemptId: number; soldBySale: Map<number, number> };
export type ScenarioResult = { fullSaleId?: number; facts: Facts };

// Loops that never meet a deadline still end: no scenario sends more than this many requests.
const maxTasks = 10_000_000;

export class Run {
  stopReason: string | null = null;
  before: Snapshot | null = null;
  readonly options: Options;
  readonly http: Http;
  readonly recorder: Recorder;
  readonly sql: Sql;
  readonly runId: string;
  private deadline = Infinity;
  private progress: NodeJS.Timeout | undefined;

  constructor(parts: { options: Options; http: Http; recorder: Recorder; sql: Sql; runId: string }) {
    ({ options: this.options, http: this.http, recorder: this.recorder, sql: this.sql, runId: this.runId } = parts);
  }

  // Setup is over: warm the client, settle the setup's writes (steady-state runs), count what the
  // database holds, start the clock. "[scenario] measuring" and "[scenario] done" on stderr tell a
  // supervising process (bench/bench.ts) when the measured part ran.
  async start(status: () => string, options: { settle?: boolean; durationS?: number } = {}): Promise<void> {
    if (this.options.warmUpMs > 0) await this.http.warmUp(this.options.warmUpMs);
    // Vacuumed and checkpointed, a setup's rows are not written out (or vacuumed) during the measured seconds.
    if (options.settle) await this.sql`vacuum (analyze) items, checkout_attempts`.then(() => this.sql`checkpoint`).catch(() => {});
    const [last] = await this.sql<{ id: number }[]>`select coalesce(max(id), 0) as id from checkout_attempts`;
    const sold = await this.sql<{ saleId: number; sold: number }[]>`select sale_id as "saleId", count(*) as sold from items where buyer_id is not null group by 1`;
    this.before = { lastAttemptId: last!.id, soldBySale: new Map(sold.map((row) => [row.saleId, row.sold])) };
    this.recorder.begin();
    this.deadline = performance.now() + (options.durationS ?? this.options.durationS) * 1000;
    const line = () => `[${this.options.scenario}] ${(this.recorder.elapsedMs() / 1000).toFixed(1)}s  ${this.recorder.total} requests  ${this.recorder.errors} errors  ${status()}`;
    process.stderr.write(`[${this.options.scenario}] measuring\n`);
    this.progress = setInterval(() => process.stderr.write(`${line()}\n`), 5_000);
  }

  finish(): void {
    if (!this.recorder.recording) return;
    this.recorder.end();
    clearInterval(this.progress);
    process.stderr.write(`[${this.options.scenario}] done ${(this.recorder.elapsedMs() / 1000).toFixed(1)}s  ${this.recorder.total} requests  ${this.recorder.errors} errors\n`);
  }

  stop(reason: string): void {
    this.stopReason ??= reason;
  }

  shouldStop(): boolean {
    if (this.stopReason === null && performance.now() >= this.deadline) this.stop('duration reached');
    return this.stopReason !== null;
  }
}

// Closed loops: `concurrency` loops take tasks 0, 1, 2, ... until `total`, `stopAt` or the run stops.
export async function runLoops(run: Run, concurrency: number, total: number, task: (index: number) => Promise<void>, stopAt = Infinity): Promise<void> {
  let next = 0;
  const loop = async () => {
    while (next < total && !run.shouldStop() && performance.now() < stopAt) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, loop));
}

// Open loop: task `index` is due at start + index / rate and starts then, whether or not the earlier
// ones have been answered (the client's pool queues them).
export async function runPaced(run: Run, rate: number, total: number, task: (index: number, dueAt: number) => Promise<void>, stopAt = Infinity): Promise<void> {
  const start = performance.now();
  const pending = new Set<Promise<void>>();
  let next = 0;
  while (next < total && !run.shouldStop() && performance.now() < stopAt) {
    const due = Math.min(total, Math.floor(((performance.now() - start) * rate) / 1000) + 1);
    for (; next < due; next += 1) {
      const promise: Promise<void> = task(next, start + (next * 1000) / rate).finally(() => pending.delete(promise));
      pending.add(promise);
    }
    await sleep(1);
  }
  await Promise.all(pending);
}

export type Sale = { id: number; size: number; perUserLimit: number; firstItemId: number; lastItemId: number };

export async function saleInfo(sql: Sql, saleId: number): Promise<Sale> {
  const [row] = await sql<Sale[]>`
    select s.id, s.size, s.per_user_limit as "perUserLimit", min(i.id) as "firstItemId", max(i.id) as "lastItemId"
    from sales s join items i on i.sale_id = s.id where s.id = ${saleId} group by s.id`;
  if (!row) throw new Error(`sale ${saleId} has no items`);
  return row;
}

// A sale at an unused hour of the past (the service only creates the current hour's), its items in the
// same transaction, so that nobody sees the sale without them.
export async function createFreshSale(sql: Sql, size: number): Promise<Sale> {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const id = await sql.begin(async (tx) => {
      const [sale] = await tx<{ id: number }[]>`
        insert into sales (starts_at, size, per_user_limit)
        values (timestamptz '2000-01-01 00:00:00+00' + make_interval(hours => ${randomInt(0, 200_000)}), ${size}, 10)
        on conflict (starts_at) do nothing returning id`;
      if (sale) await tx`insert into items (sale_id, seed) select ${sale.id}, floor(random() * 2147483647)::int from generate_series(1, ${size})`;
      return sale?.id ?? null;
    });
    if (id !== null) return saleInfo(sql, id);
  }
  throw new Error('could not find an unused sale hour in 20 tries');
}

async function availableItemIds(sql: Sql, saleId: number): Promise<number[]> {
  return (await sql<{ id: number }[]>`select id from items where sale_id = ${saleId} and buyer_id is null order by id`).map((row) => row.id);
}

// Codes as checkout issues them, inserted directly: code i is for item i mod n, so the first n codes can
// each buy an item and later ones meet item_sold. A user's codes are far apart, so concurrent purchases
// rarely wait on one user's row, and nobody holds more than the per-user limit of a round's codes.
async function preIssueCodes(sql: Sql, sale: Sale, itemIds: number[], count: number, runId: string): Promise<string[]> {
  const codes: string[] = [];
  const users = Math.ceil(itemIds.length / sale.perUserLimit);
  for (let from = 0; from < count; from += 5_000) {
    const batch = { codes: [] as string[], users: [] as string[], items: [] as number[] };
    for (let i = from; i < Math.min(count, from + 5_000); i += 1) {
      batch.codes.push(newCode());
      batch.users.push(`${runId}-r${Math.floor(i / itemIds.length)}u${(i % itemIds.length) % users}`);
      batch.items.push(itemIds[i % itemIds.length]!);
    }
    await sql`
      insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_key, expires_at)
      select 'issued', u, i, ${sale.id}, c, code_key(c), now() + interval '10 minutes'
      from unnest(${sql.array(batch.users)}::text[], ${sql.array(batch.items)}::bigint[], ${sql.array(batch.codes)}::text[]) as t(u, i, c)`;
    codes.push(...batch.codes);
  }
  return codes;
}

// The first open sale GET /sales lists; a fresh one when none is open.
async function openSale(run: Run): Promise<Sale> {
  const reply = await run.http.call('sales', 'GET', '/sales');
  if (reply.kind !== 'ok') throw new Error(`GET /sales answered ${reply.outcome}; is the service running at ${run.options.urls.join(', ')}?`);
  const open = (reply.body!.sales as { id: number; open: boolean }[]).find((sale) => sale.open);
  return open ? saleInfo(run.sql, open.id) : createFreshSale(run.sql, 10_000);
}

type Tally = { users: number; satisfied: number; bought: number; held: number; lost: number; limit: number; error: number; pages: number };

// A simulated user: pages through the sale's available items from a random place (keyset pages, wrapping
// around once, so that users spread over the sale), checks items out and, unless abandoning, buys them.
async function shop(run: Run, sale: Sale, user: { id: string; wants: number; abandons: boolean; think: boolean }, tally: Tally, onBought: () => void): Promise<void> {
  tally.users += 1;
  const think = () => (user.think ? sleep(randomInt(run.options.thinkMs[0], run.options.thinkMs[1] + 1)) : undefined);
  let [after, wrapped, done, pages, failures] = [randomInt(sale.firstItemId - 1, sale.lastItemId), false, false, 0, 0];
  let queue: number[] = [];
  const nextItem = async () => {
    while (queue.length === 0 && !done && !run.shouldStop()) {
      const from = after;
      tally.pages += 1;
      done = ++pages >= 20;
      const page = await run.http.call('items', 'GET', `/sales/${sale.id}/items?available=true&limit=50&after=${from}`);
      if (page.kind !== 'ok') {
        done ||= ++failures >= 3;
        continue;
      }
      const items = page.body!.items as { id: number }[];
      const nextAfter = page.body!.next_after as number | null;
      queue = items.map((item) => item.id);
      for (let i = queue.length - 1; i > 0; i -= 1) {
        const j = randomInt(i + 1);
        [queue[i], queue[j]] = [queue[j]!, queue[i]!];
      }
      if (nextAfter !== null) after = nextAfter;
      else if (!wrapped) [after, wrapped] = [0, true];
      else done = true;
      if (from === 0 && nextAfter === null && items.length === 0) run.stop('sold out (no item left in the list)');
    }
    return queue.pop();
  };
  let [got, errors] = [0, 0];
  for (let tries = 0; got < user.wants && tries < user.wants * 4 + 10 && errors < 3; tries += 1) {
    const itemId = await nextItem();
    if (itemId === undefined || run.shouldStop()) break;
    await think();
    const result = await tryItem(run, user.id, itemId, user.abandons, think, onBought);
    tally[result] += 1;
    if (result === 'bought' || result === 'held') got += 1;
    if (result === 'error') errors += 1;
    if (result === 'limit') break;
  }
  if (got >= user.wants) tally.satisfied += 1;
}

// One item: check it out, then (unless abandoning) buy it. Refusals are normal in a sale; errors are not.
async function tryItem(run: Run, userId: string, itemId: number, abandons: boolean, think: () => Promise<void> | undefined, onBought: () => void) {
  const checkout = await run.http.call('checkout', 'POST', `/checkout?user_id=${userId}&id=${itemId}`);
  // by the error code, not the status alone: a 429 may be the per-user limit or the rate limit
  if (checkout.kind !== 'ok') return checkout.outcome === '409 item_sold' ? 'lost' : 'error';
  if (abandons) return 'held';
  await think();
  const purchase = await run.http.call('purchase', 'POST', `/purchase?code=${String(checkout.body!.code)}`);
  if (purchase.kind === 'ok') onBought();
  const results = { '200': 'bought', '409 item_sold': 'lost', '429 limit_reached': 'limit' } as const;
  return results[purchase.outcome as keyof typeof results] ?? 'error';
}

const tallyFacts = (tally: Tally): Facts => ({
  'users started': tally.users,
  'users who got all they wanted': tally.satisfied,
  'items bought': tally.bought,
  'items checked out and abandoned': tally.held,
  'items lost to another buyer (409)': tally.lost,
  'users stopped by the per-user limit (429 limit_reached)': tally.limit,
  'failed attempts (errors)': tally.error,
  'item pages read': tally.pages,
});

async function flow(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const sale = await openSale(run);
  const tally: Tally = { users: 0, satisfied: 0, bought: 0, held: 0, lost: 0, limit: 0, error: 0, pages: 0 };
  await run.start(() => `users ${tally.users}/${options.users}  bought ${tally.bought}`);
  await runLoops(run, options.concurrency, options.users, async (index) => {
    await sleep(randomInt(options.thinkMs[0], options.thinkMs[1] + 1));
    await run.http.call('sales', 'GET', '/sales');
    await shop(run, sale, { id: `${run.runId}-f${index}`, wants: sale.perUserLimit, abandons: Math.random() < options.abandon, think: true }, tally, () => {});
  });
  return { facts: { sale: sale.id, ...tallyFacts(tally) } };
}

// A fresh sale sold out by users with no think time. The last tenth is where users' pages are stale.
async function stampede(run: Run): Promise<ScenarioResult> {
  const { options, recorder } = run;
  const sale = await createFreshSale(run.sql, options.items);
  const tally: Tally = { users: 0, satisfied: 0, bought: 0, held: 0, lost: 0, limit: 0, error: 0, pages: 0 };
  let nineTenths: { ms: number; requests: number; lost: number } | null = null;
  let soldOutMs: number | null = null;
  let purchases = 0;
  const onBought = () => {
    purchases += 1;
    if (purchases === Math.ceil(sale.size * 0.9)) nineTenths = { ms: recorder.elapsedMs(), requests: recorder.total, lost: tally.lost };
    if (purchases === sale.size) {
      soldOutMs = recorder.elapsedMs();
      run.stop(`sold out: ${sale.size} purchases`);
    }
  };
  await run.start(() => `sold ${tally.bought}/${sale.size}`);
  await runLoops(run, options.concurrency, options.users, async (index) => {
    await shop(run, sale, { id: `${run.runId}-s${index}`, wants: randomInt(1, sale.perUserLimit + 1), abandons: false, think: false }, tally, onBought);
  });
  const mark = nineTenths as { ms: number; requests: number; lost: number } | null;
  const seconds = (ms: number | null | undefined) => (ms == null ? null : Math.round(ms) / 1000);
  return {
    fullSaleId: sale.id,
    facts: {
      sale: `${sale.id} (fresh, ${sale.size} items)`,
      'time to sell out (s)': seconds(soldOutMs),
      'time to sell the first 90% (s)': seconds(mark?.ms),
      'requests until 90% sold': mark?.requests ?? null,
      'requests for the last 10%': mark ? recorder.total - mark.requests : null,
      'items lost to another buyer (409) in the last 10%': mark ? tally.lost - mark.lost : null,
      ...tallyFacts(tally),
      'users who never started (sold out first)': options.users - tally.users,
    },
  };
}

async function checkoutOnly(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const sale = await openSale(run);
  const ids = await availableItemIds(run.sql, sale.id);
  if (ids.length === 0) throw new Error(`sale ${sale.id} has no available items`);
  await run.start(() => '', { settle: true });
  const task = async (index: number, dueAt?: number) => {
    await run.http.call('checkout', 'POST', `/checkout?user_id=${run.runId}-c${index % options.users}&id=${ids[randomInt(ids.length)]}`, dueAt);
  };
  await (options.rate === null ? runLoops(run, options.concurrency, maxTasks, task) : runPaced(run, options.rate, maxTasks, task));
  return { facts: { sale: sale.id, 'items checked out at random': ids.length, 'paced at (req/s)': options.rate } };
}

async function purchaseOnly(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const sale = await createFreshSale(run.sql, options.items);
  const codes = await preIssueCodes(run.sql, sale, await availableItemIds(run.sql, sale.id), options.codes, run.runId);
  let used = 0;
  await run.start(() => `codes ${used}/${codes.length}`, { settle: true });
  const task = async (index: number, dueAt?: number) => {
    used += 1;
    await run.http.call('purchase', 'POST', `/purchase?code=${codes[index]}`, dueAt);
  };
  await (options.rate === null ? runLoops(run, options.concurrency, codes.length, task) : runPaced(run, options.rate, codes.length, task));
  if (used === codes.length) run.stop(`all ${codes.length} codes used`);
  return { facts: { sale: `${sale.id} (fresh, ${sale.size} items)`, 'codes pre-issued in SQL': codes.length, 'codes used': used, 'paced at (req/s)': options.rate } };
}

const round = (value: number) => Math.round(value * 10) / 10;

// Checkouts as fast as answered (the closed-loop peak), a calm spell at a tenth of it (the normal p99),
// a flood on a fixed schedule at --rate or three times the peak, then the calm rate again from the moment
// the flood stops (how soon p99 is back). Latencies count from when each request was due; `late` is how
// long after that the generator got to send it (its own lag, not the service's).
async function overload(run: Run): Promise<ScenarioResult> {
  const { options } = run;
  const sale = await openSale(run);
  const ids = await availableItemIds(run.sql, sale.id);
  let sent = 0;
  type Answer = { dueAt: number; ms: number; late: number; ok: boolean; outcome: string };
  const phase = async (seconds: number, rate: number | null): Promise<Answer[]> => {
    const answers: Answer[] = [];
    const stopAt = performance.now() + seconds * 1000;
    const task = async (_index: number, dueAt = performance.now()) => {
      const late = performance.now() - dueAt;
      const reply = await run.http.call('checkout', 'POST', `/checkout?user_id=${run.runId}-o${sent++ % options.users}&id=${ids[randomInt(ids.length)]}`, dueAt);
      answers.push({ dueAt, ms: performance.now() - dueAt, late, ok: reply.status === 200, outcome: reply.outcome });
    };
    await (rate === null ? runLoops(run, options.concurrency, maxTasks, task, stopAt) : runPaced(run, rate, maxTasks, task, stopAt));
    return answers;
  };
  const [calmS, afterS] = [3, 5];
  await run.start(() => `sent ${sent}`, { settle: true, durationS: 2 * options.durationS + calmS + afterS + 30 });
  const closed = await phase(options.durationS, null);
  const peak = closed.filter((answer) => answer.ok).length / options.durationS;
  const calm = Math.max(1, Math.round(peak / 10));
  const normalP99 = percentile((await phase(calmS, calm)).map((answer) => answer.ms), 0.99);
  const rate = options.rate ?? Math.round(3 * peak);
  // The calm load starts when the flood stops sending, while its last requests are still being answered.
  const flooding = phase(options.durationS, rate);
  await sleep(options.durationS * 1000);
  const [flood, after] = await Promise.all([flooding, phase(afterS, calm)]);
  const served = flood.filter((answer) => answer.ok);
  const shed = flood.filter((answer) => answer.outcome === '503 overloaded').length;
  // Back to normal: from the first 250 ms window after which no window's p99 is over twice the calm one
  // (or the calm one and 50 ms: with few answers a window's p99 is its slowest).
  const floodEnd = Math.min(...after.map((answer) => answer.dueAt));
  const windows = Array.from({ length: afterS * 4 }, (_, w) =>
    percentile(after.filter((answer) => Math.floor((answer.dueAt - floodEnd) / 250) === w).map((answer) => answer.ms), 0.99));
  const recovered = windows.findLastIndex((p99) => p99 > Math.max(2 * normalP99, normalP99 + 50)) + 1;
  run.stop('phases done');
  return {
    facts: {
      sale: sale.id,
      'closed-loop peak, checkouts answered 200 a second': round(peak),
      'closed-loop p99 (ms)': round(percentile(closed.map((answer) => answer.ms), 0.99)),
      [`calm p99 at ${calm} req/s (ms)`]: round(normalP99),
      'flood: offered req/s': rate,
      'flood: offered / peak': round(rate / peak),
      'flood: served 200 a second': round(served.length / options.durationS),
      'flood: served / peak (%)': round((100 * served.length) / options.durationS / peak),
      'flood: p99 of the served (ms)': round(percentile(served.map((answer) => answer.ms), 0.99)),
      'flood: p99 of the served from when sent (ms)': round(percentile(served.map((answer) => answer.ms - answer.late), 0.99)),
      "flood: the generator's own lag, p99 (ms)": round(percentile(flood.map((answer) => answer.late), 0.99)),
      'flood: slowest answer (ms)': round(Math.max(...flood.map((answer) => answer.ms))),
      'flood: shed (503 overloaded)': shed,
      'flood: other answers': flood.length - served.length - shed,
      'after the flood: back to normal p99 within (ms)': recovered === windows.length ? null : recovered * 250,
      'after the flood: p99 by 250 ms window (ms)': windows.map((p99) => (Number.isNaN(p99) ? '-' : round(p99))).join(' '),
    },
  };
}

export const scenarios: Record<ScenarioName, (run: Run) => Promise<ScenarioResult>> = {
  flow, stampede, 'checkout-only': checkoutOnly, 'purchase-only': purchaseOnly, overload,
};

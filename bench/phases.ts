// The order of the benchmark's steps. Each service figure is measured next to its ceiling, so that a
// noisy neighbour on the shared machine weighs on both alike.
import { bestPgbenchTps } from './analysis.ts';
import { bareHttp, checkoutScript, pgbench, preparePurchaseCodes, purchaseScript, type BareResult, type PgbenchResult } from './ceilings.ts';
import type { SaleInfo } from './database.ts';
import { gcPausesSince, logSize, sampleRss, type GcPauses, type Memory } from './memory.ts';
import { rssKb, type Server } from './procs.ts';
import { loadStep, type Context, type LoadSummary } from './steps.ts';

export type PurchaseCeiling = PgbenchResult & { codes: number; sold: number };
export type Stampede = LoadSummary & { memory: Memory };

export type Measurements = {
  pgbenchCheckout: PgbenchResult;
  // the same at the service's pool size, when that differs: the stricter ceiling is the target's
  pgbenchCheckoutPool: PgbenchResult;
  checkout1: LoadSummary;
  pgbenchPurchase: PurchaseCeiling;
  pgbenchPurchasePool: PurchaseCeiling;
  purchase1: LoadSummary;
  bareHttp: BareResult;
  checkoutHalf: LoadSummary;
  purchaseHalf: LoadSummary;
  // PostgreSQL's own latency at the same rates: pgbench -R
  pgbenchCheckoutHalf: PgbenchResult;
  pgbenchPurchaseHalf: PurchaseCeiling;
  stampede1: Stampede;
  checkout2: LoadSummary;
  purchase2: LoadSummary;
  stampede2: Stampede;
  flow: LoadSummary;
  serviceRssMb: { afterStart: number | null; atEnd: (number | null)[] };
  // RSS of each running service process after each step: does it level off?
  rssAfterSteps: { step: string; mb: (number | null)[] }[];
  // the service processes' garbage-collection pauses during each step (A, then A and B)
  gcBySteps: { step: string; pauses: GcPauses[] }[];
  // pg_stat_statements' top statements of the run, when the server preloads it; null otherwise
  statements: Statement[] | null;
  // unmeasured runs against each new process first (JIT, connection pool, caches), for the record
  warmUps: { label: string; rps: number; ok: boolean }[];
  loadFailures: string[];
};

export type Statement = { query: string; calls: number; meanMs: number; totalMs: number };

// pg_stat_statements only works when preloaded; the benchmark never changes the server's settings.
async function statementsAvailable(ctx: Context): Promise<boolean> {
  const [row] = await ctx.sql<{ libraries: string }[]>`select current_setting('shared_preload_libraries') as libraries`;
  if (!row!.libraries.split(',').some((name) => name.trim() === 'pg_stat_statements')) return false;
  return ctx.sql`create extension if not exists pg_stat_statements`.then(() => ctx.sql`select pg_stat_statements_reset()`).then(() => true, () => false);
}

async function topStatements(ctx: Context): Promise<Statement[]> {
  return ctx.sql<Statement[]>`
    select query, calls, round(mean_exec_time::numeric, 3)::float8 as "meanMs", round(total_exec_time::numeric, 1)::float8 as "totalMs"
    from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
    order by total_exec_time desc limit 10`;
}

export type Plan = {
  ctx: Context;
  current: SaleInfo;
  first: Server;
  start: (name: string) => Promise<Server>;
  results: Partial<Measurements>;
  interrupted: () => boolean;
};

const mb = (kb: number | null) => (kb === null ? null : Math.round(kb / 102.4) / 10);
const clamp = (value: number, low: number, high: number) => Math.min(high, Math.max(low, Math.ceil(value)));

// pgbench over fresh codes, enough for every client not to run out: at full speed 2.5x checkout's
// rate (purchase is the cheaper statement), on a schedule twice the rate. prefix: this run's codes.
async function purchaseCeiling(ctx: Context, label: string, prefix: string, expectedTps: number, rate: number | null, clients = ctx.concurrency): Promise<PurchaseCeiling> {
  const codes = clamp(expectedTps * ctx.durationS * (rate === null ? 2.5 : 2), 20_000, 400_000);
  const sale = await preparePurchaseCodes(ctx.sql, codes, prefix);
  const result = await pgbench(ctx, label, purchaseScript(prefix), { i: -1, clients }, rate, clients);
  const [row] = await ctx.sql<{ sold: number }[]>`select count(*) as sold from items where sale_id = ${sale.id} and buyer_id is not null`;
  if (row!.sold !== result.transactions) console.log(`   warning: ${row!.sold} items sold for ${result.transactions} transactions`);
  return { ...result, codes, sold: row!.sold };
}

// A few seconds of each endpoint against a fresh process, so that the measured runs meet a warm one.
async function warmUp(ctx: Context, name: string, server: Server, m: Partial<Measurements>): Promise<void> {
  const runs: [string, string[]][] = [['checkout-only', []], ['purchase-only', ['--items', '15000']]];
  for (const [scenario, extra] of runs) {
    const summary = await loadStep(ctx, `warmup-${name}-${scenario}`, scenario, [server], ['--duration', '3', ...extra]);
    m.warmUps!.push({ label: summary.label, rps: summary.totals.rps, ok: summary.ok });
  }
}

async function stampede(ctx: Context, label: string, servers: Server[]): Promise<Stampede> {
  const sampler = sampleRss(servers.map((server) => server.pid));
  // The load generator runs one user per connection (its default concurrency): split them among the instances.
  const perInstance = Math.ceil(ctx.stampedeUsers / servers.length);
  const load = await loadStep(ctx, label, 'stampede', servers, ['--duration', '60'], perInstance).catch(async (error: unknown) => {
    await sampler.stop();
    throw error;
  });
  return { ...load, memory: await sampler.stop() };
}

export async function measure(plan: Plan): Promise<void> {
  const { ctx, current, first } = plan;
  const m = plan.results;
  m.loadFailures = [];
  const servers = [first];
  m.rssAfterSteps = [];
  m.gcBySteps = [];
  const step = async <K extends keyof Measurements>(key: K, work: () => Promise<Measurements[K]>) => {
    if (plan.interrupted()) throw new Error('interrupted');
    const offsets = await Promise.all(servers.map((server) => logSize(server.logFile)));
    const value = await work();
    m[key] = value;
    m.rssAfterSteps!.push({ step: key, mb: await Promise.all(servers.map(async (server) => mb(await rssKb(server.pid)))) });
    m.gcBySteps!.push({ step: key, pauses: await Promise.all(servers.map((server, index) => gcPausesSince(server.logFile, offsets[index] ?? 0))) });
    const load = value as Partial<LoadSummary>;
    if (load.ok === false) m.loadFailures!.push(`${load.label}: ${load.failures!.join('; ')}`);
    return value;
  };
  const duration = ['--duration', String(ctx.durationS)];
  const codesFor = (rps: number) => ['--items', String(clamp(rps * ctx.durationS * 1.25, 20_000, 400_000))];
  m.serviceRssMb = { afterStart: mb(await rssKb(first.pid)), atEnd: [] };
  const withStatements = await statementsAvailable(ctx).catch(() => false);
  m.statements = null;
  m.warmUps = [];
  await warmUp(ctx, 'A', first, m);

  const checkoutDefines = { first_item: current.firstItemId, last_item: current.lastItemId };
  const pgCheckout = await step('pgbenchCheckout', () => pgbench(ctx, 'pgbench-checkout', checkoutScript, checkoutDefines));
  if (ctx.pool !== ctx.concurrency) {
    await step('pgbenchCheckoutPool', () => pgbench(ctx, 'pgbench-checkout-pool', checkoutScript, checkoutDefines, null, ctx.pool));
  }
  const checkout1 = await step('checkout1', () => loadStep(ctx, 'checkout-1', 'checkout-only', [first], duration));
  await step('pgbenchPurchase', () => purchaseCeiling(ctx, 'pgbench-purchase', 'b', pgCheckout.tps!, null));
  if (ctx.pool !== ctx.concurrency) {
    await step('pgbenchPurchasePool', () => purchaseCeiling(ctx, 'pgbench-purchase-pool', 'd', pgCheckout.tps!, null, ctx.pool));
  }
  // Codes for twice the best ceiling: batched, the service may outrun pgbench, and must not run out.
  const purchase1 = await step('purchase1', () => loadStep(ctx, 'purchase-1', 'purchase-only', [first], [...duration, ...codesFor(2 * bestPgbenchTps(m, 'purchase')!)]));
  await step('bareHttp', () => bareHttp(ctx));

  const half = (summary: LoadSummary, endpoint: string) => Math.max(1, Math.round(summary.endpoints[endpoint]!.rps / 2));
  const checkoutRate = half(checkout1, 'checkout');
  const purchaseRate = half(purchase1, 'purchase');
  await step('checkoutHalf', () => loadStep(ctx, 'checkout-half', 'checkout-only', [first], [...duration, '--rate', String(checkoutRate)]));
  await step('purchaseHalf', () => loadStep(ctx, 'purchase-half', 'purchase-only', [first], [...duration, '--rate', String(purchaseRate), ...codesFor(purchaseRate)]));
  await step('pgbenchCheckoutHalf', () => pgbench(ctx, 'pgbench-checkout-half', checkoutScript, checkoutDefines, checkoutRate));
  await step('pgbenchPurchaseHalf', () => purchaseCeiling(ctx, 'pgbench-purchase-half', 'c', purchaseRate, purchaseRate));
  await step('stampede1', () => stampede(ctx, 'stampede-1', [first]));

  const second = await plan.start('B');
  servers.push(second);
  await warmUp(ctx, 'B', second, m);
  const both = [first, second];
  await step('checkout2', () => loadStep(ctx, 'checkout-2', 'checkout-only', both, duration));
  await step('purchase2', () => loadStep(ctx, 'purchase-2', 'purchase-only', both, [...duration, ...codesFor(2 * purchase1.endpoints.purchase!.rps)]));
  await step('stampede2', () => stampede(ctx, 'stampede-2', both));
  await step('flow', () => loadStep(ctx, 'flow-2', 'flow', both, ['--duration', String(Math.min(10, ctx.durationS))]));
  m.serviceRssMb.atEnd = await Promise.all(both.map(async (server) => mb(await rssKb(server.pid))));
  if (withStatements) m.statements = await topStatements(ctx).catch(() => null);
}

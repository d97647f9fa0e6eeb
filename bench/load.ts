// The load generator: node bench/load.ts <scenario> [options] (--help for all). Sends a scenario's
// traffic to the instances named by --url, reads the database back to check the invariants against what
// it saw, prints a report and writes <out>/<scenario>.json and .html. Exits 1 on a 5xx, an unexpected
// answer, a network error or a broken invariant; 2 on a usage error.
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { auditSales, violations } from '../src/audit.ts';
import { withoutPassword } from '../src/config.ts';
import { connect, type Sql } from '../src/db.ts';
import { Http, Recorder } from './client.ts';
import { buildReport, htmlPage, textReport, type Check } from './report.ts';
import { Run, scenarioNames, scenarios, type Options, type ScenarioName, type Snapshot } from './scenarios.ts';

const usage = `usage: node bench/load.ts <${scenarioNames.join('|')}> [options]

  --url URL              an instance of the service; repeat for several (default http://127.0.0.1:8080)
  --database-url URL     the service's database, read for setup and invariants
                         (default $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/flash_sale)
  --duration S           seconds of load (stampede: the most it may take to sell out; overload: the
                         closed-loop peak, then the flood, each this long) (default flow 30, stampede 300, others 10)
  --users N              simulated users (default flow 1000, stampede 20000, checkout-only and overload 10000)
  --connections N        keep-alive connections per instance (default 32)
  --concurrency N        users or request loops active at once (default flow 100; others: connections x instances)
  --items N              size of the fresh sale the scenario creates (stampede 10000, purchase-only 50000)
  --codes N              purchase-only: codes pre-issued in SQL (default --items; more adds item_sold refusals)
  --think-ms MIN-MAX     flow: think time between steps (default 10-100)
  --abandon F            flow: share of users who check out and never buy (default 0.2)
  --rate N               checkout-only, purchase-only: N requests per second on a fixed schedule (open loop:
                         latency counts from when each was due); overload: the flood's rate (default 3 x the peak)
  --warm-up MS           unrecorded GET /health over every connection before the clock starts (default 1000)
  --out DIR              where <scenario>.json and <scenario>.html go (default bench/results)`;

const defaults: Record<ScenarioName, { durationS: number; users: number; items: number }> = {
  flow: { durationS: 30, users: 1000, items: 0 },
  stampede: { durationS: 300, users: 20_000, items: 10_000 },
  'checkout-only': { durationS: 10, users: 10_000, items: 0 },
  'purchase-only': { durationS: 10, users: 0, items: 50_000 },
  overload: { durationS: 10, users: 10_000, items: 0 },
};

class UsageError extends Error {}

function parseOptions(argv: string[]): Options | null {
  const string = { type: 'string' } as const;
  const { values, positionals } = parseArgs({
    args: argv, allowPositionals: true,
    options: {
      url: { type: 'string', multiple: true }, 'database-url': string, duration: string, users: string, connections: string, concurrency: string,
      items: string, codes: string, 'think-ms': string, abandon: string, rate: string, 'warm-up': string, out: string, help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return null;
  const scenario = positionals[0] as ScenarioName;
  if (!scenarioNames.includes(scenario) || positionals.length > 1) throw new UsageError(`pick one scenario: ${scenarioNames.join(', ')}`);
  const whole = (name: keyof typeof values, fallback: number, min = 1, max = 10_000_000) => {
    const raw = values[name] as string | undefined;
    if (raw === undefined) return fallback;
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}`);
    return Number(raw);
  };
  const think = /^(\d+)-(\d+)$/.exec(values['think-ms'] ?? '10-100');
  if (!think || Number(think[1]) > Number(think[2])) throw new UsageError('--think-ms must look like 10-100');
  const abandon = Number(values.abandon ?? 0.2);
  if (values.abandon?.trim() === '' || !(abandon >= 0 && abandon <= 1)) throw new UsageError('--abandon must be a number from 0 to 1');
  const urls = (values.url?.length ? values.url : ['http://127.0.0.1:8080']).map((url) => {
    if (!URL.canParse(url) || new URL(url).protocol !== 'http:') throw new UsageError(`--url ${url} must be an http:// URL`);
    return new URL(url).origin;
  });
  if (values.rate !== undefined && !['checkout-only', 'purchase-only', 'overload'].includes(scenario)) throw new UsageError('--rate applies to checkout-only, purchase-only and overload');
  const base = defaults[scenario];
  const connections = whole('connections', 32, 1, 10_000);
  const items = whole('items', base.items, 1, 1_000_000);
  return {
    scenario, urls,
    databaseUrl: values['database-url'] ?? (process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/flash_sale'),
    durationS: whole('duration', base.durationS, 1, 3600),
    users: whole('users', base.users, 1, 1_000_000),
    connections,
    concurrency: whole('concurrency', scenario === 'flow' ? 100 : connections * urls.length, 1, 100_000),
    items,
    codes: whole('codes', items, 1, 1_000_000),
    thinkMs: [Number(think[1]), Number(think[2])],
    abandon,
    rate: values.rate === undefined ? null : whole('rate', 0, 1, 1_000_000),
    warmUpMs: whole('warm-up', 1000, 0, 60_000),
    out: values.out ?? 'bench/results',
  };
}

// The per-sale rules are src/audit.ts's; here the run's own counts are held against the database's.
// A request without a definite answer (no answer, or a 5xx) may or may not have taken effect.
async function checkInvariants(sql: Sql, before: Snapshot, recorder: Recorder, fullSaleId?: number): Promise<Check[]> {
  const sales = (await auditSales(sql)).map((sale) => ({ ...sale, during: sale.sold - (before.soldBySale.get(sale.saleId) ?? 0), problems: violations(sale) }));
  const rows = await sql<{ outcome: string; count: number }[]>`select outcome, count(*) as count from checkout_attempts where id > ${before.lastAttemptId} group by outcome`;
  const attempts = new Map(rows.map((row) => [row.outcome, row.count]));
  const unsure = (endpoint: 'checkout' | 'purchase') =>
    [...(recorder.byEndpoint.get(endpoint)?.outcomes ?? [])].reduce((sum, [outcome, n]) => sum + (/^(network|5)/.test(outcome) ? n : 0), 0);
  const within = (value: number, low: number, slack: number) => value >= low && value <= low + slack;
  const total = (values: Iterable<number>) => [...values].reduce((sum, n) => sum + n, 0);
  const sent = total(recorder.byEndpoint.get('checkout')?.outcomes.values() ?? []);
  const [codes, refusals, bought] = [recorder.count('checkout', '200'), recorder.count('checkout', '409 item_sold'), recorder.count('purchase', '200')];
  const [issued, soldOut, during] = [attempts.get('issued') ?? 0, attempts.get('item_sold') ?? 0, total(sales.map((sale) => sale.during))];
  const broken = sales.flatMap((sale) => sale.problems.map((problem) => `sale ${sale.saleId}: ${problem}`));
  const overLimit = total(sales.map((sale) => sale.buyersOverLimit));
  const twice = total(sales.map((sale) => sale.itemsSoldTwice + sale.codesUsedTwice));
  const full = sales.find((sale) => sale.saleId === fullSaleId);
  return [
    { name: 'nobody over the per-user limit', ok: overLimit === 0, detail: `${overLimit} buyers over the limit` },
    { name: 'no item sold twice, no code used twice', ok: twice === 0, detail: `${twice} items or codes used twice` },
    { name: 'every sale passes auditSales()/violations()', ok: broken.length === 0, detail: broken.length === 0 ? `${sales.length} sales clean` : broken.slice(0, 10).join('; ') },
    ...(fullSaleId === undefined ? [] : [{ name: `sale ${fullSaleId} sold exactly its items`, ok: full !== undefined && full.sold === full.size, detail: full ? `sold ${full.sold} of ${full.size}` : 'sale missing' }]),
    { name: 'checkout attempts recorded = checkout requests sent', ok: within(total(attempts.values()), sent - unsure('checkout'), unsure('checkout')), detail: `${total(attempts.values())} rows for ${sent} requests` },
    { name: 'issued / item_sold attempts = 200 / 409 answers', ok: within(issued, codes, unsure('checkout')) && within(soldOut, refusals, unsure('checkout')), detail: `issued ${issued} vs ${codes} codes; item_sold ${soldOut} vs ${refusals} refusals` },
    { name: 'items sold during the run = successful purchases', ok: within(during, bought, unsure('purchase')), detail: `${during} items sold, ${bought} purchases answered 200` },
  ];
}

async function main(options: Options): Promise<boolean> {
  const recorder = new Recorder(options.scenario === 'overload');
  const http = new Http(options.urls, options.connections, recorder);
  const sql = connect(options.databaseUrl, { max: 2 });
  const run = new Run({ options, http, recorder, sql, runId: `lt${randomBytes(4).toString('hex')}` });
  // Ctrl-C once: stop sending, finish what is in flight, report. Twice: leave at once.
  let interrupts = 0;
  process.on('SIGINT', () => (interrupts++ > 0 ? process.exit(130) : run.stop('interrupted')));
  const startedAt = new Date();
  try {
    const problems = await http.preflight();
    if (problems.length > 0) throw new Error(`not every instance is ready:\n  ${problems.join('\n  ')}`);
    await sql`select 1 from sales limit 1`.catch((error: Error) => {
      throw new Error(`cannot read the service's database (${withoutPassword(options.databaseUrl)}): ${error.message}. The load generator prepares its sale and checks the invariants in PostgreSQL itself: give it the service's DATABASE_URL with --database-url`);
    });
    const result = await scenarios[options.scenario](run);
    run.finish();
    if (!run.before) throw new Error('the scenario never started its measured phase');
    const checks = await checkInvariants(sql, run.before, recorder, result.fullSaleId);
    const report = buildReport(options, recorder, startedAt, run.stopReason, result.facts, checks);
    console.log(textReport(report));
    await mkdir(options.out, { recursive: true });
    await writeFile(join(options.out, `${options.scenario}.json`), `${JSON.stringify(report, null, 2)}\n`);
    await writeFile(join(options.out, `${options.scenario}.html`), htmlPage(`flash-sale load: ${options.scenario}`, [{ title: options.scenario, report }]));
    console.log(`written: ${join(options.out, options.scenario)}.json and .html`);
    return report.ok;
  } finally {
    run.finish();
    await http.close();
    await sql.end({ timeout: 5 });
  }
}

try {
  const options = parseOptions(process.argv.slice(2));
  if (options === null) console.log(usage);
  else process.exitCode = (await main(options)) ? 0 : 1;
} catch (error) {
  const usageError = error instanceof UsageError || String((error as { code?: string }).code).startsWith('ERR_PARSE_ARGS');
  console.error(usageError ? `${(error as Error).message}\n\n${usage}` : `load: ${(error as Error).message}`);
  process.exitCode = usageError ? 2 : 1;
}

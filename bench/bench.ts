// npm run bench [-- main aged viewers overload]: the steps named, or all four in that order. Each creates
// its own database and Redis key prefix, starts the service processes it measures, writes its tables
// into BENCHMARKS.md (between its markers) and its files into bench/results/, and drops all it made.
// main: the service against its ceilings, measured side by side in one run; aged (bench/aged.ts): a
// database that has lived a month beside a fresh one; viewers: what storefront viewers cost PostgreSQL;
// overload: three times what two shrunk instances can serve.
// Settings: DATABASE_POOL_MAX (16), BENCH_CONCURRENCY (64: pgbench's clients and the load's connections
// per instance), BENCH_STAMPEDE_USERS (256 shopping at once), BENCH_DURATION (10 s a measured step),
// BENCH_ADMIN_URL, REDIS_URL, PGBENCH, BENCH_RATE_LIMIT (off; on: running but never reached);
// viewers: VIEWERS (1000), VIEWERS_SECONDS (20); overload: OVERLOAD_SECONDS (10), COMMIT_DELAY_US (2000).
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { aged } from './aged.ts';
import { percentile } from './client.ts';
import { bareHttp, pgbenchCheckout, pgbenchPurchase } from './ceilings.ts';
import { benchPath, freePort, killAll, load, localRedisPid, rssMb, scratch, setting, startService, stopChild, type Bench, type Load, type Server, type Step } from './procs.ts';
import { htmlPage, table, writeSection } from './report.ts';
import { saleInfo } from './scenarios.ts';

const pool = setting('DATABASE_POOL_MAX', 16);
const concurrency = setting('BENCH_CONCURRENCY', 64);
const stampedeUsers = setting('BENCH_STAMPEDE_USERS', 256);
const durationS = setting('BENCH_DURATION', 10);

const cores = (step: Step | null | undefined) => (step?.cpu ? Object.values(step.cpu.cores).reduce((sum, value) => sum + value, 0) : null);
// CPU per request of the measured processes (service, PostgreSQL, Redis, client): neighbours left out.
const cpuMs = (step: Step | null | undefined) => (cores(step) !== null && step!.rps ? (cores(step)! * 1000) / step!.rps : null);
const ratio = (a: number | null | undefined, b: number | null | undefined) => (a == null || !b ? null : a / b);
const pct = (value: number | null) => (value === null ? 'n/a' : `${(value * 100).toFixed(1)}%`);
const fact = (step: Load | undefined, name: string) => step?.report.facts[name] ?? null;

type Rss = Record<string, (number | null)[]>;

// Each service figure next to its ceiling, so that a noisy neighbour weighs on both alike.
async function measureMain(bench: Bench, start: (name: string) => Promise<Server>, rss: Rss) {
  const steps: Step[] = [];
  const measure = async <T extends Step>(work: () => Promise<T>): Promise<T> => {
    if (interrupted) throw new Error('interrupted');
    steps.push(await work());
    return steps.at(-1) as T;
  };
  // A few unmeasured seconds of each endpoint against a fresh process: the measured runs meet a warm one.
  const warmUp = async (server: Server) => {
    await load(bench, `warm-up ${server.url} checkout`, 'checkout-only', [server], ['--duration', '3']);
    await load(bench, `warm-up ${server.url} purchase`, 'purchase-only', [server], ['--duration', '3', '--items', '15000']);
  };
  // The stampede: one user per connection, split among the instances; RSS sampled every second.
  const stampede = async (servers: Server[]) => {
    const pids = servers.map((server) => server.pid);
    const samples = [await rssMb(pids)];
    const timer = setInterval(() => void rssMb(pids).then((mb) => samples.push(mb)), 1_000);
    const label = `stampede, ${servers.length} process${servers.length > 1 ? 'es' : ''}`;
    const step = await measure(() => load(bench, label, 'stampede', servers, ['--duration', '60'], Math.ceil(stampedeUsers / servers.length))).finally(() => clearInterval(timer));
    rss[`before the ${label}`] = samples[0]!;
    rss[`most during the ${label}`] = pids.map((_, i) => Math.max(...samples.map((sample) => sample[i] ?? 0)));
    return step;
  };
  const duration = ['--duration', String(durationS)];
  const codesFor = (rps: number) => ['--items', String(Math.min(400_000, Math.max(20_000, Math.ceil(rps * durationS * 1.25))))];
  const a = await start('A');
  // the ceiling's per-request functions, beside the service's batched ones (A has migrated by now)
  await bench.db.sql.file(benchPath('per-request.sql'));
  const listed = (await (await fetch(`${a.url}/sales`)).json()) as { sales: { id: number; open: boolean }[] };
  const sale = await saleInfo(bench.db.sql, listed.sales.find((candidate) => candidate.open)!.id);
  rss['right after start'] = await rssMb([a.pid]);
  await warmUp(a);
  const pgCheckout = await measure(() => pgbenchCheckout(bench, 'pgbench checkout', sale));
  const pgCheckoutPool = pool === concurrency ? null : await measure(() => pgbenchCheckout(bench, `pgbench checkout, ${pool} clients`, sale, null, pool));
  const checkout1 = await measure(() => load(bench, 'checkout, 1 process', 'checkout-only', [a], duration));
  const pgPurchase = await measure(() => pgbenchPurchase(bench, 'pgbench purchase', 'b', pgCheckout.rps!));
  const pgPurchasePool = pool === concurrency ? null : await measure(() => pgbenchPurchase(bench, `pgbench purchase, ${pool} clients`, 'd', pgCheckout.rps!, null, pool));
  // codes for twice the better ceiling: batched, the service may outrun pgbench, and must not run out
  const purchase1 = await measure(() => load(bench, 'purchase, 1 process', 'purchase-only', [a], [...duration, ...codesFor(2 * Math.max(pgPurchase.rps!, pgPurchasePool?.rps ?? 0))]));
  const bare = await measure(() => bareHttp(bench));
  const [checkoutRate, purchaseRate] = [checkout1, purchase1].map((step) => Math.max(1, Math.round(step.rps! / 2))) as [number, number];
  const checkoutHalf = await measure(() => load(bench, `checkout at half of peak, ${checkoutRate} req/s`, 'checkout-only', [a], [...duration, '--rate', String(checkoutRate)]));
  const purchaseHalf = await measure(() => load(bench, `purchase at half of peak, ${purchaseRate} req/s`, 'purchase-only', [a], [...duration, '--rate', String(purchaseRate), ...codesFor(purchaseRate)]));
  const pgCheckoutHalf = await measure(() => pgbenchCheckout(bench, `pgbench checkout at ${checkoutRate} tps`, sale, checkoutRate));
  const pgPurchaseHalf = await measure(() => pgbenchPurchase(bench, `pgbench purchase at ${purchaseRate} tps`, 'c', purchaseRate, purchaseRate));
  const stampede1 = await stampede([a]);
  const b = await start('B');
  await warmUp(b);
  const checkout2 = await measure(() => load(bench, 'checkout, 2 processes', 'checkout-only', [a, b], duration));
  const purchase2 = await measure(() => load(bench, 'purchase, 2 processes', 'purchase-only', [a, b], [...duration, ...codesFor(2 * purchase1.rps!)]));
  const stampede2 = await stampede([a, b]);
  const flow = await measure(() => load(bench, 'flow, 2 processes', 'flow', [a, b], ['--duration', String(Math.min(10, durationS))]));
  rss['end of the run'] = await rssMb([a.pid, b.pid]);
  return { steps, pgCheckout, pgCheckoutPool, checkout1, pgPurchase, pgPurchasePool, purchase1, bare, checkoutHalf, purchaseHalf, pgCheckoutHalf, pgPurchaseHalf, stampede1, checkout2, purchase2, stampede2, flow };
}

function mainTables(m: Awaited<ReturnType<typeof measureMain>>, rss: Rss): string {
  const vs = (figure: string, service: Step, ceiling: Step | null) =>
    ceiling ? [[figure, service.rps, ceiling.label, ceiling.rps, pct(ratio(service.rps, ceiling.rps)), pct(ratio(cpuMs(ceiling), cpuMs(service)))]] : [];
  const better = (one: Step, other: Step | null) => (other && other.rps! > one.rps! ? other : one);
  const half = (service: Step, pg: Step) => [service.label, service.rps, service.latency.p50, service.latency.p99, service.latency.p999, service.latency.max, pg.latency.p50, pg.latency.p99, pg.latency.p999];
  const soldOut = (step: Load) => fact(step, 'time to sell out (s)') as number | null;
  const p99 = (step: Load, endpoint: string) => step.report.endpoints.find((e) => e.endpoint === endpoint)?.latencyMs.p99;
  return `${table(['target', 'measured', 'wanted'], [
  ['checkout, 1 process, against the better pgbench', pct(ratio(m.checkout1.rps, better(m.pgCheckout, m.pgCheckoutPool).rps)), '>= 80%'],
  ['purchase, 1 process, against the better pgbench', pct(ratio(m.purchase1.rps, better(m.pgPurchase, m.pgPurchasePool).rps)), '>= 80%'],
  [`${m.checkoutHalf.label}: p99`, `${m.checkoutHalf.latency.p99} ms`, '< 20 ms'],
  [`${m.purchaseHalf.label}: p99`, `${m.purchaseHalf.latency.p99} ms`, '< 20 ms'],
  ['stampede: 10,000 items sold out, 1 process', `${soldOut(m.stampede1) ?? 'not'} s`, '< 2 s'],
  ['stampede: 10,000 items sold out, 2 processes', `${soldOut(m.stampede2) ?? 'not'} s`, '< 2 s'],
])}

${table(['service', 'req/s', 'ceiling', 'ceiling req/s', 'ratio', 'at equal CPU'], [
  ...vs('checkout, 1 process', m.checkout1, m.pgCheckout), ...vs('checkout, 1 process', m.checkout1, m.pgCheckoutPool), ...vs('checkout, 1 process', m.checkout1, m.bare),
  ...vs('purchase, 1 process', m.purchase1, m.pgPurchase), ...vs('purchase, 1 process', m.purchase1, m.pgPurchasePool), ...vs('purchase, 1 process', m.purchase1, m.bare),
  ...vs('checkout, 2 processes', m.checkout2, m.pgCheckout), ...vs('purchase, 2 processes', m.purchase2, m.pgPurchase),
  ['1 -> 2 processes', '', '', '', `checkout x${ratio(m.checkout2.rps, m.checkout1.rps)?.toFixed(2)}, purchase x${ratio(m.purchase2.rps, m.purchase1.rps)?.toFixed(2)}`, ''],
])}

${table(['open loop, 1 process', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'pgbench at the same rate: p50 ms', 'p99 ms', 'p99.9 ms'], [half(m.checkoutHalf, m.pgCheckoutHalf), half(m.purchaseHalf, m.pgPurchaseHalf)], 3)}

${table(['stampede', 'sold out in s', 'first 90% in s', 'requests', 'req/s', 'checkout p99 ms', 'purchase p99 ms', 'invariants'], [m.stampede1, m.stampede2].map((step) => [
  step.label, soldOut(step), fact(step, 'time to sell the first 90% (s)'), step.report.totals.requests, step.rps, p99(step, 'checkout'), p99(step, 'purchase'), step.ok ? 'ok' : step.report.failures.join('; '),
]), 3)}

${table(['every measured step', 'req/s', 'mean ms', 'p50 ms', 'p99 ms', 'max ms', 'service cores', 'postgres', 'redis', 'client', 'machine busy', 'CPU ms per request'], m.steps.map((step) => [
  step.label, step.rps, step.latency.mean, step.latency.p50, step.latency.p99, step.latency.max,
  ...['server', 'postgres', 'redis', 'client'].map((party) => step.cpu?.cores[party]), step.cpu ? `${step.cpu.machineBusy} of ${step.cpu.machineCores}` : null, cpuMs(step),
]), 3)}

${table(['service RSS, MB', 'process A', 'process B'], Object.entries(rss).map(([when, mb]) => [when, mb[0], mb[1] ?? '']))}

Flow, 2 processes: ${m.flow.report.totals.requests} requests, ${m.flow.rps} req/s, ${m.flow.report.totals.errors} errors, invariants ${m.flow.ok ? 'ok' : m.flow.report.failures.join('; ')}; ${fact(m.flow, 'items bought')} items bought by ${fact(m.flow, 'users started')} users.

\`\`\`sh
${m.steps.map((step) => step.command).join('\n')}
\`\`\``;
}

async function main(): Promise<void> {
  const db = await scratch('bench');
  const dir = benchPath(`results/${db.name}`);
  const services: Server[] = [];
  try {
    await mkdir(dir, { recursive: true });
    const bench: Bench = { dir, db, concurrency, pool, durationS, redisPid: await localRedisPid() };
    const start = async (name: string) => {
      services.push(await startService(db, join(dir, `service-${name}.log`), { DATABASE_POOL_MAX: String(pool) }));
      return services.at(-1)!;
    };
    const rss: Rss = {};
    const m = await measureMain(bench, start, rss);
    const [pg] = await db.sql<{ version: string }[]>`select split_part(version(), ' on ', 1) as version`;
    const commit = execFileSync('git', ['log', '-1', '--format=%h'], { encoding: 'utf8' }).trim();
    const when = `${new Date().toISOString().slice(0, 16)}Z`;
    await writeSection('main', `Run ${when} of ${commit}: ${availableParallelism()} cores shared by the service, PostgreSQL, Redis, the load generator and pgbench (and whatever else runs on the machine); Node ${process.version}, ${pg!.version}.
${concurrency} requests in flight (BENCH_CONCURRENCY: pgbench's clients, the load's connections per process), the service's pool ${pool} (DATABASE_POOL_MAX), ${durationS} s a step, rate limits ${process.env.BENCH_RATE_LIMIT === 'on' ? 'on but never reached' : 'off'}. Files: bench/results/${db.name}/; charts: bench/results/bench.html.

${mainTables(m, rss)}`);
    await writeFile(benchPath('results/bench.json'), `${JSON.stringify({ steps: m.steps.map((step) => ({ ...step, report: undefined })), rss }, null, 2)}\n`);
    const loads = m.steps.filter((step): step is Load => 'report' in step);
    await writeFile(benchPath('results/bench.html'), htmlPage(`npm run bench: ${when}, ${commit}`, loads.map((step) => ({ title: step.label, report: step.report }))));
    const failed = m.steps.filter((step) => !step.ok).map((step) => step.label);
    if (failed.length > 0) throw new Error(`failed: ${failed.join(', ')}`);
  } finally {
    await Promise.all(services.map((service) => stopChild(service, 6_000)));
    await db.drop();
  }
}

// VIEWERS each poll GET /sales every 2 s, as the storefront does, over two service processes for
// VIEWERS_SECONDS, with Redis and again with Redis unreachable (each instance then keeps its own snapshot):
// the listing's reads from PostgreSQL, the database's transactions (the schedulers' refresh included).
async function viewers(): Promise<void> {
  const [count, seconds] = [setting('VIEWERS', 1000), setting('VIEWERS_SECONDS', 20)];
  const db = await scratch('viewers');
  const servers: Server[] = [];
  const rows: (string | number)[][] = [];
  const reads = async (server: Server) => Number(/^sales_listing_reads_total (\d+)/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1] ?? 0);
  const transactions = async () => {
    const [row] = await db.sql<{ count: number }[]>`select xact_commit + xact_rollback as count from pg_stat_database where datname = current_database()`;
    await db.sql`select pg_stat_clear_snapshot()`;
    return row!.count;
  };
  try {
    for (const redis of ['up', 'unreachable']) {
      const extra: Record<string, string> = redis === 'up' ? {} : { REDIS_URL: `redis://127.0.0.1:${await freePort()}` };
      // /readyz: without Redis, /health would never answer 200
      servers.push(await startService(db, '/dev/null', extra, '/readyz'), await startService(db, '/dev/null', extra, '/readyz'));
      await sleep(2000); // the services' own start-up queries settle
      const [readsBefore, xactBefore] = [await Promise.all(servers.map(reads)), await transactions()];
      const ms: number[] = [];
      let failed = 0;
      const end = Date.now() + seconds * 1000;
      await Promise.all(Array.from({ length: count }, async (_, index) => {
        await sleep(Math.random() * 2000); // viewers arrive at random moments of the 2 s period
        while (Date.now() < end) {
          const sent = performance.now();
          const response = await fetch(`${servers[index % 2]!.url}/sales`).catch(() => null);
          await response?.arrayBuffer();
          ms.push(performance.now() - sent);
          if (response?.status !== 200) failed += 1;
          await sleep(Math.max(0, 2000 - (performance.now() - sent)));
        }
      }));
      const readsPerS = (await Promise.all(servers.map(reads))).reduce((sum, value, i) => sum + value - readsBefore[i]!, 0) / seconds;
      const at = (q: number) => Math.round(percentile(ms, q) * 10) / 10;
      rows.push([redis, ms.length, failed, Math.round(readsPerS * 100) / 100, Math.round(((await transactions()) - xactBefore) / seconds * 10) / 10, at(0.5), at(0.99), at(1)]);
      console.log(rows.at(-1)!.join(' '));
      await Promise.all(servers.splice(0).map((server) => stopChild(server, 6000)));
    }
    await writeSection('viewers', `${count} viewers polling GET /sales every 2 s over two instances for ${seconds} s (${new Date().toISOString().slice(0, 16)}Z):\n\n${table(['Redis', 'polls', 'not 200', 'listing reads from PostgreSQL a second', 'transactions a second', 'p50 ms', 'p99 ms', 'max ms'], rows, 2)}`);
  } finally {
    await Promise.all(servers.map((server) => stopChild(server, 6000)));
    await db.drop();
  }
}

// Two service processes shrunk so that one load generator on the same cores can offer three times what
// they serve (one statement of one request at a time), with the default queue budget and statement
// timeout, and every commit waiting COMMIT_DELAY_US before its flush as a slower disk's would: without it,
// the shrunk capacity is CPU the flood's own work takes away, not waiting as a real database's is.
async function overload(): Promise<void> {
  const [seconds, commitDelayUs] = [setting('OVERLOAD_SECONDS', 10), setting('COMMIT_DELAY_US', 2000)];
  const db = await scratch('overload');
  const dir = benchPath(`results/${db.name}`);
  const shrunk = { DATABASE_POOL_MAX: '1', BATCHES_IN_FLIGHT: '1', BATCH_MAX: '1' };
  const services: Server[] = [];
  try {
    await mkdir(dir, { recursive: true });
    await db.sql.unsafe(`alter database ${db.name} set commit_delay = ${commitDelayUs}`);
    await db.sql.unsafe(`alter database ${db.name} set commit_siblings = 0`);
    for (const name of ['A', 'B']) services.push(await startService(db, join(dir, `service-${name}.log`), { RATE_LIMIT: 'off', ...shrunk }));
    const bench: Bench = { dir, db, concurrency: 64, pool: 1, durationS: seconds, redisPid: null };
    await load(bench, 'warm-up', 'checkout-only', services, ['--duration', '3', '--concurrency', '64']);
    const before = await rssMb(services.map((service) => service.pid));
    // the flood over enough connections that it reaches the services, whose queues decide what waits
    const flood = await load(bench, 'overload', 'overload', services, ['--duration', String(seconds), '--concurrency', '64'], 3000);
    const after = await rssMb(services.map((service) => service.pid));
    const settings = `${Object.entries(shrunk).map(([name, value]) => `${name}=${value}`).join(', ')}, commit_delay ${commitDelayUs} µs`;
    await writeSection('overload', `Run ${new Date().toISOString().slice(0, 16)}Z: two instances, ${settings}; \`${flood.command.replaceAll(db.url, '<database>')}\`; HTML: bench/results/${db.name}/overload/overload.html\n\n${table(['figure', 'value'], [
      ...Object.entries(flood.report.facts), ['service RSS before / after, MB', `${before.join(', ')} / ${after.join(', ')}`], ['verdict', flood.ok ? 'PASS' : `FAIL: ${flood.report.failures.join('; ')}`],
    ])}`);
    if (!flood.ok) throw new Error(`overload failed: ${flood.report.failures.join('; ')}`);
  } finally {
    await Promise.all(services.map((service) => stopChild(service, 6_000)));
    await db.drop();
  }
}

const all: Record<string, () => Promise<void>> = { main, aged, viewers, overload };
const steps = process.argv.slice(2);
const unknown = steps.filter((step) => !(step in all));
if (unknown.length > 0) throw new Error(`unknown step ${unknown.join(', ')}: the steps are ${Object.keys(all).join(', ')}`);
let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    console.error(`\n${signal}: stopping every child, then cleaning up (again to quit at once)`);
    killAll('SIGTERM');
  });
}
for (const step of steps.length > 0 ? steps : Object.keys(all)) {
  if (interrupted) break;
  console.log(`\n== npm run bench: ${step}`);
  await all[step]!().catch((error: Error) => {
    console.error(`bench ${step}: ${error.stack ?? error}`);
    process.exitCode = 1;
  });
}

// The ceilings the service is held against, measured in the same run at the same concurrency:
// PostgreSQL alone (pgbench running bench/per-request.sql: one statement per request, the design before
// requests were coalesced) and HTTP alone (a bare node:http server loaded by the load generator's client).
// `node bench/ceilings.ts bare-server` (PORT from the environment) and
// `node bench/ceilings.ts bare-load URL CONNECTIONS SECONDS` are the bare HTTP ceiling's two processes.
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Http, percentile, Recorder } from './client.ts';
import { benchPath, parties, runMeasured, startServer, stopChild, type Bench, type Step } from './procs.ts';
import type { Latency } from './report.ts';
import { createFreshSale } from './scenarios.ts';

// One checkout per statement: users, items and 22-character codes at random.
export const checkoutScript = `\\set user random(1, 10000)
\\set item random(:first_item, :last_item)
select outcome, sale_id, code, expires_at from checkout_one('pgbench-c' || :user, :item, substr(md5(random()::text), 1, 22), 600);
`;
// One purchase per statement over codes pre-inserted as prefix || lpad(n, 21, '0'): client c takes
// n = c, c + clients, c + 2 * clients, ... (pgbench keeps a client's variables), a fresh item each time.
const purchaseScript = (prefix: string) => `\\set i :i + 1
\\set n :client_id + :clients * :i
select outcome, item_id, sale_id, user_id, purchased_at, per_user_limit from purchase_one('${prefix}' || lpad(cast(:n as text), 21, '0'));
`;

// pgbench -l: "client transaction time_us script epoch epoch_us [lag_us]" per line, a file per thread.
async function logLatency(prefix: string): Promise<Partial<Latency>> {
  const [dir, name] = [dirname(prefix), basename(prefix)];
  const ms: number[] = [];
  for (const file of (await readdir(dir)).filter((candidate) => candidate.startsWith(`${name}.`))) {
    for (const fields of (await readFile(join(dir, file), 'utf8')).split('\n').map((line) => line.split(' '))) {
      if (fields.length >= 6) ms.push((Number(fields[2]) + Number(fields[6] ?? 0)) / 1000);
    }
  }
  const at = (q: number) => Math.round(percentile(ms, q) * 1000) / 1000;
  return ms.length === 0 ? {} : { p50: at(0.5), p99: at(0.99), p999: at(0.999), max: at(1) };
}

// rate: -R (transactions per second on a schedule) with a per-transaction log for the percentiles.
export async function pgbench(bench: Bench, label: string, script: string, defines: Record<string, number>, rate: number | null = null, clients = bench.concurrency): Promise<Step & { transactions: number }> {
  const file = join(bench.dir, label.replace(/[^\w]+/g, '-'));
  const scriptFile = `${file}.sql`;
  await writeFile(scriptFile, script);
  const args = [
    '-n', '-M', 'prepared', '-c', String(clients), '-j', String(Math.min(2, clients)), '-T', String(bench.durationS),
    ...(rate === null ? [] : ['-R', String(rate), '-l', `--log-prefix=${file}-log`]),
    ...Object.entries(defines).flatMap(([name, value]) => ['-D', `${name}=${value}`]),
    '-f', scriptFile, bench.db.url,
  ];
  console.log(`\n== ${label}: pgbench, ${clients} clients, ${bench.durationS} s${rate === null ? '' : `, ${rate} tps on a schedule`}`);
  const run = await runMeasured(label, process.env.PGBENCH ?? 'pgbench', args, `${file}.log`, parties(bench, []), false);
  const figure = (pattern: RegExp) => Number(pattern.exec(run.stdout)?.[1] ?? NaN);
  const tps = figure(/^tps = ([\d.]+) \(without initial connection time\)/m);
  if (Number.isNaN(tps) || run.exitCode !== 0) throw new Error(`${label}: pgbench failed (exit ${run.exitCode}); see ${file}.log`);
  const latency = { mean: figure(/^latency average = ([\d.]+) ms/m), ...(rate === null ? {} : await logLatency(`${file}-log`)) };
  console.log(`   ${tps} tps, latency ${JSON.stringify(latency)}`);
  return { label, command: run.command, rps: tps, latency, cpu: run.cpu, ok: true, transactions: figure(/^number of transactions actually processed: (\d+)/m) };
}

export function pgbenchCheckout(bench: Bench, label: string, sale: { firstItemId: number; lastItemId: number }, rate: number | null = null, clients = bench.concurrency) {
  return pgbench(bench, label, checkoutScript, { first_item: sale.firstItemId, last_item: sale.lastItemId }, rate, clients);
}

// pgbench purchases over a fresh sale with codes enough for every client not to run out (at full speed,
// 2.5 times checkout's rate; on a schedule, twice the rate). Users are spread so the limit never refuses.
export async function pgbenchPurchase(bench: Bench, label: string, prefix: string, expectedTps: number, rate: number | null = null, clients = bench.concurrency) {
  const codes = Math.min(400_000, Math.max(20_000, Math.ceil(expectedTps * bench.durationS * (rate === null ? 2.5 : 2))));
  const { sql } = bench.db;
  const sale = await createFreshSale(sql, codes);
  await sql`
    insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_key, expires_at)
    select 'issued', ${`pgbench-${prefix}`}::text || (n % ${Math.ceil(codes / sale.perUserLimit)})::text, id, ${sale.id}, code, code_key(code), now() + interval '1 hour'
    from (select id, ${prefix}::text || lpad((row_number() over (order by id) - 1)::text, 21, '0') as code, row_number() over (order by id) - 1 as n
          from items where sale_id = ${sale.id}) as numbered`;
  const result = await pgbench(bench, label, purchaseScript(prefix), { i: -1, clients }, rate, clients);
  const [row] = await sql<{ sold: number }[]>`select count(*) as sold from items where sale_id = ${sale.id} and buyer_id is not null`;
  if (row!.sold !== result.transactions) console.log(`   warning: ${row!.sold} items sold for ${result.transactions} transactions`);
  return result;
}

// A bare node:http server in a process of its own, loaded over the run's concurrency in connections.
export async function bareHttp(bench: Bench): Promise<Step> {
  console.log(`\n== bare-http: node:http, ${bench.concurrency} connections, ${bench.durationS} s`);
  const server = await startServer([benchPath('ceilings.ts'), 'bare-server'], {}, join(bench.dir, 'bare-server.log'));
  try {
    const args = [benchPath('ceilings.ts'), 'bare-load', server.url, String(bench.concurrency), String(bench.durationS)];
    const run = await runMeasured('bare-http', process.execPath, args, join(bench.dir, 'bare-http.log'), parties(bench, [server.pid]), true);
    if (run.exitCode !== 0) throw new Error(`bare-http failed (exit ${run.exitCode}); see ${join(bench.dir, 'bare-http.log')}`);
    const { rps, latency } = JSON.parse(run.stdout) as { rps: number; latency: Latency };
    console.log(`   ${rps} req/s, p50 ${latency.p50} ms, p99 ${latency.p99} ms`);
    return { label: 'bare node:http', command: run.command, rps, latency, cpu: run.cpu, ok: true };
  } finally {
    await stopChild(server, 2_000);
  }
}

// The bare server answers every request with a fixed JSON body of the size of a checkout's answer.
if (import.meta.main && process.argv[2] === 'bare-server') {
  const body = JSON.stringify({ code: 'hpU8nzVm3BUGylvgqHX7vw', user_id: 'lt1a2b3c4d-c1234', item_id: 123_456, sale_id: 42, expires_at: '2026-01-01T00:10:00.000Z' });
  const server = createServer((request, response) => {
    request.resume().on('end', () => response.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) }).end(body));
  }).listen(Number(process.env.PORT), '127.0.0.1');
  process.on('SIGTERM', () => server.close(() => process.exit(0)).closeAllConnections());
}

// The bare load: POSTs as fast as they are answered, over a fixed number of connections, for a fixed time.
if (import.meta.main && process.argv[2] === 'bare-load') {
  const [url, connections, seconds] = [process.argv[3]!, Number(process.argv[4]), Number(process.argv[5])];
  const recorder = new Recorder();
  const http = new Http([url], connections, recorder);
  await http.warmUp(1000);
  recorder.begin();
  process.stderr.write('[bare-http] measuring\n');
  const deadline = performance.now() + seconds * 1000;
  let next = 0;
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < deadline) await http.call('checkout', 'POST', `/checkout?user_id=bare-${next % 10_000}&id=${next++}`);
  }));
  recorder.end();
  process.stderr.write(`[bare-http] done ${recorder.total} requests\n`);
  await http.close();
  const h = recorder.byEndpoint.get('checkout')!.histogram;
  const ms = (percentile: number) => Math.min(h.getValueAtPercentile(percentile), h.maxValue) / 1000;
  const rps = Math.round((recorder.total / (recorder.elapsedMs() / 1000)) * 10) / 10;
  console.log(JSON.stringify({ rps, latency: { p50: ms(50), p90: ms(90), p99: ms(99), p999: ms(99.9), max: h.maxValue / 1000, mean: Math.round(h.mean) / 1000 } }));
  process.exitCode = recorder.errors > 0 ? 1 : 0;
}

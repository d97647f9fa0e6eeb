// The ceilings the service is held against, measured in the same run at the same concurrency:
// PostgreSQL alone (pgbench sending exactly the service's statements at the run's concurrency)
// and HTTP alone (a bare node:http server loaded by the load generator's own client).
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Sql } from '../src/db.ts';
import type { CpuUse } from './cpu.ts';
import { createFreshSale, type SaleInfo } from './database.ts';
import { benchPath, startBareServer, stopChild } from './procs.ts';
import { runMeasured, type Context, type FunctionTime } from './steps.ts';

export const pgbenchCommand = process.env.PGBENCH ?? 'pgbench';

// The per-request ceiling (bench/per-request.sql): one checkout per statement, the design the service
// used before it coalesced requests; users, items and 22-character codes at random.
export const checkoutScript = `\\set user random(1, 10000)
\\set item random(:first_item, :last_item)
select outcome, sale_id as "saleId", code, expires_at as "expiresAt"
from checkout_one('pgbench-c' || :user, :item, substr(md5(random()::text), 1, 22), 600);
`;
// The per-request ceiling (bench/per-request.sql): one purchase per statement, over pre-inserted codes prefix || lpad(n, 21, '0'): client c takes
// n = c, c + clients, c + 2 * clients, ... (pgbench keeps a client's variables between transactions),
// so every transaction buys a fresh item with a fresh code. Each run has its own prefix ('b', 'c').
export function purchaseScript(prefix: string): string {
  return `\\set i :i + 1
\\set n :client_id + :clients * :i
select outcome, item_id as "itemId", sale_id as "saleId", user_id as "userId",
       purchased_at as "purchasedAt", per_user_limit as "perUserLimit"
from purchase_one('${prefix}' || lpad(cast(:n as text), 21, '0'));
`;
}

// A fresh sale of `count` items with code n (from 0) for its n-th item. Users are spread so that
// nobody holds more than the per-user limit of codes: the limit never refuses.
export async function preparePurchaseCodes(sql: Sql, count: number, prefix: string): Promise<SaleInfo> {
  const sale = await createFreshSale(sql, count);
  const users = Math.ceil(count / sale.perUserLimit);
  await sql`
    insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_key, expires_at)
    select 'issued', ${`pgbench-${prefix}`}::text || (n % ${users})::text, id, ${sale.id}, code, code_key(code), now() + interval '1 hour'
    from (select id, ${prefix}::text || lpad((row_number() over (order by id) - 1)::text, 21, '0') as code, row_number() over (order by id) - 1 as n
          from items where sale_id = ${sale.id}) as numbered`;
  return sale;
}

export type PgbenchResult = {
  label: string;
  clients: number;
  command: string;
  script: string;
  tps: number | null;
  latencyMs: number | null;
  transactions: number | null;
  failed: number | null;
  // with a rate (-R): the latency of every transaction from when it was due (pgbench's per-transaction log)
  rate: number | null;
  percentilesMs: Percentiles | null;
  exitCode: number | null;
  cpu: CpuUse | null;
  functions: Record<string, FunctionTime>;
};

export type Percentiles = { p50: number; p99: number; p999: number; max: number };

// pgbench -l: "client transaction time_us script epoch epoch_us [lag_us]" per line, one file per thread.
async function logPercentiles(dir: string, prefix: string): Promise<Percentiles | null> {
  const files = (await readdir(dir)).filter((name) => name.startsWith(`${prefix}.`));
  const latencies: number[] = [];
  for (const file of files) {
    for (const line of (await readFile(join(dir, file), 'utf8')).split('\n')) {
      const fields = line.split(' ');
      if (fields.length >= 6) latencies.push((Number(fields[2]) + Number(fields[6] ?? 0)) / 1000);
    }
  }
  if (latencies.length === 0) return null;
  latencies.sort((a, b) => a - b);
  const at = (percentile: number) => Math.round(latencies[Math.min(latencies.length - 1, Math.floor((latencies.length * percentile) / 100))]! * 1000) / 1000;
  return { p50: at(50), p99: at(99), p999: at(99.9), max: at(100) };
}

function figure(output: string, pattern: RegExp): number | null {
  const match = pattern.exec(output);
  return match ? Number(match[1]) : null;
}

// rate: -R (transactions per second on a schedule) with a per-transaction log for the percentiles.
export async function pgbench(ctx: Context, label: string, script: string, defines: Record<string, number>, rate: number | null = null, clients = ctx.concurrency): Promise<PgbenchResult> {
  const scriptFile = join(ctx.runDir, `${label}.sql`);
  await writeFile(scriptFile, script);
  const logPrefix = join(ctx.runDir, `${label}-log`);
  const args = [
    '-n', '-M', 'prepared',
    '-c', String(clients), '-j', String(Math.min(2, clients)), '-T', String(ctx.durationS),
    ...(rate === null ? [] : ['-R', String(rate), '-l', `--log-prefix=${logPrefix}`]),
    ...Object.entries(defines).flatMap(([name, value]) => ['-D', `${name}=${value}`]),
    '-f', scriptFile, ctx.databaseUrl,
  ];
  console.log(`\n== ${label}: pgbench, ${clients} clients, ${ctx.durationS} s${rate === null ? '' : `, ${rate} tps on a schedule`}`);
  const measured = await runMeasured(ctx, label, pgbenchCommand, args, [], false);
  const out = measured.stdout;
  const result = {
    label,
    clients,
    command: measured.command,
    script,
    tps: figure(out, /^tps = ([\d.]+) \(without initial connection time\)/m),
    latencyMs: figure(out, /^latency average = ([\d.]+) ms/m),
    transactions: figure(out, /^number of transactions actually processed: (\d+)/m),
    failed: figure(out, /^number of failed transactions: (\d+)/m),
    rate,
    percentilesMs: rate === null ? null : await logPercentiles(ctx.runDir, `${label}-log`),
    exitCode: measured.exitCode,
    cpu: measured.cpu,
    functions: measured.functions,
  };
  if (result.tps === null || measured.exitCode !== 0) throw new Error(`${label}: pgbench failed (exit ${measured.exitCode}); see ${join(ctx.runDir, `${label}.log`)}`);
  const tail = result.percentilesMs ? `, p50 ${result.percentilesMs.p50} ms, p99 ${result.percentilesMs.p99} ms` : '';
  console.log(`   ${result.tps} tps, latency average ${result.latencyMs} ms${tail}`);
  return result;
}

export type BareResult = {
  command: string;
  requests: number;
  errors: number;
  durationS: number;
  rps: number;
  latencyMs: { p50: number; p90: number; p99: number; p999: number; max: number; mean: number };
  exitCode: number | null;
  cpu: CpuUse | null;
};

// A bare node:http server in its own process, loaded over the run's concurrency in connections for the duration.
export async function bareHttp(ctx: Context): Promise<BareResult> {
  console.log(`\n== bare-http: node:http server, ${ctx.concurrency} connections, ${ctx.durationS} s`);
  const server = await startBareServer(join(ctx.runDir, 'bare-server.log'));
  try {
    const out = join(ctx.runDir, 'bare-http.json');
    const args = [benchPath('bare-load.ts'), '--url', server.url, '--connections', String(ctx.concurrency), '--duration', String(ctx.durationS), '--out', out];
    const measured = await runMeasured(ctx, 'bare-http', process.execPath, args, [server.pid], true);
    const figures = JSON.parse(await readFile(out, 'utf8').catch(() => 'null')) as Omit<BareResult, 'command' | 'exitCode' | 'cpu'> | null;
    if (!figures) throw new Error(`bare-http: no result (exit ${measured.exitCode}); see ${join(ctx.runDir, 'bare-http.log')}`);
    console.log(`   ${figures.rps} req/s, p50 ${figures.latencyMs.p50} ms, p99 ${figures.latencyMs.p99} ms`);
    return { command: measured.command, ...figures, exitCode: measured.exitCode, cpu: measured.cpu };
  } finally {
    await stopChild(server, 2_000);
  }
}

// One measured step of the benchmark: a child process (the load generator, pgbench, the bare HTTP
// client) run to completion, with the CPU each party used and the time PostgreSQL spent in the
// service's SQL functions while it ran.
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Sql } from '../src/db.ts';
import { CpuMeter, type CpuUse } from './cpu.ts';
import { benchPath, spawnLogged, type Server } from './procs.ts';
import type { Report } from './report.ts';

export type Context = {
  runDir: string;
  databaseUrl: string;
  sql: Sql;
  // requests in flight: pgbench's clients, the load generator's connections per instance
  concurrency: number;
  // the service's connections per process (pgbench runs at this many clients too, for comparison)
  pool: number;
  // the stampede's users shopping at once, over as many connections in all
  stampedeUsers: number;
  durationS: number;
  // the local Redis server's process, when it runs on this machine: its CPU is measured too
  redisPid: number | null;
};

export type FunctionTime = { calls: number; meanMs: number | null };
export type Measured = { exitCode: number | null; cpu: CpuUse | null; functions: Record<string, FunctionTime>; command: string; stdout: string };

type FunctionRow = { name: string; calls: number; totalMs: number };

// Needs track_functions = 'all' on the database (set when it is created); empty otherwise.
async function functionTotals(sql: Sql): Promise<Map<string, FunctionRow>> {
  const rows = await sql<FunctionRow[]>`
    select funcname as name, calls, total_time as "totalMs" from pg_stat_user_functions`.catch(() => []);
  return new Map(rows.map((row) => [row.name, row]));
}

function functionDeltas(before: Map<string, FunctionRow>, after: Map<string, FunctionRow>): Record<string, FunctionTime> {
  const deltas: Record<string, FunctionTime> = {};
  for (const [name, row] of after) {
    const calls = row.calls - (before.get(name)?.calls ?? 0);
    const totalMs = row.totalMs - (before.get(name)?.totalMs ?? 0);
    if (calls > 0) deltas[name] = { calls, meanMs: Math.round((totalMs / calls) * 1000) / 1000 };
  }
  return deltas;
}

// PostgreSQL's processes that work for this benchmark: the backends of its database and the shared
// background processes (WAL writer, checkpointer, ...), without the benchmark's own connection.
export function postgresPids(sql: Sql): () => Promise<number[]> {
  return async () => {
    const rows = await sql<{ pid: number }[]>`
      select pid from pg_stat_activity
      where (datname = current_database() or datname is null) and pid <> pg_backend_pid()`.catch(() => []);
    return rows.map((row) => row.pid);
  };
}

const quote = (arg: string) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`);

// A command line to show: relative paths, `node`, and no password.
function shown(command: string, args: string[]): string {
  const hidePassword = (arg: string) => arg.replace(/^(postgres(?:ql)?:\/\/[^:/@]+:)[^@]+@/, '$1***@');
  const words = [command === process.execPath ? 'node' : command, ...args];
  return words.map((arg) => quote(hidePassword(arg.replace(`${process.cwd()}/`, '')))).join(' ');
}

// CPU is measured between the child's "[label] measuring" and "[label] done" lines when it prints
// them (the load generator's measured phase, without its setup and audit), else over its whole life.
export async function runMeasured(ctx: Context, label: string, command: string, args: string[], servers: number[], marked: boolean): Promise<Measured> {
  let clientPid = 0;
  const meter = new CpuMeter({
    server: () => servers,
    postgres: postgresPids(ctx.sql),
    redis: () => (ctx.redisPid === null ? [] : [ctx.redisPid]),
    client: () => [clientPid],
  });
  const before = await functionTotals(ctx.sql);
  let started: Promise<void> | null = null;
  let stopped: Promise<CpuUse> | null = null;
  let sawDone = false;
  const onLine = (line: string) => {
    process.stderr.write(`  ${label}: ${line}\n`);
    if (/^\[[\w-]+\] measuring$/.test(line)) started ??= meter.start();
    if (/^\[[\w-]+\] done /.test(line) && started) {
      sawDone = true;
      stopped ??= started.then(() => meter.stop());
    }
  };
  const child = spawnLogged(command, args, { logFile: join(ctx.runDir, `${label}.log`), onLine });
  clientPid = child.pid;
  if (!marked) started = meter.start();
  let exitCode: number | null;
  try {
    exitCode = await child.exited;
  } finally {
    // Unmarked: the whole life. Marked but never "done" (it failed midway): no figure, but the sampling stops.
    if (!stopped && started) stopped = started.then(() => meter.stop());
  }
  const cpu = stopped ? await stopped : null;
  const functions = functionDeltas(before, await functionTotals(ctx.sql));
  return { exitCode, cpu: marked && !sawDone ? null : cpu, functions, command: shown(command, args), stdout: child.stdout() };
}

export type EndpointFigures = { requests: number; rps: number; p50: number; p90: number; p99: number; p999: number; max: number; mean: number; outcomes: Record<string, number> };

export type LoadSummary = {
  label: string;
  scenario: string;
  instances: number;
  command: string;
  exitCode: number | null;
  ok: boolean;
  failures: string[];
  stopReason: string | null;
  durationS: number;
  totals: { requests: number; rps: number; errors: number };
  endpoints: Record<string, EndpointFigures>;
  facts: Record<string, string | number | null>;
  cpu: CpuUse | null;
  functions: Record<string, FunctionTime>;
};

function summarize(report: Report): Pick<LoadSummary, 'ok' | 'failures' | 'stopReason' | 'durationS' | 'totals' | 'endpoints' | 'facts'> {
  const endpoints: Record<string, EndpointFigures> = {};
  for (const e of report.endpoints) {
    endpoints[e.endpoint] = { requests: e.requests, rps: e.rps, ...e.latencyMs, outcomes: Object.fromEntries(e.outcomes.map((o) => [o.outcome, o.count])) };
  }
  const { ok, failures, stopReason, durationS, totals, facts } = report;
  return { ok, failures, stopReason, durationS, totals, endpoints, facts };
}

// `node bench/load.ts <scenario>` against the given instances, over `connections` (the run's
// concurrency unless given) per instance; its report lands in <run folder>/<label>/<scenario>.json.
export async function loadStep(ctx: Context, label: string, scenario: string, servers: Server[], extra: string[], connections = ctx.concurrency): Promise<LoadSummary> {
  const out = join(ctx.runDir, label);
  await mkdir(out, { recursive: true });
  const args = [
    benchPath('load.ts'), scenario,
    ...servers.flatMap((server) => ['--url', server.url]),
    '--database-url', ctx.databaseUrl,
    '--connections', String(connections),
    ...extra,
    '--out', out,
  ];
  console.log(`\n== ${label}: ${scenario} on ${servers.length} instance(s) ${extra.join(' ')}`);
  const measured = await runMeasured(ctx, label, process.execPath, args, servers.map((server) => server.pid), true);
  const report = JSON.parse(await readFile(join(out, `${scenario}.json`), 'utf8').catch(() => 'null')) as Report | null;
  if (!report) throw new Error(`${label}: the load generator wrote no report (exit ${measured.exitCode}); see ${join(ctx.runDir, `${label}.log`)}`);
  const summary = { label, scenario, instances: servers.length, command: measured.command, exitCode: measured.exitCode, ...summarize(report), cpu: measured.cpu, functions: measured.functions };
  const main = summary.endpoints[scenario === 'purchase-only' ? 'purchase' : 'checkout'];
  console.log(`   ${summary.ok ? 'ok' : 'FAILED'}: ${summary.totals.rps} req/s over ${summary.durationS} s; ${main ? `p50 ${main.p50} ms, p99 ${main.p99} ms` : ''}`);
  return summary;
}

// What a benchmark step starts, measures and removes again: child processes (service instances, pgbench,
// the load generator), each killed when the benchmark exits however it exits; a database and Redis key
// prefix of its own; the CPU and memory of the processes it measures (pidusage); and a load step, the
// load generator run against the service with its CPU measured.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import pidusage from 'pidusage';
import postgres from 'postgres';
import { createClient } from 'redis';
import { connect, type Sql } from '../src/db.ts';
import type { Latency, Report } from './report.ts';

export const adminUrl = process.env.BENCH_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
export const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
export const benchPath = (file: string) => fileURLToPath(new URL(file, import.meta.url));

const children = new Set<ChildProcess>();
let killOnExit = false;
const alive = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;

export function killAll(signal: NodeJS.Signals): void {
  for (const child of children) if (alive(child)) child.kill(signal);
}

export type Child = { child: ChildProcess; pid: number; exited: Promise<number | null>; stdout: () => string };

// stdout and stderr go to logFile; each stderr line also to onLine (progress, markers); stdout is kept.
export function spawnLogged(command: string, args: string[], options: { env?: Record<string, string>; logFile: string; onLine?: (line: string) => void }): Child {
  if (!killOnExit) process.once('exit', () => killAll('SIGKILL'));
  killOnExit = true;
  const child = spawn(command, args, { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const log = createWriteStream(options.logFile);
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    log.write(chunk);
    if (stdout.length < 1_000_000) stdout += chunk.toString();
  });
  createInterface({ input: child.stderr! }).on('line', (line) => {
    log.write(`${line}\n`);
    options.onLine?.(line);
  });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      children.delete(child);
      log.end(() => resolve(code));
    });
  });
  if (child.pid === undefined) throw new Error(`could not start ${command}`);
  return { child, pid: child.pid, exited, stdout: () => stdout };
}

// SIGTERM, then SIGKILL if it has not gone within graceMs.
export async function stopChild(target: Child, graceMs = 10_000): Promise<void> {
  if (alive(target.child)) target.child.kill('SIGTERM');
  const timer = setTimeout(() => alive(target.child) && target.child.kill('SIGKILL'), graceMs);
  await target.exited.catch(() => null);
  clearTimeout(timer);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer().once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export type Server = Child & { url: string };

// `node <args>` with PORT set, ready once readyPath answers 200.
export async function startServer(args: string[], env: Record<string, string>, logFile: string, readyPath = '/health'): Promise<Server> {
  const port = await freePort();
  const script = args[0]!;
  const target = spawnLogged(process.execPath, args, { env: { ...env, PORT: String(port) }, logFile });
  const url = `http://127.0.0.1:${port}`;
  for (const deadline = Date.now() + 30_000; ;) {
    if (!alive(target.child)) throw new Error(`${script} exited early; see ${logFile}`);
    if (await fetch(`${url}${readyPath}`, { signal: AbortSignal.timeout(2_000) }).then((response) => response.ok, () => false)) return { ...target, url };
    if (Date.now() > deadline) {
      await stopChild(target, 1_000);
      throw new Error(`${url}${readyPath} not ready in 30 s; see ${logFile}`);
    }
    await sleep(100);
  }
}

// A service's rate limits on but never reached: every request then counts in Redis, so Redis is on its path.
export const limitsNeverReached = { RATE_LIMIT: 'on', RATE_LIMIT_ADDRESS_MAX: '10000000', RATE_LIMIT_USER_MAX: '10000000', RATE_LIMIT_BAD_CODE_MAX: '10000000' };

export type Scratch = { name: string; url: string; sql: Sql; prefix: string; drop: () => Promise<void> };

// An empty database of the step's own and a Redis key prefix; the first service started on it migrates it.
// drop() removes both (SCAN + UNLINK of the prefix: never FLUSHDB on a shared server).
export async function scratch(kind: string): Promise<Scratch> {
  const id = randomBytes(4).toString('hex');
  const name = `flash_${kind}_${id}`;
  const prefix = `flash-${kind}:${id}:`;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
  await admin`create database ${admin(name)}`;
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const sql = connect(url.toString(), { max: 2 });
  const drop = async () => {
    await sql.end({ timeout: 5 }).catch(() => {});
    await admin`drop database if exists ${admin(name)} with (force)`;
    await admin.end({ timeout: 5 });
    const redis = createClient({ url: redisUrl, socket: { connectTimeout: 2_000, reconnectStrategy: false } });
    await redis.connect();
    let keys = 0;
    for await (const batch of redis.scanIterator({ MATCH: `${prefix}*`, COUNT: 1_000 })) if (batch.length > 0) keys += await redis.unlink(batch);
    redis.destroy();
    console.error(`dropped database ${name} and ${keys} Redis keys under ${prefix}`);
  };
  return { name, url: url.toString(), sql, prefix, drop };
}

// The service as a benchmark runs it. The load comes from one address, so the per-address limit would
// measure itself: rate limits are off, or with BENCH_RATE_LIMIT=on running but never reached.
export function startService(db: Scratch, logFile: string, extra: Record<string, string> = {}, readyPath = '/health'): Promise<Server> {
  const limits = process.env.BENCH_RATE_LIMIT === 'on' ? limitsNeverReached : { RATE_LIMIT: 'off' };
  const env = { DATABASE_URL: db.url, REDIS_URL: redisUrl, REDIS_KEY_PREFIX: db.prefix, LOG_LEVEL: 'warn', HOST: '127.0.0.1', SHUTDOWN_GRACE_MS: '5000', ...limits, ...extra };
  return startServer([benchPath('../src/server.ts')], env, logFile, readyPath);
}

// pidusage never answers for an empty list, and fails the whole list when its only process is gone.
const usage = async (pids: number[]): Promise<Record<string, pidusage.Status | null>> =>
  (pids.length === 0 ? {} : pidusage(pids).catch(() => ({})));

export type Cpu = { cores: Record<string, number>; machineBusy: number; machineCores: number };

const machineTimes = () => cpus().reduce((sum, cpu) => {
  const { user, nice, sys, irq, idle } = cpu.times;
  return { busy: sum.busy + user + nice + sys + irq, total: sum.total + user + nice + sys + irq + idle };
}, { busy: 0, total: 0 });

// Cores each party used from now until stop(), and how busy the whole machine was. Processes are
// sampled every 250 ms, so one that exits meanwhile (a pgbench backend) loses at most its last 250 ms;
// one first seen after the start was born during the step and counts from zero.
export function cpuMeter(parties: Record<string, () => number[] | Promise<number[]>>): { stop: () => Promise<Cpu> } {
  const startedAt = performance.now();
  const machine = machineTimes();
  const first = new Map<number, number>();
  const last = new Map<number, [party: string, ms: number]>();
  const sample = async (initial: boolean) => {
    for (const [party, pids] of Object.entries(parties)) {
      for (const stat of Object.values(await usage(await pids()))) {
        if (!stat) continue;
        if (!first.has(stat.pid)) first.set(stat.pid, initial ? stat.ctime : 0);
        last.set(stat.pid, [party, stat.ctime]);
      }
    }
  };
  let chain = sample(true);
  const timer = setInterval(() => (chain = chain.then(() => sample(false)).catch(() => {})), 250);
  return {
    async stop() {
      clearInterval(timer);
      await chain.then(() => sample(false)).catch(() => {});
      const seconds = (performance.now() - startedAt) / 1000;
      const cores = Object.fromEntries(Object.keys(parties).map((party) => [party, 0]));
      for (const [pid, [party, ms]] of last) cores[party]! += (ms - first.get(pid)!) / 1000 / seconds;
      const now = machineTimes();
      const round = (value: number) => Math.round(value * 100) / 100;
      return {
        cores: Object.fromEntries(Object.entries(cores).map(([party, value]) => [party, round(value)])),
        machineBusy: round((now.busy - machine.busy) / 1000 / seconds),
        machineCores: Math.round((now.total - machine.total) / 1000 / seconds),
      };
    },
  };
}

// Resident memory of each process in MB, null once it is gone.
export async function rssMb(pids: number[]): Promise<(number | null)[]> {
  const stats = await usage(pids);
  return pids.map((pid) => (stats[pid] ? Math.round((stats[pid].memory / 2 ** 20) * 10) / 10 : null));
}

// PostgreSQL's processes working for the database: its backends and the shared background processes
// (WAL writer, checkpointer, ...), without the connection that asks.
export function postgresPids(sql: Sql): () => Promise<number[]> {
  return async () => (await sql<{ pid: number }[]>`
    select pid from pg_stat_activity where (datname = current_database() or datname is null) and pid <> pg_backend_pid()`.catch(() => [])).map((row) => row.pid);
}

// Redis's own process, when it runs on this machine: its CPU is measured too.
export async function localRedisPid(): Promise<number | null> {
  const client = createClient({ url: redisUrl, socket: { connectTimeout: 2_000, reconnectStrategy: false } });
  try {
    await client.connect();
    const pid = Number(/process_id:(\d+)/.exec(await client.info('server'))?.[1]);
    return (await usage([pid]))[pid] ? pid : null;
  } catch {
    return null;
  } finally {
    client.destroy();
  }
}

export type Measured = { exitCode: number | null; cpu: Cpu | null; stdout: string; command: string };

// A child run to completion with the CPU each party used (the child itself is the client): between its
// "[x] measuring" and "[x] done" lines when `marked` (the load generator's measured part, without its
// setup and audit), else over its whole life.
export async function runMeasured(label: string, command: string, args: string[], logFile: string, parties: Record<string, () => number[] | Promise<number[]>>, marked: boolean): Promise<Measured> {
  const withClient = { ...parties, client: () => [child.pid] };
  let meter: ReturnType<typeof cpuMeter> | null = null;
  let cpu: Promise<Cpu> | null = null;
  const onLine = (line: string) => {
    process.stderr.write(`  ${label}: ${line}\n`);
    if (/^\[[\w-]+\] measuring$/.test(line)) meter ??= cpuMeter(withClient);
    if (/^\[[\w-]+\] done /.test(line)) cpu ??= meter?.stop() ?? null;
  };
  const child = spawnLogged(command, args, { logFile, onLine });
  if (!marked) meter = cpuMeter(withClient);
  const exitCode = await child.exited;
  if (!marked) cpu = meter!.stop();
  else if (!cpu) await meter?.stop(); // failed midway: no figure, but the sampling stops
  // shown: relative paths, `node`, no password
  const shown = [command === process.execPath ? 'node' : command, ...args].map((arg) => arg.replace(`${process.cwd()}/`, '').replace(/(:\/\/[^:/@]+:)[^@]+@/, '$1***@'));
  return { exitCode, cpu: cpu ? await cpu : null, stdout: child.stdout(), command: shown.join(' ') };
}

// A whole-number setting from the environment, or its default.
export function setting(name: string, fallback: number): number {
  const value = process.env[name] ? Number(process.env[name]) : fallback;
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name} must be a whole number`);
  return value;
}

export type Bench = { dir: string; db: Scratch; concurrency: number; pool: number; durationS: number; redisPid: number | null };
// One measured step: its rate, its latency (what it knows of it) and the cores each party used.
export type Step = { label: string; command: string; rps: number | null; latency: Partial<Latency>; cpu: Cpu | null; ok: boolean };
export type Load = Step & { report: Report };

export const parties = (bench: Bench, servers: number[]) => ({
  server: () => servers,
  postgres: postgresPids(bench.db.sql),
  redis: () => (bench.redisPid === null ? [] : [bench.redisPid]),
});

// `node bench/load.ts <scenario>` against the given instances, over `connections` per instance.
export async function load(bench: Bench, label: string, scenario: string, servers: Server[], extra: string[], connections = bench.concurrency): Promise<Load> {
  const slug = label.replace(/[^\w]+/g, '-');
  const out = join(bench.dir, slug);
  const args = [benchPath('load.ts'), scenario, ...servers.flatMap((server) => ['--url', server.url]), '--database-url', bench.db.url, '--connections', String(connections), ...extra, '--out', out];
  console.log(`\n== ${label}: ${scenario} ${extra.join(' ')}`);
  const run = await runMeasured(slug, process.execPath, args, `${out}.log`, parties(bench, servers.map((server) => server.pid)), true);
  const report = JSON.parse(await readFile(join(out, `${scenario}.json`), 'utf8').catch(() => 'null')) as Report | null;
  if (!report) throw new Error(`${label}: the load generator wrote no report (exit ${run.exitCode}); see ${out}.log`);
  const main = report.endpoints.find((e) => e.endpoint === (scenario === 'purchase-only' ? 'purchase' : 'checkout'));
  const whole = scenario === 'stampede' || scenario === 'flow';
  console.log(`   ${report.ok ? 'ok' : `FAILED: ${report.failures.join('; ')}`}: ${report.totals.rps} req/s`);
  return { label, command: run.command, rps: whole ? report.totals.rps : main?.rps ?? null, latency: main?.latencyMs ?? {}, cpu: run.cpu, ok: report.ok, report };
}

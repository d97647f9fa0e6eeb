// npm run bench [-- main aged viewers overload]: the steps named, or all four in that order. main (this
// file): the service measured against its ceilings, side by side in one run; aged (bench/aged.ts): a
// database that has lived a month beside a fresh one; viewers (bench/viewers.ts): what storefront viewers
// cost PostgreSQL; overload (bench/overload.ts): three times what two instances can serve.
// main creates its own database and Redis key prefix, starts the service (1 process, then 2 on separate
// ports sharing the database), runs the load generator's scenarios against it, measures the
// PostgreSQL ceiling (pgbench with one statement per request, bench/per-request.sql) and the HTTP ceiling (bare node:http)
// at the same concurrency, then writes bench/results/bench.json and BENCHMARKS.md. Everything it
// started is stopped and everything it created is dropped, even on failure.
//
// Settings (environment): DATABASE_POOL_MAX (16: the service's pool), BENCH_CONCURRENCY (64: pgbench's
// clients and the load's connections per instance), BENCH_STAMPEDE_USERS (256: users shopping at once in
// the stampede, over as many connections, split among the instances), BENCH_DURATION (10 s per measured step), BENCH_ADMIN_URL
// (postgres://postgres@127.0.0.1:5432/postgres), REDIS_URL (redis://127.0.0.1:6379), PGBENCH (pgbench),
// BENCH_RATE_LIMIT (off: the service's rate limits are off; on: they run, with limits never reached).
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { saleInfo } from './database.ts';
import { renderMarkdown } from './markdown.ts';
import { killAll, limitsNeverReached, startService, stopChild, type Server } from './procs.ts';
import { measure, type Measurements } from './phases.ts';
import { createDatabase, describeMachine, dropRedisPrefix, localRedisPid, type Machine } from './setup.ts';
import type { Context } from './steps.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

function setting(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  const value = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) throw new Error(`${name} must be a whole number from ${min} to ${max}`);
  return value;
}

export type Settings = { pool: number; concurrency: number; stampedeUsers: number; durationS: number; adminUrl: string; redisUrl: string; rateLimit: 'on' | 'off' };

function rateLimitEnv(rateLimit: 'on' | 'off'): Record<string, string> {
  return rateLimit === 'off' ? { RATE_LIMIT: 'off' } : limitsNeverReached;
}

export type BenchResults = {
  startedAt: string;
  finishedAt: string;
  elapsedS: number;
  ok: boolean;
  error: string | null;
  runDir: string;
  settings: Omit<Settings, 'adminUrl'>;
  machine: Machine | null;
  measurements: Partial<Measurements>;
  cleanup: string[];
};

let interrupted = false;

function onSignals(): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (interrupted) process.exit(130);
      interrupted = true;
      console.error(`\n${signal}: stopping every child, then cleaning up (again to quit at once)`);
      killAll('SIGTERM');
    });
  }
}

// The services and the measurements; the caller owns the cleanup.
async function run(ctx: Context, settings: Settings, prefix: string, results: BenchResults, services: Server[]): Promise<void> {
  const env = {
    DATABASE_URL: ctx.databaseUrl,
    REDIS_URL: settings.redisUrl,
    REDIS_KEY_PREFIX: prefix,
    DATABASE_POOL_MAX: String(settings.pool),
    LOG_LEVEL: 'warn',
    HOST: '127.0.0.1',
    SHUTDOWN_GRACE_MS: '5000',
    // The load comes from one address: the per-address limit would measure itself, not the service.
    // BENCH_RATE_LIMIT=on keeps the limits running (their Redis round trips are part of a request's
    // cost in production) but so high that they never refuse.
    ...rateLimitEnv(settings.rateLimit),
  };
  const start = async (name: string) => {
    if (interrupted) throw new Error('interrupted');
    const server = await startService(env, join(ctx.runDir, `service-${name}.log`));
    services.push(server);
    console.log(`service ${name}: pid ${server.pid} at ${server.url}`);
    return server;
  };
  const first = await start('A');
  // The ceiling's per-request functions, beside the service's batched ones (A has migrated by now).
  await ctx.sql.file(fileURLToPath(new URL('./per-request.sql', import.meta.url)));
  results.machine = await describeMachine(ctx.sql, settings.redisUrl);
  const sales = (await (await fetch(`${first.url}/sales`)).json()) as { sales: { id: number; open: boolean }[] };
  const current = await saleInfo(ctx.sql, sales.sales.find((sale) => sale.open)!.id);
  await measure({ ctx, current, start, first, results: results.measurements, interrupted: () => interrupted });
}

async function main(): Promise<number> {
  const startedAt = performance.now();
  const settings: Settings = {
    pool: setting('DATABASE_POOL_MAX', 16, 1, 1000),
    // 64 requests at once is a busy minute of a sale, not yet its stampede; pgbench over 64 clients is
    // PostgreSQL's ceiling for them (max_connections is 100 by default).
    concurrency: setting('BENCH_CONCURRENCY', 64, 1, 1000),
    stampedeUsers: setting('BENCH_STAMPEDE_USERS', 256, 2, 10_000),
    durationS: setting('BENCH_DURATION', 10, 1, 600),
    adminUrl: process.env.BENCH_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres',
    redisUrl: process.env.REDIS_URL || 'redis://127.0.0.1:6379',
    rateLimit: process.env.BENCH_RATE_LIMIT === 'on' ? 'on' : 'off',
  };
  const id = randomBytes(4).toString('hex');
  const runDir = join(root, 'bench', 'results', `run-${new Date().toISOString().replaceAll(':', '').slice(0, 17)}-${id}`);
  await mkdir(runDir, { recursive: true });
  const results: BenchResults = {
    startedAt: new Date().toISOString(), finishedAt: '', elapsedS: 0, ok: false, error: null,
    runDir: runDir.replace(root, ''), settings: { pool: settings.pool, concurrency: settings.concurrency, stampedeUsers: settings.stampedeUsers, durationS: settings.durationS, redisUrl: settings.redisUrl, rateLimit: settings.rateLimit },
    machine: null, measurements: {}, cleanup: [],
  };
  const prefix = `flash-bench:${id}:`;
  const services: Server[] = [];
  console.log(`flash-sale benchmark: database flash_bench_${id}, Redis prefix ${prefix}, results in ${results.runDir}`);
  const database = await createDatabase(settings.adminUrl, `flash_bench_${id}`);
  try {
    const redisPid = await localRedisPid(settings.redisUrl);
    const ctx: Context = { runDir, databaseUrl: database.url, sql: database.sql, pool: settings.pool, concurrency: settings.concurrency, stampedeUsers: settings.stampedeUsers, durationS: settings.durationS, redisPid };
    await run(ctx, settings, prefix, results, services);
    results.ok = true;
  } catch (error) {
    results.error = (error as Error).message;
    console.error(`bench: ${(error as Error).stack ?? error}`);
  } finally {
    await Promise.all(services.map((service) => stopChild(service, 6_000)));
    killAll('SIGKILL');
    await database.drop().then(() => results.cleanup.push(`dropped database ${database.name}`), (error: Error) => results.cleanup.push(`could not drop ${database.name}: ${error.message}`));
    await dropRedisPrefix(settings.redisUrl, prefix).then((count) => results.cleanup.push(`deleted ${count} Redis keys under ${prefix}`), (error: Error) => results.cleanup.push(`could not delete Redis keys under ${prefix}: ${error.message}`));
    console.log(results.cleanup.join('\n'));
  }
  results.finishedAt = new Date().toISOString();
  results.elapsedS = Math.round(performance.now() - startedAt) / 1000;
  await writeFile(join(root, 'bench', 'results', 'bench.json'), `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nwritten: bench/results/bench.json (${results.elapsedS} s)`);
  if (!results.ok) return 1;
  await writeFile(join(root, 'BENCHMARKS.md'), renderMarkdown(results));
  console.log('written: BENCHMARKS.md');
  return results.measurements.loadFailures?.length ? 1 : 0;
}

const steps = process.argv.slice(2);
const allSteps = ['main', 'aged', 'viewers', 'overload'];
const unknown = steps.filter((step) => !allSteps.includes(step));
if (unknown.length > 0) throw new Error(`unknown step ${unknown.join(', ')}: the steps are ${allSteps.join(', ')}`);
onSignals();
for (const step of steps.length > 0 ? steps : allSteps) {
  console.log(`\n== npm run bench: ${step}`);
  const code = step === 'main' ? await main() : (spawnSync(process.execPath, [fileURLToPath(new URL(`${step}.ts`, import.meta.url))], { stdio: 'inherit' }).status ?? 1);
  if (interrupted) break;
  process.exitCode ||= code;
}

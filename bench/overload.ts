// npm run bench -- overload: no congestion collapse. Two service processes whose capacity is shrunk so that
// one load generator on the same two cores can offer three times it (a pool of one connection, one
// statement of one request at a time: BATCH_MAX=1, BATCHES_IN_FLIGHT=1, DATABASE_POOL_MAX=1, each commit
// waiting COMMIT_DELAY_US), with the default queue budget and statement timeout, run `load.ts overload`:
// the closed-loop peak, then an open loop at three times it for OVERLOAD_SECONDS (10), then a calm rate.
// Report: stdout and bench/results/overload.md, with each service's memory before and after.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchPath, rssKb, startService, stopChild, type Server } from './procs.ts';
import { createDatabase, dropRedisPrefix } from './setup.ts';

const seconds = Number(process.env.OVERLOAD_SECONDS ?? 10);
const adminUrl = process.env.BENCH_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const id = randomBytes(4).toString('hex');
const prefix = `flash-overload:${id}:`;
const runDir = fileURLToPath(new URL(`results/overload-${id}/`, import.meta.url));
const shrunk = { DATABASE_POOL_MAX: '1', BATCHES_IN_FLIGHT: '1', BATCH_MAX: '1' };

await mkdir(runDir, { recursive: true });
const database = await createDatabase(adminUrl, `flash_overload_${id}`);
// Each commit of this database waits COMMIT_DELAY_US before its flush, as a slower disk's would: without
// it the shrunk capacity is CPU the flood's own work takes away, not waiting as a real database's is.
const commitDelayUs = Number(process.env.COMMIT_DELAY_US ?? 2000);
await database.sql.unsafe(`alter database ${database.name} set commit_delay = ${commitDelayUs}`);
await database.sql.unsafe(`alter database ${database.name} set commit_siblings = 0`);
const services: Server[] = [];
try {
  const env = { DATABASE_URL: database.url, REDIS_URL: redisUrl, REDIS_KEY_PREFIX: prefix, RATE_LIMIT: 'off', LOG_LEVEL: 'warn', HOST: '127.0.0.1', ...shrunk };
  for (const name of ['A', 'B']) services.push(await startService(env, join(runDir, `service-${name}.log`)));
  const memory = async () => (await Promise.all(services.map((service) => rssKb(service.pid)))).map((kb) => `${Math.round((kb ?? 0) / 1024)} MB`).join(' and ');
  // Unmeasured: the services' JIT and connections warm up before the peak is measured.
  const urls = services.flatMap((service) => ['--url', service.url]);
  spawnSync(process.execPath, [benchPath('load.ts'), 'checkout-only', '--duration', '3', '--concurrency', '64', '--database-url', database.url, '--out', join(runDir, 'warm-up'), ...urls], { stdio: 'ignore' });
  const before = await memory();
  // The peak with 64 requests at a time; the flood over enough connections that it reaches the services,
  // whose queues decide what waits and what is shed.
  const args = ['overload', '--duration', String(seconds), '--connections', '3000', '--concurrency', '64', '--database-url', database.url, '--out', runDir, ...urls];
  const run = spawnSync(process.execPath, [benchPath('load.ts'), ...args], { stdio: 'inherit' });
  const after = await memory();
  const report = JSON.parse(await readFile(join(runDir, 'overload.json'), 'utf8')) as { ok: boolean; facts: Record<string, unknown>; failures: string[] };
  const lines = [
    `# Overload (${new Date().toISOString().slice(0, 16)}Z)`, '',
    `Two service processes, ${Object.entries(shrunk).map(([name, value]) => `${name}=${value}`).join(', ')}, defaults otherwise (QUEUE_TIMEOUT_MS 1000, STATEMENT_TIMEOUT_MS 2000); every commit waits ${commitDelayUs} µs (commit_delay);`,
    `node bench/load.ts ${args.join(' ').replace(runDir, 'bench/results/overload-*/').replaceAll(database.url, '<database>')}`, '',
    '| figure | value |', '|---|---|',
    ...Object.entries(report.facts).map(([name, value]) => `| ${name} | ${value} |`),
    `| service memory (RSS) before / after | ${before} / ${after} |`,
    `| load generator's verdict | ${report.ok ? 'PASS' : `FAIL: ${report.failures.join('; ')}`} |`,
  ];
  console.log(`\n${lines.join('\n')}`);
  await writeFile(fileURLToPath(new URL('results/overload.md', import.meta.url)), `${lines.join('\n')}\n`);
  process.exitCode = run.status === 0 ? 0 : 1;
} finally {
  await Promise.all(services.map((service) => stopChild(service, 6_000)));
  await database.drop();
  await dropRedisPrefix(redisUrl, prefix);
}

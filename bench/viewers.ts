// npm run bench -- viewers: what many people watching the storefront cost PostgreSQL. VIEWERS (1000) each
// poll GET /sales every 2 s, as the storefront does, spread over two service processes on a database of
// the run's own, for SECONDS (20) with Redis and again with Redis unreachable (each instance then keeps
// its own snapshot). Reports the listing's reads from PostgreSQL and the database's transactions per
// second (the schedulers' half-second refresh included), and the latency the viewers saw.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, startService, stopChild, type Server } from './procs.ts';
import { createDatabase, dropRedisPrefix } from './setup.ts';

const viewers = Number(process.env.VIEWERS ?? 1000);
const seconds = Number(process.env.SECONDS ?? 20);
const adminUrl = process.env.BENCH_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

async function listingReads(server: Server): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((entry) => entry.startsWith('sales_listing_reads_total '));
  return Number(line?.split(' ')[1] ?? 0);
}

async function watch(servers: Server[], transactions: () => Promise<number>) {
  const readsBefore = await Promise.all(servers.map(listingReads));
  const xactBefore = await transactions();
  const latencies: number[] = [];
  const statuses = new Map<number, number>();
  const end = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: viewers }, async (_, index) => {
      await sleep(Math.random() * 2000); // viewers arrive at random moments of the 2 s period
      while (Date.now() < end) {
        const started = performance.now();
        const response = await fetch(`${servers[index % servers.length]!.url}/sales`).catch(() => null);
        await response?.arrayBuffer();
        latencies.push(performance.now() - started);
        statuses.set(response?.status ?? 0, (statuses.get(response?.status ?? 0) ?? 0) + 1);
        await sleep(Math.max(0, 2000 - (performance.now() - started)));
      }
    }),
  );
  const xact = (await transactions()) - xactBefore;
  const reads = (await Promise.all(servers.map(listingReads))).reduce((sum, value, index) => sum + value - readsBefore[index]!, 0);
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!.toFixed(1);
  return {
    polls: latencies.length,
    statuses: Object.fromEntries(statuses),
    listingReadsPerS: (reads / seconds).toFixed(2),
    transactionsPerS: (xact / seconds).toFixed(1),
    latencyMs: { p50: at(0.5), p99: at(0.99), max: at(1) },
  };
}

const id = randomBytes(4).toString('hex');
const database = await createDatabase(adminUrl, `flash_viewers_${id}`);
const prefix = `flash-viewers:${id}:`;
const servers: Server[] = [];
try {
  const transactions = async () => {
    const [row] = await database.sql<{ count: number }[]>`
      select xact_commit + xact_rollback as count from pg_stat_database where datname = current_database()`;
    await database.sql`select pg_stat_clear_snapshot()`;
    return row!.count;
  };
  for (const redis of [redisUrl, `redis://127.0.0.1:${await freePort()}`]) {
    const env = { DATABASE_URL: database.url, REDIS_URL: redis, REDIS_KEY_PREFIX: prefix, RATE_LIMIT: 'off', LOG_LEVEL: 'warn', HOST: '127.0.0.1' };
    // /readyz: the second pair runs without Redis, which /health would wait for.
    servers.push(await startService(env, '/dev/null', '/readyz'), await startService(env, '/dev/null', '/readyz'));
    await sleep(2000); // the services' own start-up queries settle
    const result = await watch(servers.slice(-2), transactions);
    console.log(`${viewers} viewers polling every 2 s over 2 instances for ${seconds} s, Redis ${redis === redisUrl ? 'up' : 'unreachable'}:`);
    console.log(JSON.stringify(result));
    await Promise.all(servers.splice(-2).map((server) => stopChild(server, 6000)));
  }
} finally {
  await Promise.all(servers.map((server) => stopChild(server, 6000)));
  await database.drop();
  await dropRedisPrefix(redisUrl, prefix);
}

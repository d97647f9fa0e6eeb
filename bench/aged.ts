// npm run bench -- aged: checkout, purchase and GET /sales on a database that has lived a month, beside a
// fresh one in the same run, and the disk that month takes. Each database is migrated by the service started
// on it; the aged one gets by SQL a month of hourly sales (most barely sold, one in ten sold out, each
// purchase with its buyer's row and its issued code) and attempts keyed as the service keys them.
// Settings: AGED_SALES (720), AGED_ITEMS (10000 per sale), AGED_ATTEMPTS (15000000), AGED_DURATION (10 s a
// load step), AGED_ROUNDS (2), AGED_LISTED (1000 sales for the last GET /sales step), AGED_AUDIT_S (120: the
// audit is given up after that long); DATABASE_POOL_MAX (16), BENCH_CONCURRENCY (64).
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { auditSales, violations } from '../src/audit.ts';
import type { Sql } from '../src/db.ts';
import { listSales } from '../src/store.ts';
import { percentile } from './client.ts';
import { benchPath, load, localRedisPid, scratch, setting, startService, stopChild, type Bench, type Scratch, type Server, type Step } from './procs.ts';
import { table, writeSection } from './report.ts';

const seconds = (since: number) => Math.round((performance.now() - since) / 100) / 10;
const n = (value: number) => Math.round(value).toLocaleString('en-US');
const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MB`;
const percentiles = (ms: number[]) => [0.5, 0.99, 1].map((q) => Math.round(percentile(ms, q) * 10) / 10);

// A code as newCode() makes one (src/shop.ts): the second of `at`, then 12 random bytes (a UUID less its
// bytes 7-10, which hold its version and variant bits), in base64url.
const codeAt = (at: string) => `translate(rtrim(encode(attempt_key_at(${at}) || overlay(uuid_send(gen_random_uuid()) placing ''::bytea from 7 for 4), 'base64'), '='), '+/', '-_')`;

// The aged sales are the AGED_SALES hours before the boundary current when aging began.
async function age(db: Sql, sales: number, items: number, attempts: number): Promise<string> {
  const [{ boundary }] = (await db`select sale_boundary(now(), 3600)::text as boundary`) as unknown as [{ boundary: string }];
  const hoursAgo = (hours: number) => `'${boundary}'::timestamptz - interval '${hours} hours'`;
  const aged = `starts_at >= ${hoursAgo(sales)} and starts_at < ${hoursAgo(0)}`;
  let started = performance.now();
  await db.begin(async (tx) => {
    await tx.unsafe(`insert into sales (starts_at, size, per_user_limit, sold, created_at)
      select at, ${items}, 10, case when h % 10 = 0 then ${items} else least(${items}, floor(random() * 201)::int) end, at
      from generate_series(1, ${sales}) h, lateral (select ${hoursAgo(0)} - make_interval(hours => h) as at) t`);
    // Items 1..sold of each sale are sold, to buyers of 1 + id % 10 items each, a second after their checkout.
    await tx.unsafe(`insert into items (sale_id, seed, buyer_id, purchase_code, sold_at)
      select s.id, floor(random() * 2147483647)::int, b.buyer, b.code, b.at + interval '1 second'
      from sales s cross join generate_series(1, s.size) i
      cross join lateral (select s.starts_at + make_interval(secs => i * case when s.sold = s.size then 0.0005 else 15 end) as at) t
      cross join lateral (select case when i <= s.sold then 'aged-u' || ((i - 1) / (1 + s.id % 10) * 7919 + s.id * 104729) % 100000 end as buyer,
                                 case when i <= s.sold then ${codeAt('t.at')} end as code, case when i <= s.sold then t.at end as at) b
      where ${aged}`);
    await tx.unsafe(`insert into sale_buyers (sale_id, user_id, bought)
      select i.sale_id, i.buyer_id, count(*) from items i join sales s on s.id = i.sale_id and ${aged} where i.buyer_id is not null group by 1, 2`);
    await tx.unsafe(`insert into checkout_attempts (created_at, outcome, user_id, item_id, sale_id, code, code_key, expires_at)
      select i.sold_at - interval '1 second', 'issued', i.buyer_id, i.id, i.sale_id, i.purchase_code, code_key(i.purchase_code), i.sold_at + interval '599 seconds'
      from items i join sales s on s.id = i.sale_id and ${aged} where i.buyer_id is not null`);
  });
  const timings = [`sales, items, buyers and their codes ${seconds(started)} s`];
  started = performance.now();
  const [{ issued, soldOut }] = (await db.unsafe(`select (select count(*) from checkout_attempts)::int as issued,
    (select count(*) from sales where sold = size and ${aged})::int as "soldOut"`)) as unknown as [{ issued: number; soldOut: number }];
  // The other attempts, five times as many for a sale that sold out, most in its first minutes, a day of sales a
  // statement in time order (keys at the index's right edge): 45% issued, 45% item_sold, 7% rate_limited, 3% bad_request.
  for (let day = 0; day * 24 < sales; day += 1) {
    process.stderr.write(`\r  attempts: day ${day + 1} of ${Math.ceil(sales / 24)}`);
    await db.unsafe(`insert into checkout_attempts (created_at, outcome, user_id, item_id, sale_id, code, code_key, expires_at, detail)
      select t.at, o.outcome, case when o.outcome <> 'bad_request' then t.user_id end, case when o.outcome <> 'bad_request' then t.item end,
        case when o.outcome in ('issued', 'item_sold') then s.id end, case when o.outcome = 'issued' then o.code end,
        case when o.outcome in ('issued', 'item_sold') then code_key(o.code) else attempt_key_at(t.at) || uuid_send(gen_random_uuid()) end,
        case when o.outcome = 'issued' then t.at + interval '600 seconds' end,
        case when o.outcome in ('rate_limited', 'bad_request') then '/checkout?user_id=' || t.user_id || '&id=' || t.item
          || case when o.outcome = 'bad_request' then 'x' else '' end end
      from (select s.id, s.starts_at, s.size, (select min(i.id) from items i where i.sale_id = s.id) as first_item,
                   round(${Math.max(0, attempts - issued)}::float8 * case when s.sold = s.size then 5 else 1 end / ${soldOut * 5 + sales - soldOut})::int as count
            from sales s where ${aged} and starts_at >= ${hoursAgo(day * 24 + 24)} and starts_at < ${hoursAgo(day * 24)} order by s.starts_at) s
      cross join generate_series(1, s.count) g
      cross join lateral (select s.starts_at + make_interval(secs => 3599 * power(g / (s.count + 1.0), 3)) as at, random() as r,
                                 'aged-u' || floor(random() * 100000)::int as user_id, s.first_item + floor(random() * s.size)::bigint as item) t
      cross join lateral (select case when t.r < 0.45 then 'issued' when t.r < 0.9 then 'item_sold' when t.r < 0.97 then 'rate_limited'
                                      else 'bad_request' end as outcome, ${codeAt('t.at')} as code) o`);
  }
  process.stderr.write('\n');
  timings.push(`other attempts ${seconds(started)} s`);
  started = performance.now();
  await db`vacuum analyze`;
  return [...timings, `VACUUM ANALYZE ${seconds(started)} s`].join(', ');
}

async function disk(db: Sql): Promise<Map<string, { rows: number; bytes: number }>> {
  const rows = await db<{ name: string; rows: number; bytes: number }[]>`
    select 'checkout_attempts' as name, (select count(*) from checkout_attempts) as rows,
           (select sum(pg_total_relation_size(relid)) from pg_partition_tree('checkout_attempts'))::bigint as bytes
    union all select 'items', (select count(*) from items), pg_total_relation_size('items')
    union all select 'sale_buyers', (select count(*) from sale_buyers), pg_total_relation_size('sale_buyers')
    union all select 'sales', (select count(*) from sales), pg_total_relation_size('sales')
    union all select 'database', null, pg_database_size(current_database())`;
  return new Map(rows.map((row) => [row.name, row]));
}

// 16 pollers, a request at a time each, 5 s after 1 s unrecorded; and how many reads reached PostgreSQL.
async function poll(server: Server): Promise<(number | string)[]> {
  const reads = async () => Number(/^sales_listing_reads_total (\d+)/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1]);
  const client = new Pool(server.url, { connections: 16 });
  const ms: number[] = [];
  let errors = 0;
  const run = async (s: number, record: boolean) => {
    const until = performance.now() + s * 1000;
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (performance.now() < until) {
        const sent = performance.now();
        const reply = await client.request({ path: '/sales', method: 'GET' });
        await reply.body.text();
        if (record) ms.push(performance.now() - sent);
        if (record && reply.statusCode !== 200) errors += 1;
      }
    }));
  };
  await run(1, false);
  const before = await reads();
  await run(5, true);
  const read = (await reads()) - before;
  await client.close();
  return [Math.round(ms.length / 5), read, ...percentiles(ms), errors];
}

// The listing's query alone, as the service sends it, 500 in a row.
async function query(db: Sql): Promise<string> {
  const ms: number[] = [];
  for (let i = 0; i < 500; i += 1) {
    const sent = performance.now();
    await listSales(db, { limit: 20, after: null, latest: 5 }, 3600);
    ms.push(performance.now() - sent);
  }
  const [p50, p99, max] = percentiles(ms);
  return `p50 ${p50} ms, p99 ${p99} ms, max ${max} ms`;
}

// GET /sales polled on the fresh database, the aged one, and the aged one with more sales, with the shared
// snapshot and without it (`unshared`: SALES_SNAPSHOT_MS=1, so requests wait on PostgreSQL and Redis).
async function listing(old: { db: Scratch; server: Server }, fresh: { db: Scratch; server: Server }, unshared: Server, sales: number, items: number, listed: number): Promise<string[]> {
  const rows: (string | number)[][] = [];
  const poller = async (name: string, db: Scratch, server: Server, snapshot: string) => {
    const [row] = await db.sql<{ all: number; open: number }[]>`select count(*) as all, count(*) filter (where sold < size) as open from sales`;
    rows.push([name, `${n(row!.all)} (${n(row!.open)})`, snapshot, ...(await poll(server))]);
    console.error(rows.at(-1)!.join(' '));
  };
  await poller('fresh', fresh.db, fresh.server, 'shared, 1000 ms');
  await poller('aged', old.db, old.server, 'shared, 1000 ms');
  await poller('aged', old.db, unshared, 'off (1 ms)');
  const alone = [await query(old.db.sql)];
  const started = performance.now();
  const [added] = await old.db.sql<{ count: number }[]>`
    with added as (
      insert into sales (starts_at, size, per_user_limit, created_at)
      select at, ${items}::int, 10, at from generate_series(1, greatest(0, ${listed}::int - (select count(*) from sales)::int)) h,
        lateral (select sale_boundary(now(), 3600) - make_interval(hours => ${sales}::int + h) as at) t
      on conflict (starts_at) do nothing returning id, size
    ), made as (
      insert into items (sale_id, seed) select a.id, floor(random() * 2147483647)::int from added a cross join generate_series(1, a.size)
    )
    select count(*) as count from added`;
  console.error(`${added!.count} more sales, older than the month, with their items: ${seconds(started)} s`);
  await poller('aged, more sales', old.db, old.server, 'shared, 1000 ms');
  await poller('aged, more sales', old.db, unshared, 'off (1 ms)');
  alone.push(await query(old.db.sql));
  return ['GET /sales, 16 pollers, 5 s each (goal: p99 under 20 ms):', '',
    table(['database', 'sales (open)', 'snapshot', 'req/s', 'PostgreSQL reads', 'p50 ms', 'p99 ms', 'max ms', 'errors'], rows),
    '', `The listing's query alone on the aged database, 500 in a row: ${alone.join(' before the more sales; ')} after.`];
}

export async function aged(): Promise<void> {
  const [sales, items, attempts] = [setting('AGED_SALES', 720), setting('AGED_ITEMS', 10_000), setting('AGED_ATTEMPTS', 15_000_000)];
  const [durationS, rounds, listed, auditS] = [setting('AGED_DURATION', 10), setting('AGED_ROUNDS', 2), setting('AGED_LISTED', 1000), setting('AGED_AUDIT_S', 120)];
  const [pool, concurrency] = [setting('DATABASE_POOL_MAX', 16), setting('BENCH_CONCURRENCY', 64)];
  const dbs: Scratch[] = [];
  const services: Server[] = [];
  try {
    for (const name of ['fresh', 'aged']) dbs.push(await scratch(name));
    const dir = benchPath(`results/${dbs[1]!.name}`);
    await mkdir(dir, { recursive: true });
    // the same settings for every service; a Redis prefix each, so that none reads another's GET /sales snapshot
    const start = async (db: Scratch, name: string, extra: Record<string, string> = {}) => {
      services.push(await startService(db, join(dir, `service-${name}.log`), { DATABASE_POOL_MAX: String(pool), ...extra }));
      return services.at(-1)!;
    };
    const redisPid = await localRedisPid();
    const [fresh, old] = [{ db: dbs[0]!, server: await start(dbs[0]!, 'fresh') }, { db: dbs[1]!, server: await start(dbs[1]!, 'aged') }];
    console.error(`aging ${old.db.name}...`);
    let started = performance.now();
    const aging = await age(old.db.sql, sales, items, attempts);
    const lines = [`Run ${new Date().toISOString().slice(0, 16)}Z. Aged by SQL in ${seconds(started)} s: ${n(sales)} hourly sales of ${n(items)} items, ${n(attempts)} attempts (${aging}).`,
      `Load: bench/load.ts, ${concurrency} connections, ${durationS} s a step, ${rounds} round(s), fresh and aged taking turns to go first; one service process (pool ${pool}) per database.`];
    console.error(lines[0]);
    const disks = { fresh: await disk(fresh.db.sql), aged: await disk(old.db.sql) };
    const bench = (target: typeof fresh): Bench => ({ dir, db: target.db, concurrency, pool, durationS, redisPid });
    for (const target of [fresh, old]) {
      await load(bench(target), `warm-up ${target.db.name} checkout`, 'checkout-only', [target.server], ['--duration', '3']);
      await load(bench(target), `warm-up ${target.db.name} purchase`, 'purchase-only', [target.server], ['--duration', '3', '--items', '15000']);
    }
    const rows: (string | number | null)[][] = [];
    const ratios = { checkout: [] as number[], purchase: [] as number[] };
    const postgresMs = (step: Step) => (step.cpu && step.rps ? Math.round((step.cpu.cores.postgres! * 1e6) / step.rps) / 1000 : null);
    for (let round = 1; round <= rounds; round += 1) {
      for (const endpoint of ['checkout', 'purchase'] as const) {
        const steps: Record<string, Step> = {};
        for (const target of round % 2 === 1 ? [fresh, old] : [old, fresh]) {
          // codes for 12,000 purchases a second: a run that uses them all up stops early, and its rate stands
          const codes = endpoint === 'purchase' ? ['--items', String(Math.max(20_000, 12_000 * durationS))] : [];
          steps[target === fresh ? 'fresh' : 'aged'] = await load(bench(target), `${endpoint} ${target.db.name} ${round}`, `${endpoint}-only`, [target.server], ['--duration', String(durationS), ...codes]);
        }
        const [f, a] = [steps.fresh!, steps.aged!];
        ratios[endpoint].push(a.rps! / f.rps!);
        rows.push([`${endpoint}-only`, round, f.rps, a.rps, `${((100 * a.rps!) / f.rps!).toFixed(1)}%${[f, a].filter((s) => !s.ok).map((s) => `; ${s.label} FAILED`).join('')}`, `${postgresMs(f)} / ${postgresMs(a)}`]);
      }
    }
    const mean = (values: number[]) => ((100 * values.reduce((sum, value) => sum + value, 0)) / values.length).toFixed(1);
    lines.push('', table(['step', 'round', 'fresh req/s', 'aged req/s', 'aged/fresh', 'PostgreSQL CPU ms per request, fresh / aged'], rows),
      '', `Aged/fresh over the rounds: checkout ${mean(ratios.checkout)}%, purchase ${mean(ratios.purchase)}% (goal: at least 90%).`);

    lines.push('', ...(await listing(old, fresh, await start(old.db, 'aged-unshared', { SALES_SNAPSHOT_MS: '1', REDIS_KEY_PREFIX: `${old.db.prefix}unshared:` }), sales, items, listed)));

    const growth = (name: string) => disks.aged.get(name)!.bytes - disks.fresh.get(name)!.bytes;
    const month = growth('checkout_attempts') * (15_000_000 / attempts) + (growth('items') + growth('sale_buyers') + growth('sales')) * (7_200_000 / (sales * items));
    lines.push('', 'Disk, after aging and before the load:', '',
      table(['relation', 'aged rows', 'aged', 'fresh', 'bytes per row, aged'], [...disks.aged].map(([name, row]) => [name, row.rows, mb(row.bytes), mb(disks.fresh.get(name)!.bytes), row.rows ? Math.round(row.bytes / row.rows) : ''])),
      '', `A month: ${mb(growth('database'))} here (the aged database less the fresh one); scaled to 720 sales of 10,000 items and 15 million attempts, ${(month / 2 ** 30).toFixed(2)} GB.`);

    started = performance.now();
    const audit = await old.db.sql.begin(async (tx) => {
      await tx.unsafe(`set local statement_timeout = '${auditS}s'`);
      return auditSales(tx as unknown as Sql);
    }).catch((error: { code?: string }) => (error.code === '57014' ? null : Promise.reject(error)));
    const broken = (audit ?? []).flatMap((sale) => violations(sale).map((problem) => `sale ${sale.saleId}: ${problem}`));
    lines.push('', audit === null ? `Audit of the aged database: given up after ${auditS} s (AGED_AUDIT_S).`
      : `Audit of the aged database (${n(audit.length)} sales, ${seconds(started)} s): ${broken.length === 0 ? 'clean' : `${broken.length} violations: ${broken.slice(0, 10).join('; ')}`}.`);
    await writeSection('aged', lines.join('\n'));
  } finally {
    await Promise.all(services.map((service) => stopChild(service, 6_000)));
    for (const db of dbs) await db.drop().catch((error: Error) => console.error(`could not drop ${db.name}: ${error.message}`));
  }
}

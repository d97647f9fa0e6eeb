// Fault injection against real service processes sharing one fresh database per test: Redis killed and
// restarted under load, PostgreSQL connections cut under load, an instance SIGKILLed under load, an
// instance SIGTERMed with slow requests in flight, and instances whose clocks disagree by 14 seconds.
// Every load client retries a purchase whose answer was lost (503 or a network error) with the SAME code
// until it hears a final answer; afterwards every 200 it heard must be exactly one sold item in the
// database, every sold item must be one 200 it heard, and the invariant audit must be clean.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import { after, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { Pool } from 'undici';
import { auditSales, violations } from '../src/audit.ts';
import { messages } from '../src/errors.ts';
import type { Sql } from '../src/db.ts';
import {
  cleanUp, createDatabase, dropRedisPrefix, freePort, limitsNeverReached, readJson, startInstance, startRedisServer, testEnv, uniquePrefix, type Instance, type TestDatabase,
} from './helpers.ts';

const skewedClockPath = fileURLToPath(new URL('./fixtures/skewed-clock.ts', import.meta.url));
const saleSize = 10_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function exited(child: ChildProcess): Promise<void> {
  return alive(child) ? new Promise((resolve) => child.once('exit', () => resolve())) : Promise.resolve();
}

async function within<T>(work: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// Every resource a test makes, so that it is released after the test whatever happened, and every child
// process killed even if the runner dies before after().

const allChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of allChildren) if (alive(child)) child.kill('SIGKILL');
});

// The test's own connection to its database: application_name 'flash-test', so that cutting the
// service's connections ('flash-sale') never cuts it. Numbers as the service reads them.
type TestSql = postgres.Sql<{ bigint: number }>;

function testSql(url: string, max = 4): TestSql {
  return postgres(url, {
    max,
    onnotice: () => {},
    connect_timeout: 5,
    connection: { application_name: 'flash-test' },
    types: {
      bigint: { to: 20, from: [20], serialize: (value: number) => String(value), parse: (value: string) => Number(value) },
    },
  });
}

type Scope = {
  db: TestDatabase;
  sql: TestSql;
  prefix: string;
  instances: Instance[];
  redisServers: ChildProcess[];
  pools: Pool[];
  closed: boolean;
};

const scopes: Scope[] = [];

async function openScope(t: TestContext): Promise<Scope> {
  const db = await createDatabase();
  const scope: Scope = { db, sql: testSql(db.url), prefix: uniquePrefix(), instances: [], redisServers: [], pools: [], closed: false };
  scopes.push(scope);
  t.after(() => closeScope(scope));
  return scope;
}

async function closeScope(scope: Scope): Promise<void> {
  if (scope.closed) return;
  scope.closed = true;
  await cleanUp([
    () => Promise.all(scope.pools.map((pool) => pool.destroy())),
    () =>
      Promise.all(
        [...scope.instances.map((instance) => instance.child), ...scope.redisServers].map(async (child) => {
          if (alive(child)) child.kill('SIGKILL');
          await within(exited(child), 5000);
        }),
      ),
    () => scope.sql.end({ timeout: 5 }),
    () => scope.db.drop(),
    () => dropRedisPrefix(scope.prefix),
  ]);
}

// Whatever a test could not release (it is idempotent: closed scopes are skipped).
after(async () => {
  for (const scope of scopes) await closeScope(scope).catch((error: unknown) => console.error('cleanup failed', error));
});

async function start(scope: Scope, env: Record<string, string>, count: number): Promise<Instance[]> {
  const started = await Promise.allSettled(Array.from({ length: count }, () => startInstance(env)));
  const instances: Instance[] = [];
  for (const result of started) {
    if (result.status === 'fulfilled') {
      allChildren.add(result.value.child);
      scope.instances.push(result.value);
      instances.push(result.value);
    }
  }
  const failed = started.find((result) => result.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return instances;
}

function logs(scope: Scope): string {
  return scope.instances.map((instance, index) => `--- instance ${index} (port ${instance.port}) ---\n${instance.output().slice(-3000)}`).join('\n');
}

// A throwaway Redis of our own on `port`, ready once it answers PING.
async function startRedis(scope: Scope, port: number): Promise<ChildProcess> {
  const server = await startRedisServer(port);
  allChildren.add(server);
  scope.redisServers.push(server);
  return server;
}

// Resolves with the error code of a TCP connect to `port` ('connected' when something accepted it).
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = netConnect({ port, host: '127.0.0.1' });
    socket.setTimeout(1000, () => {
      socket.destroy();
      resolve('timeout');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
  });
}

// ---------------------------------------------------------------------------------------------
// HTTP: one undici pool per instance; every request bounded; network errors are answers of their own.

type Json = Record<string, unknown>;
type Target = { name: string; instance: Instance; pool: Pool; down: boolean; downAt?: number };
type Answer = {
  op: string;
  target: string;
  path: string;
  startedAt: number;
  endedAt: number;
  status: number; // 0: no HTTP answer (network error or timeout)
  network?: string;
  timedOut?: boolean;
  body: Json;
  connection?: string;
};

const timeoutCodes = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'TimeoutError', 'AbortError']);

// keepAliveMs: how long the client keeps an idle connection open (undici's default is 4 s; browsers and
// proxies keep theirs for a minute or more).
function makeTarget(scope: Scope, instance: Instance, name: string, options: { connections?: number; keepAliveMs?: number } = {}): Target {
  const keepAliveTimeout = options.keepAliveMs ?? 4000;
  const pool = new Pool(instance.url, {
    connections: options.connections ?? 64,
    connectTimeout: 2000,
    keepAliveTimeout,
    keepAliveMaxTimeout: Math.max(keepAliveTimeout, 600_000),
  });
  scope.pools.push(pool);
  return { name, instance, pool, down: false };
}

async function send(target: Target, op: string, method: 'GET' | 'POST', path: string, timeoutMs: number): Promise<Answer> {
  const startedAt = Date.now();
  try {
    const response = await target.pool.request({
      method,
      path,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      signal: AbortSignal.timeout(timeoutMs + 500),
    });
    const body = await readJson<Json>(response.body);
    const connection = response.headers.connection;
    return { op, target: target.name, path, startedAt, endedAt: Date.now(), status: response.statusCode, body, connection: typeof connection === 'string' ? connection : undefined };
  } catch (error) {
    const { code, name, message } = error as { code?: string; name?: string; message?: string };
    const network = code ?? name ?? String(message);
    return { op, target: target.name, path, startedAt, endedAt: Date.now(), status: 0, network, timedOut: timeoutCodes.has(network) || timeoutCodes.has(name ?? ''), body: {} };
  }
}

const describeAnswer = (answer: Answer) =>
  `${answer.op} ${answer.path} on ${answer.target} -> ${answer.status === 0 ? `network error ${answer.network}` : `${answer.status} ${JSON.stringify(answer.body)}`} after ${answer.endedAt - answer.startedAt} ms`;

// ---------------------------------------------------------------------------------------------
// The load: simulated buyers doing checkout → purchase in a bounded loop. A purchase whose answer was lost
// (503, network error) is retried with the same code, on another live instance, until a final answer.

type PurchaseRecord = { code: string; userId: string; itemId: number; saleId: number; tries: Answer[]; final?: Answer };

type LoadOptions = {
  tag: string;
  targets: Target[]; // read on every pick: the test may add targets while the load runs
  items: number[];
  buyers: number;
  durationMs: number;
  stop?: () => boolean; // ends the load early (checked with the duration)
  timeoutMs: number;
  // A network error (not a timeout) takes the target out of the rotation: it died or is draining.
  markDownOnNetworkError: boolean;
  retryForMs: number;
  thinkMs: number;
};

type Load = { answers: Answer[]; purchases: PurchaseRecord[]; startedAt: number; endedAt: number; done: Promise<void> };

function startLoad(options: LoadOptions): Load {
  const load: Load = { answers: [], purchases: [], startedAt: Date.now(), endedAt: 0, done: Promise.resolve() };
  const endAt = load.startedAt + options.durationMs;
  const finished = () => Date.now() >= endAt || (options.stop?.() ?? false);
  let turn = 0;

  const pick = (avoid?: Target): Target | undefined => {
    const live = options.targets.filter((target) => !target.down);
    const others = live.filter((target) => target !== avoid);
    const choices = others.length > 0 ? others : live;
    if (choices.length === 0) return undefined;
    return choices[turn++ % choices.length];
  };

  const call = async (target: Target, op: string, path: string): Promise<Answer> => {
    const answer = await send(target, op, 'POST', path, options.timeoutMs);
    load.answers.push(answer);
    if (answer.status === 0 && !answer.timedOut && options.markDownOnNetworkError && !target.down) {
      target.down = true;
      target.downAt = Date.now();
    }
    return answer;
  };

  const lost = (answer: Answer) => answer.status === 0 || answer.status === 503;

  async function buyer(index: number): Promise<void> {
    let attempts = 0;
    while (!finished()) {
      if (options.thinkMs > 0) await sleep(Math.random() * options.thinkMs);
      // Each user makes up to 13 purchase attempts: the last ones meet the per-user limit of 10.
      const userId = `${options.tag}-b${index}-u${Math.floor(attempts / 13)}`;
      const itemId = options.items[Math.floor(Math.random() * options.items.length)]!;
      const target = pick();
      if (!target) {
        await sleep(50);
        continue;
      }
      const checkout = await call(target, 'checkout', `/checkout?user_id=${userId}&id=${itemId}`);
      if (checkout.status !== 200) {
        if (lost(checkout)) await sleep(50);
        continue;
      }
      attempts += 1;
      const record: PurchaseRecord = { code: checkout.body.code as string, userId, itemId, saleId: checkout.body.sale_id as number, tries: [] };
      load.purchases.push(record);
      // Bounded: the same code again and again until a final answer, or the retry window closes.
      const retryUntil = Date.now() + options.retryForMs;
      let previous: Target | undefined;
      for (;;) {
        const next = pick(previous);
        if (!next) {
          if (Date.now() > retryUntil) break;
          await sleep(50);
          continue;
        }
        const answer = await call(next, 'purchase', `/purchase?code=${record.code}`);
        record.tries.push(answer);
        if (!lost(answer)) {
          record.final = answer;
          break;
        }
        if (Date.now() > retryUntil) break;
        previous = next;
        await sleep(100);
      }
    }
  }

  load.done = Promise.all(Array.from({ length: options.buyers }, (_, index) => buyer(index))).then(() => {
    load.endedAt = Date.now();
  });
  return load;
}

function tally(answers: Answer[]): string {
  const counts = new Map<string, number>();
  for (const answer of answers) {
    const key = `${answer.op} ${answer.status === 0 ? `network:${answer.network}` : `${answer.status}${answer.body.error ? ` ${answer.body.error as string}` : ''}`}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts.entries()].sort().map(([key, value]) => `${key}: ${value}`).join(', ');
}

// The answers a checkout or purchase may give under these tests (besides the lost ones, judged per test).
const finalAnswers: Record<string, string[]> = {
  checkout: ['200', '409 item_sold'],
  purchase: ['200', '409 item_sold', '429 limit_reached'],
};

function unexpectedAnswers(answers: Answer[]): Answer[] {
  return answers.filter((answer) => {
    if (answer.status === 0 || answer.status === 503) return false;
    const key = answer.status === 200 ? '200' : `${answer.status} ${answer.body.error as string}`;
    return !finalAnswers[answer.op]!.includes(key);
  });
}

type SoldRow = { id: number; buyerId: string; code: string; soldAt: Date; saleId: number };

// What the client heard against what the database holds: every 200 is exactly one sold item with that
// buyer, code and time; every sold item (of this load's users) is one 200; refused codes bought nothing.
async function checkPurchases(sql: TestSql, load: Load): Promise<{ bought: number; retried: number; replayedAfterLoss: number; unresolved: number }> {
  const tag = load.purchases[0]?.userId.split('-')[0];
  assert.ok(tag, 'the load made purchases');
  const rows = await sql<SoldRow[]>`
    select id, buyer_id as "buyerId", purchase_code as code, sold_at as "soldAt", sale_id as "saleId"
    from items where buyer_id like ${`${tag}-%`}`;
  const soldByCode = new Map(rows.map((row) => [row.code, row]));
  const problems: string[] = [];
  const heard = new Set<string>();
  let retried = 0;
  let replayedAfterLoss = 0;
  const unresolved = load.purchases.filter((record) => !record.final);

  for (const record of load.purchases) {
    if (record.tries.length > 1) retried += 1;
    const row = soldByCode.get(record.code);
    const final = record.final;
    if (!final) continue;
    // Every 200 this code ever got (only the final one, since the client stops there) must match.
    if (final.status === 200) {
      heard.add(record.code);
      const body = final.body;
      if (body.message !== 'Purchase successful' || body.code !== record.code || body.item_id !== record.itemId || body.user_id !== record.userId) {
        problems.push(`code ${record.code}: 200 with a foreign receipt ${JSON.stringify(body)}`);
      }
      if (!row) {
        problems.push(`code ${record.code}: 200 for item ${record.itemId} but nothing sold with that code (lost purchase)`);
      } else {
        if (row.id !== record.itemId || row.buyerId !== record.userId) problems.push(`code ${record.code}: the database sold item ${row.id} to ${row.buyerId}`);
        if (row.soldAt.toISOString() !== body.purchased_at) {
          problems.push(`code ${record.code}: purchased_at ${body.purchased_at as string} but sold at ${row.soldAt.toISOString()} (a second sale?)`);
        }
        // The first attempt's answer was lost, yet it had bought the item: the retry replayed that receipt.
        if (record.tries.length > 1 && row.soldAt.getTime() < record.tries.at(-1)!.startedAt - 5) replayedAfterLoss += 1;
      }
    } else if (row) {
      problems.push(`code ${record.code}: final answer ${final.status} ${final.body.error as string} although it bought item ${row.id}`);
    }
  }
  for (const row of rows) {
    if (!heard.has(row.code)) problems.push(`item ${row.id} sold to ${row.buyerId} with code ${row.code}, which the client never heard succeed`);
  }
  assert.deepEqual(problems.slice(0, 20), [], `${problems.length} purchases disagree with the database`);
  assert.equal(rows.length, heard.size);
  return { bought: rows.length, retried, replayedAfterLoss, unresolved: unresolved.length };
}

async function assertAuditClean(sql: TestSql): Promise<void> {
  const report = await auditSales(sql as unknown as Sql);
  assert.ok(report.length > 0, 'the audit sees at least one sale');
  const problems = report.flatMap((sale) => violations(sale).map((problem) => `sale ${sale.saleId}: ${problem}`));
  assert.deepEqual(problems, []);
  // The buyer counts agree with the items, seen from the other side too.
  const [counts] = await sql<{ rows: number; bought: number; items: number }[]>`
    select (select count(*) from sale_buyers) as rows,
           (select coalesce(sum(bought), 0) from sale_buyers)::int as bought,
           (select count(*) from items where buyer_id is not null) as items`;
  assert.equal(counts!.bought, counts!.items, 'sale_buyers counts every sold item once');
}

async function saleItems(sql: TestSql): Promise<{ saleId: number; items: number[] }> {
  const [sale] = await sql<{ id: number }[]>`select id from sales order by starts_at desc limit 1`;
  assert.ok(sale, 'a running instance opened the current sale');
  const rows = await sql<{ id: number }[]>`select id from items where sale_id = ${sale.id} order by id`;
  assert.equal(rows.length, saleSize);
  return { saleId: sale.id, items: rows.map((row) => row.id) };
}

function report(t: TestContext, name: string, load: Load, extra: string): void {
  const line = `${name}: ${load.answers.length} requests in ${((load.endedAt - load.startedAt) / 1000).toFixed(1)} s (${tally(load.answers)}); ${extra}`;
  t.diagnostic(line);
  console.log(line);
}

// ---------------------------------------------------------------------------------------------

test('Redis killed and restarted during a load run: every request answered correctly, /health follows Redis', { timeout: 60_000 }, async (t) => {
  const scope = await openScope(t);
  const redisPort = await freePort();
  await startRedis(scope, redisPort);
  // With the rate limits on (never reached), every request counts in Redis: Redis is on its path.
  const env = testEnv(scope.db, scope.prefix, { REDIS_URL: `redis://127.0.0.1:${redisPort}`, ...limitsNeverReached });
  const targets = (await start(scope, env, 2)).map((instance, index) => makeTarget(scope, instance, `i${index}`));

  type Sample = { target: string; startedAt: number; endedAt: number; status: number; redis?: string; database?: string };
  const samples: Sample[] = [];
  const probe = async (target: Target): Promise<Sample> => {
    const answer = await send(target, 'health', 'GET', '/health', 2000);
    const sample = { target: target.name, startedAt: answer.startedAt, endedAt: answer.endedAt, status: answer.status, redis: answer.body.redis as string | undefined, database: answer.body.database as string | undefined };
    samples.push(sample);
    return sample;
  };
  // Redis connects in the background: both report ok before the run.
  for (const target of targets) {
    const deadline = Date.now() + 10_000;
    while ((await probe(target)).status !== 200 && Date.now() < deadline) await sleep(100);
  }
  samples.length = 0;

  const { items } = await saleItems(scope.sql);
  const tag = `r${randomBytes(3).toString('hex')}`;
  const load = startLoad({ tag, targets, items, buyers: 30, durationMs: 8000, timeoutMs: 5000, markDownOnNetworkError: false, retryForMs: 10_000, thinkMs: 10 });

  let polling = true;
  const poller = (async () => {
    const deadline = Date.now() + 30_000;
    while (polling && Date.now() < deadline) {
      await Promise.all(targets.map(probe));
      await sleep(250);
    }
  })();

  let killedAt = 0;
  let restartedAt = 0;
  try {
    await sleep(2000);
    const redis = scope.redisServers[0]!;
    redis.kill('SIGKILL');
    await exited(redis);
    killedAt = Date.now();
    await sleep(3000);
    await startRedis(scope, redisPort);
    restartedAt = Date.now();
    await load.done;
    // Keep polling until both report Redis ok again (bounded), then a little longer.
    const deadline = Date.now() + 10_000;
    const recovered = (name: string) => samples.some((sample) => sample.target === name && sample.startedAt > restartedAt && sample.redis === 'ok');
    while (!targets.every((target) => recovered(target.name)) && Date.now() < deadline) await sleep(100);
    await sleep(600);
  } finally {
    polling = false;
    await poller;
    await load.done;
  }

  // Every request answered, promptly, with one of the answers the API allows; nothing lost.
  const noAnswer = load.answers.filter((answer) => answer.status === 0);
  assert.deepEqual(noAnswer.slice(0, 5).map(describeAnswer), [], `${noAnswer.length} requests without an answer\n${logs(scope)}`);
  const serverErrors = load.answers.filter((answer) => answer.status >= 500);
  assert.deepEqual(serverErrors.slice(0, 5).map(describeAnswer), [], `${serverErrors.length} server errors\n${logs(scope)}`);
  assert.deepEqual(unexpectedAnswers(load.answers).slice(0, 5).map(describeAnswer), []);
  const during = load.answers.filter((answer) => answer.startedAt >= killedAt && answer.endedAt <= restartedAt);
  assert.ok(during.filter((answer) => answer.status === 200).length >= 50, `only ${during.length} requests answered during the outage`);
  for (const target of targets) assert.ok(load.answers.some((answer) => answer.target === target.name && answer.status === 200), `${target.name} served`);

  // /health: ok before, "error" for Redis throughout the outage, ok again after it came back; the database always ok.
  for (const target of targets) {
    const mine = samples.filter((sample) => sample.target === target.name);
    const show = JSON.stringify(mine.map((sample) => [sample.startedAt - load.startedAt, sample.status, sample.redis]));
    assert.ok(mine.every((sample) => sample.database === 'ok'), `database reported down on ${target.name}: ${show}`);
    const before = mine.filter((sample) => sample.endedAt < killedAt);
    assert.ok(before.length >= 3 && before.every((sample) => sample.status === 200 && sample.redis === 'ok'), `before the outage on ${target.name}: ${show}`);
    const outage = mine.filter((sample) => sample.startedAt >= killedAt + 250 && sample.endedAt <= restartedAt);
    assert.ok(outage.length >= 3, `only ${outage.length} health samples during the outage on ${target.name}`);
    assert.ok(outage.every((sample) => sample.status === 503 && sample.redis === 'error'), `during the outage on ${target.name}: ${show}`);
    const firstOk = mine.findIndex((sample) => sample.startedAt > restartedAt && sample.redis === 'ok');
    assert.ok(firstOk >= 0, `Redis never reported ok again on ${target.name}: ${show}`);
    assert.ok(mine[firstOk]!.endedAt - restartedAt < 6000, `Redis reported ok only ${mine[firstOk]!.endedAt - restartedAt} ms after the restart on ${target.name}`);
    assert.ok(mine.slice(firstOk).every((sample) => sample.status === 200 && sample.redis === 'ok'), `after recovery on ${target.name}: ${show}`);
  }

  const outcome = await checkPurchases(scope.sql, load);
  assert.equal(outcome.unresolved, 0);
  assert.equal(outcome.retried, 0, 'no purchase needed a retry');
  await assertAuditClean(scope.sql);
  report(t, 'redis outage', load, `${outcome.bought} items bought, ${during.length} requests during the outage, lost 0`);
});

test('PostgreSQL connections cut during a load run: 503 or success, pools recover, retries replay the receipt', { timeout: 60_000 }, async (t) => {
  const scope = await openScope(t);
  const env = testEnv(scope.db, scope.prefix);
  const targets = (await start(scope, env, 2)).map((instance, index) => makeTarget(scope, instance, `i${index}`));
  const { items } = await saleItems(scope.sql);
  // One connection for the cuts, named differently from the service's.
  const cutter = testSql(scope.db.url, 1);
  t.after(() => cutter.end({ timeout: 5 }));
  const [me] = await cutter<{ name: string }[]>`select current_setting('application_name') as name`;
  assert.equal(me!.name, 'flash-test');

  const tag = `p${randomBytes(3).toString('hex')}`;
  const load = startLoad({ tag, targets, items, buyers: 30, durationMs: 7500, timeoutMs: 4000, markDownOnNetworkError: false, retryForMs: 10_000, thinkMs: 10 });
  const cuts: { at: number; pids: number[] }[] = [];
  try {
    await sleep(1500);
    for (let cut = 0; cut < 3; cut += 1) {
      const rows = await cutter<{ pid: number; terminated: boolean }[]>`
        select pid, pg_terminate_backend(pid) as terminated from pg_stat_activity
        where datname = ${scope.db.name} and application_name = 'flash-sale' and pid <> pg_backend_pid()`;
      cuts.push({ at: Date.now(), pids: rows.filter((row) => row.terminated).map((row) => row.pid) });
      if (cut < 2) await sleep(1000);
    }
  } finally {
    await load.done;
  }
  const lastCut = cuts.at(-1)!.at;
  assert.ok(cuts.every((cut) => cut.pids.length >= 2), `every cut terminated the instances' connections: ${JSON.stringify(cuts.map((cut) => cut.pids.length))}`);
  // The cutter itself survived all three.
  assert.equal((await cutter<{ one: number }[]>`select 1 as one`)[0]!.one, 1);

  // Never a hang, never a network error, never a 500: a success, a final refusal, or a clean 503.
  const noAnswer = load.answers.filter((answer) => answer.status === 0);
  assert.deepEqual(noAnswer.slice(0, 5).map(describeAnswer), [], `${noAnswer.length} requests without an answer (hang or dropped connection)\n${logs(scope)}`);
  const bad5xx = load.answers.filter((answer) => answer.status >= 500 && !(answer.status === 503 && answer.body.error === 'database_unavailable'));
  assert.deepEqual(bad5xx.slice(0, 5).map(describeAnswer), [], `${bad5xx.length} server errors other than 503 database_unavailable\n${logs(scope)}`);
  assert.deepEqual(unexpectedAnswers(load.answers).slice(0, 5).map(describeAnswer), []);
  const unavailable = load.answers.filter((answer) => answer.status === 503);
  for (const answer of unavailable) assert.equal(answer.body.message, messages.databaseUnavailable());

  // The pools recover by themselves: two seconds after the last cut, everything succeeds again.
  const late = load.answers.filter((answer) => answer.startedAt > lastCut + 2000);
  assert.deepEqual(late.filter((answer) => answer.status === 503).slice(0, 5).map(describeAnswer), [], `still failing 2 s after the last cut\n${logs(scope)}`);
  for (const target of targets) {
    const firstOk = load.answers.find((answer) => answer.target === target.name && answer.startedAt > lastCut && answer.status === 200);
    assert.ok(firstOk && firstOk.endedAt - lastCut < 3000, `${target.name} did not serve a 200 within 3 s of the last cut`);
    assert.ok(late.filter((answer) => answer.target === target.name && answer.status === 200).length >= 20, `${target.name} served little after recovery`);
  }
  // New connections: none of the service's backends now is one that was cut.
  const cutPids = new Set(cuts.flatMap((cut) => cut.pids));
  const nowPids = await cutter<{ pid: number }[]>`
    select pid from pg_stat_activity where datname = ${scope.db.name} and application_name = 'flash-sale'`;
  assert.ok(nowPids.length > 0 && nowPids.every((row) => !cutPids.has(row.pid)), 'the pools reconnected with new backends');

  // Every purchase that lost its answer was retried with its code until a final answer, which agrees
  // with the database (same receipt when the lost attempt had bought the item; never a second item).
  const outcome = await checkPurchases(scope.sql, load);
  assert.equal(outcome.unresolved, 0, 'every purchase reached a final answer');
  await assertAuditClean(scope.sql);
  report(
    t,
    'postgres cuts',
    load,
    `${cuts.map((cut) => cut.pids.length).join('+')} backends cut, ${unavailable.length} answered 503, ${outcome.retried} purchases retried ` +
      `(${outcome.replayedAfterLoss} replayed a receipt whose first answer was lost), ${outcome.bought} items bought, lost 0`,
  );
});

test('an instance SIGKILLed during a load run: nothing half-sold, the others keep serving, a restart joins in', { timeout: 60_000 }, async (t) => {
  const scope = await openScope(t);
  const env = testEnv(scope.db, scope.prefix);
  const targets = (await start(scope, env, 3)).map((instance, index) => makeTarget(scope, instance, `i${index}`));
  const { items } = await saleItems(scope.sql);
  const victim = targets[0]!;
  const survivors = targets.slice(1);

  const tag = `k${randomBytes(3).toString('hex')}`;
  let joinedAt = 0;
  const load = startLoad({
    tag,
    targets,
    items,
    buyers: 30,
    durationMs: 20_000,
    stop: () => joinedAt > 0 && Date.now() > joinedAt + 2500,
    timeoutMs: 5000,
    markDownOnNetworkError: true,
    retryForMs: 10_000,
    thinkMs: 10,
  });
  let killedAt = 0;
  let restarted: Target | undefined;
  try {
    await sleep(2000);
    victim.instance.child.kill('SIGKILL');
    killedAt = Date.now();
    await exited(victim.instance.child);
    assert.equal(victim.instance.child.signalCode, 'SIGKILL');
    const [again] = await start(scope, env, 1);
    restarted = makeTarget(scope, again!, 'restarted');
    targets.push(restarted);
    joinedAt = Date.now();
  } finally {
    await load.done;
  }

  // Network errors only from the killed instance, only once it was killed; no 5xx anywhere.
  const noAnswer = load.answers.filter((answer) => answer.status === 0);
  const wrongErrors = noAnswer.filter((answer) => answer.target !== victim.name || answer.endedAt < killedAt || answer.timedOut);
  assert.deepEqual(wrongErrors.slice(0, 5).map(describeAnswer), [], `network errors that the kill does not explain\n${logs(scope)}`);
  const serverErrors = load.answers.filter((answer) => answer.status >= 500);
  assert.deepEqual(serverErrors.slice(0, 5).map(describeAnswer), [], `${serverErrors.length} server errors\n${logs(scope)}`);
  assert.deepEqual(unexpectedAnswers(load.answers).slice(0, 5).map(describeAnswer), []);
  assert.ok(victim.down, 'the client noticed the kill');

  // The others kept serving after the kill, and the restarted instance served once it joined.
  for (const target of [...survivors, restarted!]) {
    const served = load.answers.filter((answer) => answer.target === target.name && answer.startedAt > killedAt && answer.status === 200);
    assert.ok(served.length >= 20, `${target.name} answered ${served.length} requests with 200 after the kill`);
  }
  const victimOk = load.answers.filter((answer) => answer.target === victim.name && answer.status === 200).length;
  assert.ok(victimOk > 0, 'the victim served before it was killed');

  // Whatever the victim was doing: the client's retries on the others settled it, and the database agrees.
  const outcome = await checkPurchases(scope.sql, load);
  assert.equal(outcome.unresolved, 0, 'every purchase reached a final answer');
  await assertAuditClean(scope.sql);
  const onRestarted = load.answers.filter((answer) => answer.target === 'restarted').length;
  report(
    t,
    'instance SIGKILL',
    load,
    `${noAnswer.length} network errors on the killed instance, ${outcome.retried} purchases retried elsewhere ` +
      `(${outcome.replayedAfterLoss} replayed a receipt the victim had committed), ${onRestarted} requests to the restarted instance, ${outcome.bought} items bought, lost 0`,
  );
});

test('SIGTERM during load: in-flight and slow requests finish normally, new connections are refused, exit 0 within the grace', { timeout: 60_000 }, async (t) => {
  const graceMs = 5000;
  const holdMs = 1500;
  const scope = await openScope(t);
  // The held row lock makes purchases slow on purpose, longer than the default statement timeout and
  // queue budget allow (the purchases batched behind it wait too): this test is about the drain.
  const env = testEnv(scope.db, scope.prefix, {
    SHUTDOWN_GRACE_MS: String(graceMs),
    LOG_LEVEL: 'info',
    STATEMENT_TIMEOUT_MS: '30000',
    QUEUE_TIMEOUT_MS: '30000',
  });
  const targets = (await start(scope, env, 2)).map((instance, index) => makeTarget(scope, instance, `i${index}`));
  const [draining, other] = targets as [Target, Target];
  const { items } = await saleItems(scope.sql);
  const slowItems = items.slice(0, 4);
  const loadItems = items.slice(100);

  // Codes for the slow purchases, issued before anything happens.
  const slow: { userId: string; itemId: number; code: string }[] = [];
  for (const [index, itemId] of slowItems.entries()) {
    const userId = `slow-${index}`;
    const issued = await send(other, 'checkout', 'POST', `/checkout?user_id=${userId}&id=${itemId}`, 5000);
    assert.equal(issued.status, 200, describeAnswer(issued));
    slow.push({ userId, itemId, code: issued.body.code as string });
  }

  // Hold the slow items' rows: their purchases wait on the lock inside PostgreSQL.
  let release!: () => void;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const safety = setTimeout(() => release(), 15_000);
  t.after(() => {
    clearTimeout(safety);
    release();
  });
  let lockPid = 0;
  let locked!: () => void;
  const isLocked = new Promise<void>((resolve) => {
    locked = resolve;
  });
  const holder = scope.sql
    .begin(async (tx) => {
      const [row] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
      lockPid = row!.pid;
      await tx`select id from items where id in ${tx(slowItems)} for update`;
      locked();
      await released;
    })
    .catch((error: unknown) => error);

  const tag = `d${randomBytes(3).toString('hex')}`;
  let drainedAt = 0;
  const load = startLoad({
    tag,
    targets,
    items: loadItems,
    buyers: 20,
    durationMs: 15_000,
    stop: () => drainedAt > 0 && Date.now() > drainedAt + 1000,
    timeoutMs: 5000,
    markDownOnNetworkError: true,
    retryForMs: 10_000,
    thinkMs: 10,
  });

  let termAt = 0;
  let exitAt = 0;
  let exitCode: number | null | 'timeout';
  let refusedAt = 0;
  let slowAnswers: Answer[];
  try {
    await isLocked;
    // Each slow purchase on a connection of its own, to the instance about to drain, from a client that
    // keeps idle connections open for 30 s as browsers and proxies do: the drain must not wait for it.
    const slowTarget = makeTarget(scope, draining.instance, 'slow', { connections: slow.length, keepAliveMs: 30_000 });
    const slowRequests = slow.map((purchase) => send(slowTarget, 'purchase', 'POST', `/purchase?code=${purchase.code}`, 10_000));
    const deadline = Date.now() + 5000;
    for (;;) {
      const [waiting] = await scope.sql<{ count: number }[]>`
        select count(*) as count from pg_stat_activity
        where datname = ${scope.db.name} and application_name = 'flash-sale' and ${lockPid} = any(pg_blocking_pids(pid))`;
      // Batched purchases share a backend: at least one waits, and the rest queue behind it.
      if (waiting!.count >= 1) break;
      assert.ok(Date.now() < deadline, `the slow purchases never waited on the lock (${waiting!.count} waiting)`);
      await sleep(50);
    }
    await sleep(500); // the load runs against both with the slow requests parked

    const exit = new Promise<number | null>((resolve) =>
      draining.instance.child.once('exit', (code) => {
        exitAt = Date.now();
        resolve(code);
      }),
    );
    termAt = Date.now();
    draining.instance.child.kill('SIGTERM');

    // New connections are refused soon after, while the slow requests are still held.
    const refuseDeadline = Date.now() + 3000;
    while (Date.now() < refuseDeadline) {
      if ((await tryConnect(draining.instance.port)) === 'ECONNREFUSED') {
        refusedAt = Date.now();
        break;
      }
      await sleep(25);
    }
    await sleep(Math.max(0, termAt + holdMs - Date.now()));
    release();
    slowAnswers = await Promise.all(slowRequests);
    exitCode = await within(exit, graceMs + 1000);
    drainedAt = Date.now();
  } finally {
    release();
    await holder;
    await load.done;
  }

  const output = draining.instance.output();
  // The slow ones were in flight across the drain and finished with their normal answers.
  for (const [index, answer] of slowAnswers.entries()) {
    assert.equal(answer.status, 200, `slow purchase: ${describeAnswer(answer)}\n${output}`);
    assert.equal(answer.body.code, slow[index]!.code);
    assert.equal(answer.body.item_id, slow[index]!.itemId);
    assert.equal(answer.body.user_id, slow[index]!.userId);
    assert.ok(answer.endedAt >= termAt + holdMs, 'the slow purchase was held across the SIGTERM');
  }
  assert.ok(refusedAt > 0, `new connections were never refused after SIGTERM\n${output}`);
  assert.ok(refusedAt - termAt < 1000, `new connections refused only ${refusedAt - termAt} ms after SIGTERM`);
  assert.ok(refusedAt < Math.min(...slowAnswers.map((answer) => answer.endedAt)), 'the listener closed while requests were still draining');

  // The load: no 5xx; requests that were in flight at SIGTERM were answered normally; network errors only
  // from the draining instance once it closed (a request racing the close of an idle keep-alive
  // connection, or a new connection refused), and the client moved to the other instance.
  const serverErrors = load.answers.filter((answer) => answer.status >= 500);
  assert.deepEqual(serverErrors.slice(0, 5).map(describeAnswer), [], `${serverErrors.length} server errors\n${logs(scope)}`);
  assert.deepEqual(unexpectedAnswers(load.answers).slice(0, 5).map(describeAnswer), []);
  const inFlight = load.answers.filter((answer) => answer.target === draining.name && answer.startedAt < termAt && answer.endedAt >= termAt);
  const droppedInFlight = inFlight.filter((answer) => answer.status === 0 && answer.startedAt < termAt - 500);
  assert.deepEqual(droppedInFlight.map(describeAnswer), [], 'requests in flight at SIGTERM dropped');
  const noAnswer = load.answers.filter((answer) => answer.status === 0);
  const wrongErrors = noAnswer.filter((answer) => answer.target !== draining.name || answer.timedOut || answer.endedAt < termAt);
  assert.deepEqual(wrongErrors.slice(0, 5).map(describeAnswer), [], `network errors that the drain does not explain\n${output}`);
  const afterTerm = load.answers.filter((answer) => answer.target === other.name && answer.startedAt > termAt && answer.status === 200);
  assert.ok(afterTerm.length >= 20, `the other instance served ${afterTerm.length} requests after the SIGTERM`);
  const closeHeaders = load.answers.filter((answer) => answer.target === draining.name && answer.startedAt >= termAt && answer.status > 0);

  const outcome = await checkPurchases(scope.sql, load);
  assert.equal(outcome.unresolved, 0, 'every purchase reached a final answer');
  const bought = await scope.sql<{ id: number; buyerId: string }[]>`
    select id, buyer_id as "buyerId" from items where id in ${scope.sql(slowItems)} order by id`;
  assert.deepEqual(
    bought.map((row) => row.buyerId),
    slow.map((purchase) => purchase.userId),
  );
  await assertAuditClean(scope.sql);
  report(
    t,
    'SIGTERM drain',
    load,
    `${slow.length} slow purchases held ${holdMs} ms across the SIGTERM answered 200; ${inFlight.length} load requests in flight at SIGTERM ` +
      `(${inFlight.filter((answer) => answer.status > 0).length} answered); ${closeHeaders.length} answered after SIGTERM ` +
      `(${closeHeaders.filter((answer) => answer.connection === 'close').length} with Connection: close); refused ${refusedAt - termAt} ms and exited ${exitAt - termAt} ms after SIGTERM; ` +
      `${noAnswer.length} network errors retried elsewhere, ${outcome.bought + slow.length} items bought, lost 0; exit code ${exitCode}`,
  );

  // Last, so that everything above is checked even when the drain overruns: a clean exit within the grace.
  assert.equal(exitCode, 0, `exit code after SIGTERM (grace ${graceMs} ms)\n${output}`);
  assert.ok(exitAt - termAt < graceMs, `exited ${exitAt - termAt} ms after SIGTERM`);
  assert.match(output, /"msg":"draining"/);
  assert.match(output, /"msg":"stopped"/);
  assert.doesNotMatch(output, /grace period over/);
});

test('two instances whose clocks disagree by 14 s still open exactly one sale per 2-second boundary', { timeout: 60_000 }, async (t) => {
  const intervalSeconds = 2;
  const scope = await openScope(t);
  const [begin] = await scope.sql<{ boundary: number }[]>`
    select extract(epoch from sale_boundary(now(), ${intervalSeconds}))::float8 as boundary`;
  const nodeOptions = [process.env.NODE_OPTIONS, `--import ${skewedClockPath}`].filter(Boolean).join(' ');
  const skews = [7000, -7000];
  const startedWindows: { from: number; to: number; instance: Instance; skew: number }[] = [];
  for (const skew of skews) {
    const env = testEnv(scope.db, scope.prefix, {
      SALE_INTERVAL: String(intervalSeconds),
      LOG_LEVEL: 'info',
      NODE_OPTIONS: nodeOptions,
      CLOCK_SKEW_MS: skew > 0 ? `+${skew}` : String(skew),
    });
    const from = Date.now();
    const [instance] = await start(scope, env, 1);
    startedWindows.push({ from, to: Date.now(), instance: instance!, skew });
  }

  // The preload took effect: pino stamps each line with Date.now(), which must read the skewed clock.
  for (const { from, to, instance, skew } of startedWindows) {
    const listening = instance
      .output()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { time: number; msg: string })
      .find((line) => line.msg.startsWith('Server listening'));
    assert.ok(listening, `no "Server listening" line:\n${instance.output()}`);
    assert.ok(
      listening.time >= from + skew - 50 && listening.time <= to + skew + 50,
      `the instance with CLOCK_SKEW_MS=${skew} logged time ${listening.time}, real start window ${from}..${to}: the clock is not skewed`,
    );
  }

  // Both sell, whatever their clocks say.
  const targets = scope.instances.map((instance, index) => makeTarget(scope, instance, `skew${skews[index]}`));
  const [first] = await scope.sql<{ id: number }[]>`select id from items order by id limit 1`;
  for (const [index, target] of targets.entries()) {
    const itemId = first!.id + index * 10;
    const issued = await send(target, 'checkout', 'POST', `/checkout?user_id=skew-${index}&id=${itemId}`, 5000);
    assert.equal(issued.status, 200, describeAnswer(issued));
    const bought = await send(target, 'purchase', 'POST', `/purchase?code=${issued.body.code as string}`, 5000);
    assert.equal(bought.status, 200, describeAnswer(bought));
  }

  // About four boundaries pass while the two schedulers, 14 s apart, race.
  await sleep(8000);

  type SaleRow = { id: number; epoch: number; size: number; items: number; createdLagMs: number; future: boolean };
  const read = async () => {
    const sales = await scope.sql<SaleRow[]>`
      select s.id, extract(epoch from s.starts_at)::float8 as epoch, s.size,
             (select count(*) from items i where i.sale_id = s.id) as items,
             (extract(epoch from s.created_at - s.starts_at) * 1000)::float8 as "createdLagMs",
             s.starts_at > now() as future
      from sales s order by s.starts_at`;
    const [clock] = await scope.sql<{ boundary: number }[]>`
      select extract(epoch from sale_boundary(now(), ${intervalSeconds}))::float8 as boundary`;
    return { sales, boundary: clock!.boundary };
  };
  let state = await read();
  const deadline = Date.now() + 1500;
  while (state.sales.at(-1)?.epoch !== state.boundary && Date.now() < deadline) {
    await sleep(100);
    state = await read();
  }
  const { sales, boundary } = state;
  const context = `boundaries ${JSON.stringify(sales.map((sale) => [sale.epoch, Math.round(sale.createdLagMs)]))}, current ${boundary}\n${logs(scope)}`;
  assert.ok(sales.length >= 4, `expected at least 4 sales in ~9 s, got ${sales.length}\n${context}`);
  assert.ok(sales[0]!.epoch >= begin!.boundary, `a sale from before the test started\n${context}`);
  assert.equal(sales.at(-1)!.epoch, boundary, `the current boundary's sale is missing\n${context}`);
  for (const [index, sale] of sales.entries()) {
    assert.equal(sale.epoch % intervalSeconds, 0, `sale ${sale.id} is not on a boundary\n${context}`);
    assert.equal(sale.future, false, `sale ${sale.id} starts in the future by PostgreSQL's clock\n${context}`);
    assert.equal(sale.size, saleSize);
    assert.equal(sale.items, saleSize, `sale ${sale.id} has ${sale.items} items\n${context}`);
    if (index > 0) {
      assert.equal(sale.epoch - sales[index - 1]!.epoch, intervalSeconds, `gap or duplicate before sale ${sale.id}\n${context}`);
      assert.ok(sale.createdLagMs >= 0 && sale.createdLagMs < 1000, `sale ${sale.id} created ${sale.createdLagMs} ms after its boundary\n${context}`);
    }
  }
  const [totals] = await scope.sql<{ items: number }[]>`select count(*) as items from items`;
  assert.equal(totals!.items, saleSize * sales.length);
  await assertAuditClean(scope.sql);
  const line = `clock skew: ${sales.length} sales, one per ${intervalSeconds}-second boundary, created ${sales
    .slice(1)
    .map((sale) => Math.round(sale.createdLagMs))
    .join('/')} ms after their boundaries`;
  t.diagnostic(line);
  console.log(line);
});

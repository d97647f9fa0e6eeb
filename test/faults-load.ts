// What the fault tests (test/faults-*.test.ts) share: service processes sharing one fresh database per
// test, released after it whatever happened; HTTP targets; the buyers' load; and the checks after it.
// Every load client retries a purchase whose answer was lost (503 or a network error) with the SAME code
// until it hears a final answer; afterwards every 200 it heard must be exactly one sold item in the
// database, every sold item must be one 200 it heard, and the invariant audit must be clean.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { connect as netConnect } from 'node:net';
import { after, type TestContext } from 'node:test';
import postgres from 'postgres';
import { Pool } from 'undici';
import { auditSales, violations } from '../src/audit.ts';
import type { Sql } from '../src/db.ts';
import { cleanUp, createDatabase, dropRedisPrefix, readJson, startInstance, startRedisServer, uniquePrefix, type Instance, type TestDatabase } from './helpers.ts';

export const saleSize = 10_000;

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

export function exited(child: ChildProcess): Promise<void> {
  return alive(child) ? new Promise((resolve) => child.once('exit', () => resolve())) : Promise.resolve();
}

export async function within<T>(work: Promise<T>, ms: number): Promise<T | 'timeout'> {
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

export const allChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of allChildren) if (alive(child)) child.kill('SIGKILL');
});

// The test's own connection to its database: application_name 'flash-test', so that cutting the
// service's connections ('flash-sale') never cuts it. Numbers as the service reads them.
export type TestSql = postgres.Sql<{ bigint: number }>;

export function testSql(url: string, max = 4): TestSql {
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

export type Scope = {
  db: TestDatabase;
  sql: TestSql;
  prefix: string;
  instances: Instance[];
  redisServers: ChildProcess[];
  pools: Pool[];
  closed: boolean;
};

export const scopes: Scope[] = [];

export async function openScope(t: TestContext): Promise<Scope> {
  const db = await createDatabase();
  const scope: Scope = { db, sql: testSql(db.url), prefix: uniquePrefix(), instances: [], redisServers: [], pools: [], closed: false };
  scopes.push(scope);
  t.after(() => closeScope(scope));
  return scope;
}

export async function closeScope(scope: Scope): Promise<void> {
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

export async function start(scope: Scope, env: Record<string, string>, count: number): Promise<Instance[]> {
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

export function logs(scope: Scope): string {
  return scope.instances.map((instance, index) => `--- instance ${index} (port ${instance.port}) ---\n${instance.output().slice(-3000)}`).join('\n');
}

// A throwaway Redis of our own on `port`, ready once it answers PING.
export async function startRedis(scope: Scope, port: number): Promise<ChildProcess> {
  const server = await startRedisServer(port);
  allChildren.add(server);
  scope.redisServers.push(server);
  return server;
}

// Resolves with the error code of a TCP connect to `port` ('connected' when something accepted it).
export function tryConnect(port: number): Promise<string> {
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

export type Json = Record<string, unknown>;
export type Target = { name: string; instance: Instance; pool: Pool; down: boolean; downAt?: number };
export type Answer = {
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

export const timeoutCodes = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'TimeoutError', 'AbortError']);

// keepAliveMs: how long the client keeps an idle connection open (undici's default is 4 s; browsers and
// proxies keep theirs for a minute or more).
export function makeTarget(scope: Scope, instance: Instance, name: string, options: { connections?: number; keepAliveMs?: number } = {}): Target {
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

export async function send(target: Target, op: string, method: 'GET' | 'POST', path: string, timeoutMs: number): Promise<Answer> {
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

export const describeAnswer = (answer: Answer) =>
  `${answer.op} ${answer.path} on ${answer.target} -> ${answer.status === 0 ? `network error ${answer.network}` : `${answer.status} ${JSON.stringify(answer.body)}`} after ${answer.endedAt - answer.startedAt} ms`;

// ---------------------------------------------------------------------------------------------
// The load: simulated buyers doing checkout → purchase in a bounded loop. A purchase whose answer was lost
// (503, network error) is retried with the same code, on another live instance, until a final answer.

export type PurchaseRecord = { code: string; userId: string; itemId: number; saleId: number; tries: Answer[]; final?: Answer };

export type LoadOptions = {
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

export type Load = { answers: Answer[]; purchases: PurchaseRecord[]; startedAt: number; endedAt: number; done: Promise<void> };

export function startLoad(options: LoadOptions): Load {
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

export function tally(answers: Answer[]): string {
  const counts = new Map<string, number>();
  for (const answer of answers) {
    const key = `${answer.op} ${answer.status === 0 ? `network:${answer.network}` : `${answer.status}${answer.body.error ? ` ${answer.body.error as string}` : ''}`}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts.entries()].sort().map(([key, value]) => `${key}: ${value}`).join(', ');
}

// The answers a checkout or purchase may give under these tests (besides the lost ones, judged per test).
export const finalAnswers: Record<string, string[]> = {
  checkout: ['200', '409 item_sold'],
  purchase: ['200', '409 item_sold', '429 limit_reached'],
};

export function unexpectedAnswers(answers: Answer[]): Answer[] {
  return answers.filter((answer) => {
    if (answer.status === 0 || answer.status === 503) return false;
    const key = answer.status === 200 ? '200' : `${answer.status} ${answer.body.error as string}`;
    return !finalAnswers[answer.op]!.includes(key);
  });
}

export type SoldRow = { id: number; buyerId: string; code: string; soldAt: Date; saleId: number };

// What the client heard against what the database holds: every 200 is exactly one sold item with that
// buyer, code and time; every sold item (of this load's users) is one 200; refused codes bought nothing.
export async function checkPurchases(sql: TestSql, load: Load): Promise<{ bought: number; retried: number; replayedAfterLoss: number; unresolved: number }> {
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

export async function assertAuditClean(sql: TestSql): Promise<void> {
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

export async function saleItems(sql: TestSql): Promise<{ saleId: number; items: number[] }> {
  const [sale] = await sql<{ id: number }[]>`select id from sales order by starts_at desc limit 1`;
  assert.ok(sale, 'a running instance opened the current sale');
  const rows = await sql<{ id: number }[]>`select id from items where sale_id = ${sale.id} order by id`;
  assert.equal(rows.length, saleSize);
  return { saleId: sale.id, items: rows.map((row) => row.id) };
}

export function report(t: TestContext, name: string, load: Load, extra: string): void {
  const line = `${name}: ${load.answers.length} requests in ${((load.endedAt - load.startedAt) / 1000).toFixed(1)} s (${tally(load.answers)}); ${extra}`;
  t.diagnostic(line);
  console.log(line);
}

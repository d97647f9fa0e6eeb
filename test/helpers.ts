// Test fixtures: a fresh database per test file, a Redis key prefix of its own, the real app, and real
// service processes. Nothing here assumes a clean server: everything made is named uniquely and dropped.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { createClient } from 'redis';
import { freePort, limitsNeverReached } from '../bench/procs.ts';
import { buildApp } from '../src/app.ts';
import { createRedis } from '../src/redis.ts';
import { loadConfig, type Config } from '../src/config.ts';
import { connect, type Sql } from '../src/db.ts';
import { migrate } from '../src/migrate.ts';

export const adminUrl = process.env.TEST_DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const redisUrl = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const serverPath = fileURLToPath(new URL('../src/server.ts', import.meta.url));

export type TestDatabase = { url: string; name: string; sql: Sql; drop: () => Promise<void> };

// A database of its own, migrated (through a given migration, or all), dropped afterwards (with force:
// stray connections must not block it).
export async function createDatabase(options: { migrateThrough?: string } = {}): Promise<TestDatabase> {
  const name = `flash_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  await admin`create database ${admin(name)}`;
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const sql = connect(url.toString(), { max: 4 });
  await migrate(sql, { through: options.migrateThrough });
  return {
    url: url.toString(),
    name,
    sql,
    async drop() {
      await sql.end({ timeout: 5 });
      await admin`drop database if exists ${admin(name)} with (force)`;
      await admin.end({ timeout: 5 });
    },
  };
}

export function uniquePrefix(): string {
  return `flash-test:${process.pid}:${randomBytes(4).toString('hex')}:`;
}

// The environment an instance of the service gets in tests; every value can be overridden.
export function testEnv(database: { url: string }, prefix: string, overrides: Record<string, string> = {}) {
  return {
    DATABASE_URL: database.url,
    REDIS_URL: redisUrl,
    REDIS_KEY_PREFIX: prefix,
    LOG_LEVEL: 'warn',
    HOST: '127.0.0.1',
    // Tests send thousands of requests from one address; test/abuse.test.ts turns the limits on.
    RATE_LIMIT: 'off',
    ...overrides,
  };
}

export type TestApp = { app: ReturnType<typeof buildApp>; config: Config; close: () => Promise<void> };

// The same buildApp that server.ts uses, with the config read from the same variables.
export async function startApp(database: TestDatabase, prefix: string, overrides: Record<string, string> = {}): Promise<TestApp> {
  const config = loadConfig(testEnv(database, prefix, { LOG_LEVEL: 'silent', ...overrides }));
  const sql = connect(config.databaseUrl, { max: config.databasePoolMax, statementTimeoutMs: config.statementTimeoutMs });
  const redis = createRedis({ url: config.redisUrl, keyPrefix: config.redisKeyPrefix, timeoutMs: config.redisTimeoutMs, onError: () => {} });
  redis.start();
  const app = buildApp(config, { sql, readSql: sql, probeSql: sql, redis });
  await app.ready();
  return {
    app,
    config,
    async close() {
      await app.close();
      await redis.close();
      await sql.end({ timeout: 5 });
    },
  };
}

// The benchmark starts its processes on free ports, and with rate limits never reached, the same way.
export { freePort, limitsNeverReached };

export type Instance = { url: string; port: number; child: ChildProcess; output: () => string; stop: (signal?: NodeJS.Signals) => Promise<number | null> };

// A real service process (node src/server.ts), ready once /readyz answers 200 (PostgreSQL answers with
// every migration applied). /readyz reads nothing a test checks, and no rate limit counts it.
export async function startInstance(env: Record<string, string>, readyTimeoutMs = 30_000): Promise<Instance> {
  const port = await freePort();
  const child = spawn(process.execPath, [serverPath], {
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`instance exited early:\n${output}`);
    const ready = await fetch(`${url}/readyz`).then((response) => response.ok, () => false);
    if (ready) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`instance not ready in ${readyTimeoutMs} ms:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    url,
    port,
    child,
    output: () => output,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

export async function dropRedisPrefix(prefix: string, url = redisUrl): Promise<void> {
  const client = createClient({ url });
  await client.connect();
  try {
    for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 500 })) {
      if (keys.length > 0) await client.del(keys);
    }
  } finally {
    client.destroy();
  }
}

// The current sale's id, created if it is missing, through the same SQL function the service uses.
export async function currentSaleId(sql: Sql, size = 10_000, limit = 10, intervalSeconds = 3600): Promise<number> {
  const [row] = await sql<{ saleId: number }[]>`select sale_id as "saleId" from ensure_current_sale(${intervalSeconds}, ${size}, ${limit})`;
  return row!.saleId;
}

// Resolves with the exit code, or 'timeout' if the process is still running `ms` after SIGTERM.
export async function stopWithin(instance: Instance, ms: number): Promise<number | null | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  try {
    return await Promise.race([instance.stop('SIGTERM'), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function redisPings(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect({ port, host: '127.0.0.1' });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => done(data.toString().startsWith('+PONG')));
  });
}

// A throwaway redis-server of the test's own on `port` (the machine's shared one is never touched),
// ready when it answers PING. The caller kills it; it is killed here if it never gets ready.
export async function startRedisServer(port: number): Promise<ChildProcess> {
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  server.stdout!.on('data', (chunk) => (output += chunk));
  server.stderr!.on('data', (chunk) => (output += chunk));
  const deadline = Date.now() + 10_000;
  while (!(await redisPings(port))) {
    if (server.exitCode !== null || server.signalCode !== null || Date.now() > deadline) {
      server.kill('SIGKILL');
      throw new Error(`redis-server on ${port} did not start:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return server;
}

// One database, Redis prefix and app for a whole test file: made before its tests, dropped after them.
export function useTestApp(overrides: Record<string, string> = {}) {
  const fixture = { prefix: uniquePrefix() } as { prefix: string; database: TestDatabase; testApp: TestApp };
  before(async () => {
    fixture.database = await createDatabase();
    fixture.testApp = await startApp(fixture.database, fixture.prefix, overrides);
  });
  after(async () => {
    await fixture.testApp?.close();
    await fixture.database?.drop();
    await dropRedisPrefix(fixture.prefix);
  });
  return fixture;
}

// A response body read whole, as JSON; one that is not JSON (a proxy's page, a crash) becomes an error.
export async function readJson<T extends object>(body: { text: () => Promise<string> }): Promise<T> {
  const text = await body.text();
  try {
    return (text === '' ? {} : JSON.parse(text)) as T;
  } catch {
    return { error: 'not_json', message: text.slice(0, 200) } as T;
  }
}

// Runs every clean-up step in order, even when one fails, then reports all the failures together.
export async function cleanUp(steps: (() => Promise<unknown> | undefined)[]): Promise<void> {
  const failures: unknown[] = [];
  for (const step of steps) {
    try {
      await step();
    } catch (error) {
      failures.push(error);
    }
  }
  if (failures.length > 0) throw new AggregateError(failures, 'cleanup failed');
}

// ---------------------------------------------------------------------------------------------
// The contract tests (test/contract-*.test.ts): one database and app per file, the current sale's
// 10,000 items handed out one per test, and what a request could change, read back.

export const LIMIT_MESSAGE_10 = 'User has reached the maximum of 10 items per sale';
export const CODE_PATTERN = /^[A-Za-z0-9_-]{22}$/;

// Set by useContractApp's before(); ES modules export live bindings, so importers see them.
export let database: TestDatabase;
export let testApp: TestApp;
export let prefix = '';
export let saleId = 0;
export let itemIds: number[] = [];
let nextItemIndex = 0;
let userCounter = 0;

export function useContractApp(): void {
  prefix = uniquePrefix();
  before(async () => {
    database = await createDatabase();
    // A snapshot of a millisecond: these tests read the listing right after changing it.
    testApp = await startApp(database, prefix, { SALES_SNAPSHOT_MS: '1' });
    saleId = await currentSaleId(database.sql);
    itemIds = (await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id`).map((row) => row.id);
    assert.equal(itemIds.length, 10_000);
  });
  after(async () => {
    await testApp?.close();
    await database?.drop();
    await dropRedisPrefix(prefix);
  });
}

export type Json = Record<string, unknown>;
export type Issued = { code: string; user_id: string; item_id: number; sale_id: number; expires_at: string };
export type Receipt = { message: string; code: string; item_id: number; sale_id: number; user_id: string; purchased_at: string };
export type Reply = { status: number; body: Json; text: string; headers: Record<string, unknown> };

// An item of the current sale that no other test has used (and so is unsold).
export function freshItem(): number {
  const id = itemIds[nextItemIndex++];
  assert.ok(id !== undefined, 'ran out of items');
  return id;
}

export function newUser(label = 'user'): string {
  userCounter += 1;
  return `${label}-${userCounter}`;
}

export async function send(method: 'GET' | 'POST', url: string, app: TestApp = testApp): Promise<Reply> {
  const response = await app.app.inject({ method, url });
  let body: Json = {};
  if (String(response.headers['content-type'] ?? '').startsWith('application/json')) body = response.json() as Json;
  return { status: response.statusCode, body, text: response.body, headers: response.headers };
}

export const show = (reply: Reply) => `${reply.status} ${reply.text.slice(0, 300)}`;

// Every error: the status, JSON {"error", "message"} and nothing else, and no stack trace or SQL in it.
export function assertError(reply: Reply, status: number, code: string): void {
  assert.equal(reply.status, status, show(reply));
  assert.match(String(reply.headers['content-type']), /^application\/json/, show(reply));
  assert.deepEqual(Object.keys(reply.body).sort(), ['error', 'message'], show(reply));
  assert.equal(reply.body.error, code, show(reply));
  assert.equal(typeof reply.body.message, 'string');
  assert.ok((reply.body.message as string).length > 0, 'the message is not empty');
  assertNoLeak(reply.text);
}

export function assertNoLeak(text: string): void {
  assert.doesNotMatch(text, /\n\s*at\s|\bat .+:\d+:\d+|\.ts:\d+|node_modules/, `no stack trace in ${text}`);
  assert.doesNotMatch(text, /\b(select|insert into|delete from|update \w+ set)\b|syntax error|relation "|violates|postgres/i, `no SQL in ${text}`);
}

export async function checkout(userId: string, itemId: number, app: TestApp = testApp): Promise<Issued> {
  const reply = await send('POST', `/checkout?user_id=${encodeURIComponent(userId)}&id=${itemId}`, app);
  assert.equal(reply.status, 200, show(reply));
  return reply.body as Issued;
}

export async function purchase(code: string, app: TestApp = testApp): Promise<Reply> {
  return send('POST', `/purchase?code=${encodeURIComponent(code)}`, app);
}

export async function buy(userId: string, itemId: number, app: TestApp = testApp): Promise<Receipt> {
  const issued = await checkout(userId, itemId, app);
  const reply = await purchase(issued.code, app);
  assert.equal(reply.status, 200, show(reply));
  return reply.body as Receipt;
}

// Everything a request could change besides checkout_attempts, as comparable values.
export async function snapshot(sql = database.sql) {
  const [row] = await sql<
    { sales: number; items: number; sold: number; itemsHash: string; buyers: number; bought: number; buyersHash: string }[]
  >`
    select (select count(*) from sales) as sales,
           (select count(*) from items) as items,
           (select count(*) from items where buyer_id is not null) as sold,
           (select coalesce(md5(string_agg(id || '|' || buyer_id || '|' || purchase_code || '|' || sold_at, ',' order by id)), '')
              from items where buyer_id is not null) as "itemsHash",
           (select count(*) from sale_buyers) as buyers,
           (select coalesce(sum(bought), 0) from sale_buyers) as bought,
           (select coalesce(md5(string_agg(sale_id || '|' || user_id || '|' || bought, ',' order by sale_id, user_id)), '')
              from sale_buyers) as "buyersHash"`;
  return row!;
}

export async function attemptsCount(sql = database.sql) {
  const [row] = await sql<{ count: number; maxId: number }[]>`
    select count(*) as count, coalesce(max(id), 0) as "maxId" from checkout_attempts`;
  return row!;
}

export type Attempt = {
  id: number;
  outcome: string;
  userId: string | null;
  itemId: number | null;
  saleId: number | null;
  code: string | null;
  expiresAt: Date | null;
  detail: string | null;
};

export async function attemptsAfter(maxId: number, sql = database.sql): Promise<Attempt[]> {
  return sql<Attempt[]>`
    select id, outcome, user_id as "userId", item_id as "itemId", sale_id as "saleId", code,
           expires_at as "expiresAt", detail
    from checkout_attempts where id > ${maxId} order by id`;
}

export async function itemRow(itemId: number) {
  const [row] = await database.sql<{ buyerId: string | null; purchaseCode: string | null; soldAt: Date | null; saleId: number }[]>`
    select buyer_id as "buyerId", purchase_code as "purchaseCode", sold_at as "soldAt", sale_id as "saleId"
    from items where id = ${itemId}`;
  return row;
}

export async function boughtBy(userId: string, sale = saleId): Promise<number | undefined> {
  const [row] = await database.sql<{ bought: number }[]>`
    select bought from sale_buyers where sale_id = ${sale} and user_id = ${userId}`;
  return row?.bought;
}

// The load generator (bench/load.ts) is a measuring instrument: it must classify every answer, read
// the invariants back, and fail when a run goes wrong. It runs here against a real service process.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cleanUp, createDatabase, dropRedisPrefix, startInstance, testEnv, uniquePrefix, type Instance, type TestDatabase } from './helpers.ts';

const loadPath = fileURLToPath(new URL('../bench/load.ts', import.meta.url));

let database: TestDatabase | undefined;
let instance: Instance | undefined;
let out = '';
const prefix = uniquePrefix();

before(async () => {
  database = await createDatabase();
  instance = await startInstance(testEnv(database, prefix));
  out = await mkdtemp(join(tmpdir(), 'flash-load-'));
});

after(async () => {
  await cleanUp([() => instance?.stop(), () => database?.drop(), () => dropRedisPrefix(prefix), () => rm(out, { recursive: true, force: true })]);
});

type Endpoint = { endpoint: string; requests: number; outcomes: { outcome: string; kind: string; count: number }[] };
type Report = {
  ok: boolean;
  totals: { requests: number; errors: number };
  endpoints: Endpoint[];
  errors: { network: Record<string, number> };
  facts: Record<string, unknown>;
  invariants: { ok: boolean; checks: { name: string; ok: boolean }[] };
};

function load(args: string[], onStart?: () => void, target = { url: instance!.url, databaseUrl: database!.url }): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, [loadPath, ...args, '--url', target.url, '--database-url', target.databaseUrl, '--out', out], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => {
    output += chunk;
    if (onStart && String(chunk).includes('[checkout-only]')) {
      onStart();
      onStart = undefined;
    }
  });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, output })));
}

const readReport = async (scenario: string) => JSON.parse(await readFile(join(out, `${scenario}.json`), 'utf8')) as Report;

test('a small stampede sells its sale out, and every answer is counted by endpoint and outcome', async () => {
  const run = await load(['stampede', '--items', '300', '--users', '2000', '--connections', '32', '--warm-up', '0']);
  assert.equal(run.code, 0, run.output);
  const report = await readReport('stampede');
  assert.equal(report.ok, true);
  assert.equal(report.totals.errors, 0);
  assert.ok(report.invariants.checks.length >= 5 && report.invariants.checks.every((check) => check.ok), JSON.stringify(report.invariants));

  const count = (endpoint: string, outcome: string) =>
    report.endpoints.find((e) => e.endpoint === endpoint)?.outcomes.find((o) => o.outcome === outcome)?.count ?? 0;
  assert.equal(count('purchase', '200'), 300, 'every item bought once, through answers read as 200 "Purchase successful"');
  assert.equal(report.facts['items bought'], 300);
  assert.equal(typeof report.facts['time to sell out (s)'], 'number');
  // The database agrees with what the client counted: every code it was given, and every refusal.
  const [rows] = await database!.sql<{ issued: number; sold: number }[]>`
    select count(*) filter (where outcome = 'issued')::int as issued, count(*) filter (where outcome = 'item_sold')::int as sold
    from checkout_attempts`;
  assert.equal(rows!.issued, count('checkout', '200'));
  assert.equal(rows!.sold, count('checkout', '409 item_sold'));
  const total = report.endpoints.reduce((sum, e) => sum + e.requests, 0);
  assert.equal(total, report.totals.requests);
  // The HTML report carries its chart library, so that it opens offline.
  const html = await readFile(join(out, 'stampede.html'), 'utf8');
  assert.match(html, /uPlot/);
  assert.doesNotMatch(html, /<script src=|<link [^>]*href="http/);
});

test('without the service\'s database, the load generator says it needs --database-url', async () => {
  const elsewhere = new URL(database!.url);
  elsewhere.pathname = '/flash_no_such_database';
  const run = await load(['checkout-only', '--duration', '1', '--warm-up', '0'], undefined, { url: instance!.url, databaseUrl: elsewhere.toString() });
  assert.equal(run.code, 1);
  assert.match(run.output, /cannot read the service's database .*flash_no_such_database.*give it the service's DATABASE_URL with --database-url/s);
});

test('a run refused by the rate limits fails saying so, and how to lift them', async () => {
  const limited = await startInstance(testEnv(database!, uniquePrefix(), { RATE_LIMIT: 'on', RATE_LIMIT_ADDRESS_MAX: '50' }));
  try {
    const run = await load(['checkout-only', '--duration', '2', '--connections', '4', '--warm-up', '0'], undefined, { url: limited.url, databaseUrl: database!.url });
    assert.equal(run.code, 1, run.output);
    assert.match(run.output, /answers were 429 rate_limited: .* RATE_LIMIT=off, or a higher RATE_LIMIT_ADDRESS_MAX/);
  } finally {
    await limited.stop();
  }
});

test('a run whose service goes away counts network errors and exits 1', async () => {
  const run = await load(['checkout-only', '--duration', '4', '--connections', '8', '--warm-up', '0'], () => {
    setTimeout(() => void instance!.stop('SIGKILL'), 500);
  });
  assert.equal(run.code, 1, run.output);
  const report = await readReport('checkout-only');
  assert.equal(report.ok, false);
  assert.ok(Object.values(report.errors.network).reduce((sum, n) => sum + n, 0) > 0, JSON.stringify(report.errors));
  assert.ok(report.endpoints.find((e) => e.endpoint === 'checkout')!.outcomes.some((o) => o.outcome === '200' && o.count > 0));
});

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { refreshSoldCounts } from '../src/store.ts';
import { latestMigration } from '../src/migrate.ts';
import { currentSaleId, freePort, startApp, uniquePrefix, useTestApp } from './helpers.ts';

const fixture = useTestApp();

function metricValue(body: string, line: RegExp): number {
  const found = body.split('\n').find((text) => line.test(text));
  assert.ok(found, `no metric line matches ${line}`);
  return Number(found.split(' ').at(-1));
}

test('/metrics reports requests, outcomes, items sold per sale and the connections', async () => {
  const saleId = await currentSaleId(fixture.database.sql);
  const [item] = await fixture.database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id limit 1`;
  const checkout = await fixture.testApp.app.inject({ method: 'POST', url: `/checkout?user_id=metrics&id=${item!.id}` });
  await fixture.testApp.app.inject({ method: 'POST', url: `/purchase?code=${checkout.json().code}` });
  await fixture.testApp.app.inject({ method: 'POST', url: '/checkout?user_id=metrics&id=x' });
  await refreshSoldCounts(fixture.database.sql); // as every instance's scheduler does twice a second

  const reply = await fixture.testApp.app.inject({ method: 'GET', url: '/metrics' });
  assert.equal(reply.statusCode, 200);
  assert.match(String(reply.headers['content-type']), /^text\/plain/);
  const body = reply.body;
  assert.equal(metricValue(body, /^checkout_outcomes_total\{outcome="issued"\}/), 1);
  assert.equal(metricValue(body, /^checkout_outcomes_total\{outcome="bad_request"\}/), 1);
  assert.equal(metricValue(body, /^purchase_outcomes_total\{outcome="purchased"\}/), 1);
  assert.equal(metricValue(body, new RegExp(`^sale_items_sold\\{sale_id="${saleId}"\\}`)), 1);
  assert.equal(metricValue(body, /^http_request_duration_seconds_count\{method="POST",route="\/checkout",status_code="200"\}/), 1);
  assert.equal(metricValue(body, /^http_request_duration_seconds_count\{method="POST",route="\/checkout",status_code="400"\}/), 1);
  assert.equal(metricValue(body, /^database_pool_max/), fixture.testApp.config.databasePoolMax);
  assert.match(body, /^redis_connected [01]$/m);
  assert.ok(metricValue(body, /^database_connections\{state="(active|idle)"\}/) >= 1, 'the pool as PostgreSQL sees it');
  assert.match(body, /^process_resident_memory_bytes /m);
});

test('the OpenAPI description lists exactly the endpoints the README documents', async () => {
  const reply = await fixture.testApp.app.inject({ method: 'GET', url: '/docs/json' });
  assert.equal(reply.statusCode, 200);
  const paths = reply.json().paths as Record<string, Record<string, unknown>>;
  const fromOpenApi = Object.entries(paths)
    .flatMap(([path, methods]) => Object.keys(methods).map((method) => `${method.toUpperCase()} ${path}`))
    .sort();

  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
  const api = readme.slice(readme.indexOf('## API'), readme.indexOf('\n## ', readme.indexOf('## API') + 1));
  const fromReadme = [...api.matchAll(/^\| `(GET|POST) ([^`?]+)[^`]*` \|/gm)].map((match) => `${match[1]} ${match[2]}`).sort();
  assert.deepEqual(fromReadme, fromOpenApi);

  const ui = await fixture.testApp.app.inject({ method: 'GET', url: '/docs/' });
  assert.equal(ui.statusCode, 200);
  assert.match(ui.body, /swagger/i);
});

test('every log line of a request carries its request id, which the response echoes', async () => {
  const { startInstance, testEnv } = await import('./helpers.ts');
  const instance = await startInstance(testEnv(fixture.database, uniquePrefix(), { LOG_LEVEL: 'info', LOG_REQUESTS: 'on' }));
  try {
    const given = await fetch(`${instance.url}/sales`, { headers: { 'x-request-id': 'trace-me-42' } });
    assert.equal(given.headers.get('x-request-id'), 'trace-me-42');
    const fresh = await fetch(`${instance.url}/sales`);
    assert.match(fresh.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const lines = instance.output().split('\n').filter((line) => line.includes('trace-me-42'));
    assert.ok(lines.length >= 2, 'the incoming and the completed line');
    for (const line of lines) assert.equal(JSON.parse(line).reqId, 'trace-me-42');
  } finally {
    await instance.stop();
  }
});

test('without LOG_REQUESTS there is no log line per request at info', async () => {
  const { startInstance, testEnv } = await import('./helpers.ts');
  const instance = await startInstance(testEnv(fixture.database, uniquePrefix(), { LOG_LEVEL: 'info' }));
  try {
    await fetch(`${instance.url}/sales`, { headers: { 'x-request-id': 'quiet-please' } });
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(instance.output().includes('quiet-please'), false);
  } finally {
    await instance.stop();
  }
});

test('/livez touches nothing; /readyz wants PostgreSQL and the schema this code expects, not Redis', async () => {
  const { testApp, database } = fixture;
  const livez = await testApp.app.inject({ method: 'GET', url: '/livez' });
  assert.deepEqual([livez.statusCode, livez.json()], [200, { status: 'ok' }]);
  const ready = await testApp.app.inject({ method: 'GET', url: '/readyz' });
  assert.equal(ready.statusCode, 200, ready.body);
  assert.equal(ready.json().schema, latestMigration());

  // A schema newer than this code (the next release migrated it during a deploy): still ready, since each
  // migration keeps the release before it working.
  await database.sql`insert into schema_migrations (version) values ('9999_from_the_future.sql')`;
  try {
    const newer = await testApp.app.inject({ method: 'GET', url: '/readyz' });
    assert.deepEqual(newer.json(), { status: 'ok', database: 'ok', schema: '9999_from_the_future.sql', expected_schema: latestMigration() });
  } finally {
    await database.sql`delete from schema_migrations where version = '9999_from_the_future.sql'`;
  }
  // A schema without this code's latest migration: not ready.
  await database.sql`delete from schema_migrations where version = ${latestMigration()}`;
  try {
    const older = await testApp.app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(older.statusCode, 503);
    assert.equal(older.json().status, 'error');
  } finally {
    await database.sql`insert into schema_migrations (version) values (${latestMigration()})`;
  }

  // Redis unreachable: /health says so, /readyz stays ready; PostgreSQL unreachable: neither, /livez still answers.
  const noRedis = await startApp(database, uniquePrefix(), { REDIS_URL: `redis://127.0.0.1:${await freePort()}` });
  const noDatabase = await startApp({ ...database, url: `postgres://postgres@127.0.0.1:${await freePort()}/nowhere` }, uniquePrefix(), {
    HEALTH_TIMEOUT_MS: '500',
  });
  try {
    assert.equal((await noRedis.app.inject({ method: 'GET', url: '/health' })).statusCode, 503);
    assert.equal((await noRedis.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
    const started = performance.now();
    const unready = await noDatabase.app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(unready.statusCode, 503);
    assert.equal(unready.json().database, 'error');
    assert.ok(performance.now() - started < 5000, 'answered within its bound');
    assert.equal((await noDatabase.app.inject({ method: 'GET', url: '/livez' })).statusCode, 200);
  } finally {
    await noRedis.close();
    await noDatabase.close();
  }
});

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import postgres from 'postgres';
import { ConfigError, loadConfig } from '../src/config.ts';
import { connect } from '../src/db.ts';
import { ensureDatabase, migrate } from '../src/migrate.ts';
import { adminUrl, cleanUp, createDatabase, dropRedisPrefix, startInstance, testEnv, uniquePrefix, type Instance } from './helpers.ts';

test('the defaults describe the local PostgreSQL and Redis and an hourly 10,000-item sale', () => {
  const config = loadConfig({});
  assert.equal(config.port, 8080);
  assert.equal(config.databaseUrl, 'postgres://postgres@127.0.0.1:5432/flash_sale');
  assert.equal(config.redisUrl, 'redis://127.0.0.1:6379');
  assert.equal(config.saleSize, 10_000);
  assert.equal(config.perUserLimit, 10);
  assert.equal(config.saleIntervalSeconds, 3600);
  assert.ok(Object.isFrozen(config));
});

test('a bad variable stops start-up with its name', () => {
  const cases: Record<string, string>[] = [
    { PORT: 'eighty' }, { PORT: '70000' }, { SALE_SIZE: '0' }, { SALE_SIZE: '1.5' }, { PER_USER_LIMIT: '-1' },
    { SALE_INTERVAL: '1h' }, { CODE_TTL: '' + 10 ** 9 }, { DATABASE_URL: 'mysql://x' }, { REDIS_URL: 'not a url' },
    { LOG_LEVEL: 'loud' }, { DATABASE_POOL_MAX: '0' },
  ];
  for (const env of cases) {
    const [name] = Object.keys(env);
    assert.throws(() => loadConfig(env), (error: Error) => error instanceof ConfigError && error.message.includes(name!), name);
  }
});

test('the server refuses to start on a bad variable, naming it, with exit code 1', async () => {
  const server = fileURLToPath(new URL('../src/server.ts', import.meta.url));
  const child = spawn(process.execPath, [server], { env: { ...process.env, SALE_SIZE: 'lots' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const code = await new Promise((resolve) => child.once('exit', resolve));
  assert.equal(code, 1);
  assert.match(stderr, /SALE_SIZE/);
});

test('ensureDatabase creates a missing database, and instances migrating at once apply each migration once', async () => {
  const name = `flash_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  try {
    await Promise.all([ensureDatabase(url.toString()), ensureDatabase(url.toString())]);
    const pools = [1, 2, 3, 4].map(() => connect(url.toString(), { max: 1 }));
    const applied = await Promise.all(pools.map((sql) => migrate(sql)));
    assert.equal(applied.filter((files) => files.length > 0).length, 1, 'exactly one instance applied the migrations');
    const [row] = await pools[0]!`select count(*) as count from schema_migrations`;
    assert.equal(row!.count, applied.find((files) => files.length > 0)!.length);
    await Promise.all(pools.map((sql) => sql.end({ timeout: 5 })));
  } finally {
    await admin`drop database if exists ${admin(name)} with (force)`;
    await admin.end({ timeout: 5 });
  }
});

// Codes issued before migration 0004 were keyed by their SHA-256 alone: after it they must still buy their
// item and replay the receipt.
test('migration 0004 re-keys codes issued before it: they still buy, and replay, their item', async () => {
  const database = await createDatabase({ migrateThrough: '0003_cached_plans.sql' });
  const { sql } = database;
  try {
    const oldCode = randomBytes(16).toString('base64url');
    const [sale] = await sql<{ id: number }[]>`select sale_id as id from ensure_current_sale(3600, 10, 10)`;
    const [item] = await sql<{ id: number }[]>`select id from items where sale_id = ${sale!.id} order by id limit 1`;
    await sql`
      insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_hash, expires_at)
      select 'issued', 'early', id, sale_id, ${oldCode}, sha256(convert_to(${oldCode}, 'UTF8')), now() + interval '10 minutes'
      from items where id = ${item!.id}`;

    assert.deepEqual(await migrate(sql, { through: '0004_time_ordered_codes.sql' }), ['0004_time_ordered_codes.sql']);
    const buy = () => sql<{ outcome: string; user_id: string }[]>`select outcome, user_id from purchase(${[oldCode]}::text[])`;
    assert.deepEqual((await buy()).map((row) => ({ ...row })), [{ outcome: 'purchased', user_id: 'early' }]);
    assert.deepEqual((await buy()).map((row) => ({ ...row })), [{ outcome: 'replayed', user_id: 'early' }]);
    const [keys] = await sql<{ rekeyed: boolean }[]>`select code_key = code_key(code) as rekeyed from checkout_attempts where code = ${oldCode}`;
    assert.equal(keys!.rekeyed, true);
  } finally {
    await database.drop();
  }
});

// server.ts opens the current sale itself before it listens; the next one, two seconds later, only the
// scheduler can open: nothing is sent to the instance meanwhile.
test('a running instance opens the current sale at start-up and the next one at its boundary, with no request; SIGTERM drains, exit 0', { timeout: 30_000 }, async () => {
  const database = await createDatabase();
  const prefix = uniquePrefix();
  let instance: Instance | undefined;
  try {
    instance = await startInstance(testEnv(database, prefix, { LOG_LEVEL: 'info', SALE_INTERVAL: '2' }));
    const sales = () =>
      database.sql<{ epoch: number; size: number; early: boolean }[]>`
        select extract(epoch from starts_at)::float8 as epoch, size, created_at < starts_at as early
        from sales order by starts_at`;
    const [opened] = await sales();
    assert.equal(opened!.size, 10_000);
    // Generous: the next boundary is at most 2 s away; this bounds a scheduler that never wakes.
    const deadline = Date.now() + 10_000;
    let all = await sales();
    while (all.length < 2) {
      assert.ok(Date.now() < deadline, `no sale after the one opened at start-up:\n${instance.output()}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      all = await sales();
    }
    assert.equal(all[1]!.epoch - all[0]!.epoch, 2, 'the next sale is the next boundary\'s');
    assert.deepEqual(all.map((sale) => [sale.size, sale.early]), all.map(() => [10_000, false]));
    assert.equal(await instance.stop('SIGTERM'), 0);
    assert.match(instance.output(), /"msg":"stopped"/);
  } finally {
    await cleanUp([() => instance?.stop('SIGKILL'), () => database.drop(), () => dropRedisPrefix(prefix)]);
  }
});

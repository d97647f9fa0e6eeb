// The compose profile "scaled" puts instances behind nginx with deploy/nginx.conf. This runs that very
// file, with the upstream pointed at two local instances, and checks requests spread, stay correct, and
// keep the client's address for the rate limits.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { keepAliveTimeoutMs } from '../src/app.ts';
import { createDatabase, currentSaleId, dropRedisPrefix, freePort, startInstance, testEnv, uniquePrefix, type Instance } from './helpers.ts';

const nginx = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((path) => existsSync(path));

test('deploy/nginx.conf spreads requests over the instances, passes the client address on, and survives idle gaps', { skip: !nginx && 'nginx is not installed', timeout: 60_000 }, async () => {
  const database = await createDatabase();
  const prefix = uniquePrefix();
  const instances: Instance[] = [];
  const dir = await mkdtemp(join(tmpdir(), 'flash-nginx-'));
  let balancer: ChildProcess | undefined;
  try {
    const saleId = await currentSaleId(database.sql);
    // Limits on, per address: both instances share the count through Redis, keyed by X-Forwarded-For.
    const env = testEnv(database, prefix, { TRUST_PROXY: '1', RATE_LIMIT: 'on', RATE_LIMIT_ADDRESS_MAX: '1000' });
    instances.push(await startInstance(env), await startInstance(env));
    const port = await freePort();
    const config = (await readFile(new URL('../deploy/nginx.conf', import.meta.url), 'utf8'))
      .replace('server app-scaled:8080 resolve;', instances.map((instance) => `server 127.0.0.1:${instance.port};`).join('\n'))
      .replace('listen 8080;', `listen 127.0.0.1:${port};`)
      .replace('worker_processes auto;', `worker_processes 1;\npid ${join(dir, 'nginx.pid')};\nerror_log ${join(dir, 'error.log')};`);
    assert.notEqual(config.indexOf('127.0.0.1:' + instances[0]!.port), -1, 'the upstream line was found and replaced');
    await writeFile(join(dir, 'nginx.conf'), config);
    balancer = spawn(nginx!, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: 'ignore' });
    const url = `http://127.0.0.1:${port}`;
    for (let attempt = 0; attempt < 50 && !(await fetch(`${url}/health`).then((r) => r.ok, () => false)); attempt += 1) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    const items = await database.sql<{ id: number }[]>`select id from items where sale_id = ${saleId} order by id limit 20`;
    for (const [index, item] of items.entries()) {
      const checkout = await fetch(`${url}/checkout?user_id=lb${index % 3}&id=${item.id}`, { method: 'POST' });
      assert.equal(checkout.status, 200);
      const { code } = (await checkout.json()) as { code: string };
      const purchase = await fetch(`${url}/purchase?code=${code}`, { method: 'POST' });
      assert.equal(purchase.status, 200);
    }
    const [sold] = await database.sql<{ count: number }[]>`select count(*) as count from items where buyer_id like 'lb%'`;
    assert.equal(sold!.count, 20);

    // Both instances served: each counted sale requests in its own /metrics.
    for (const instance of instances) {
      const metrics = await (await fetch(`${instance.url}/metrics`)).text();
      assert.match(metrics, /^http_request_duration_seconds_count\{method="POST",route="\/(checkout|purchase)",status_code="200"\} [1-9]/m);
    }
    // nginx drops idle upstream connections before the service closes them (else, at the wrong moment,
    // it sends a request down a connection being closed: a 502 for a POST, which it never re-sends).
    const upstreamIdle = /keepalive_timeout (\d+)s;/.exec(config);
    assert.ok(upstreamIdle && Number(upstreamIdle[1]) * 1000 < keepAliveTimeoutMs, `nginx keeps idle connections ${upstreamIdle?.[1]} s`);
    // And requests after idle gaps just over the service's keep-alive are answered by the service.
    for (let gap = 0; gap < 2; gap += 1) {
      await new Promise((resolve) => setTimeout(resolve, keepAliveTimeoutMs + 100));
      const burst = await Promise.all(
        items.slice(0, 8).map((item, index) => fetch(`${url}/checkout?user_id=gap${gap}-${index}&id=${item.id}`, { method: 'POST' })),
      );
      assert.deepEqual(burst.map((response) => response.status), burst.map(() => 409), `after an idle gap of 5.1 s`);
    }

    // The limit is keyed by the client's address as nginx saw it: not nginx's own, and not a forged header.
    const reply = await fetch(`${url}/sales/${saleId}`, { headers: { 'x-forwarded-for': '203.0.113.9' } });
    assert.equal(reply.status, 200);
    const { createClient } = await import('redis');
    const redis = createClient({ url: env.REDIS_URL });
    await redis.connect();
    try {
      assert.equal(await redis.exists(`${prefix}rate:address:127.0.0.1`), 1);
      assert.equal(await redis.exists(`${prefix}rate:address:203.0.113.9`), 0, 'a forged X-Forwarded-For is not believed');
    } finally {
      redis.destroy();
    }
  } finally {
    balancer?.kill('SIGTERM');
    for (const instance of instances) await instance.stop();
    await rm(dir, { recursive: true, force: true });
    await database.drop();
    await dropRedisPrefix(prefix);
  }
});

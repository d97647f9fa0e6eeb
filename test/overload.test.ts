// Overload, small: two instances shrunk to one statement of one request at a time get an open-loop flood
// of three times what they served in a closed loop (bench/load.ts overload). The excess is shed with 503
// overloaded, nothing hangs, memory stays bounded, and the database agrees with every answer.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { auditSales, violations } from '../src/audit.ts';
import { cleanUp, createDatabase, dropRedisPrefix, startInstance, testEnv, uniquePrefix, type Instance } from './helpers.ts';

const loadPath = fileURLToPath(new URL('../bench/load.ts', import.meta.url));

async function rssMb(instance: Instance): Promise<number> {
  const status = await readFile(`/proc/${instance.child.pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+)/m.exec(status)![1]) / 1024;
}

test('three times the capacity, open loop: shed, never hung, memory bounded, audit clean', { timeout: 120_000 }, async (t) => {
  const database = await createDatabase();
  const prefix = uniquePrefix();
  const out = await mkdtemp(join(tmpdir(), 'flash-overload-'));
  const instances: Instance[] = [];
  try {
    const env = testEnv(database, prefix, { DATABASE_POOL_MAX: '1', BATCHES_IN_FLIGHT: '1', BATCH_MAX: '1', QUEUE_TIMEOUT_MS: '500', STATEMENT_TIMEOUT_MS: '1000' });
    instances.push(await startInstance(env), await startInstance(env));
    const before = await Promise.all(instances.map(rssMb));

    const args = ['overload', '--duration', '3', '--connections', '1000', '--concurrency', '64', '--warm-up', '0', '--database-url', database.url, '--out', out, ...instances.flatMap((instance) => ['--url', instance.url])];
    const child = spawn(process.execPath, [loadPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    const code = await new Promise((resolve) => child.once('close', resolve));
    const report = JSON.parse(await readFile(join(out, 'overload.json'), 'utf8')) as { ok: boolean; facts: Record<string, number | string | null> };
    // Every answer was a 200 or a 503 overloaded, and the invariants held (the load tool fails otherwise).
    assert.equal(code, 0, output);
    assert.equal(report.ok, true);
    const facts = report.facts;
    assert.ok(Number(facts['flood: offered / peak']) >= 2.5, `the flood offered ${facts['flood: offered / peak']} times the peak`);
    assert.ok(Number(facts['flood: shed (503 overloaded)']) > 0, 'the excess was shed');
    assert.equal(facts['flood: other answers'], 0);
    // Nothing hangs: the queue budget, one statement and the service's own deadline after it, and slack.
    assert.ok(Number(facts['flood: slowest answer (ms)']) < 500 + 1000 + 500 + 1500, `slowest ${facts['flood: slowest answer (ms)']} ms`);
    const after = await Promise.all(instances.map(rssMb));
    for (const [index, mb] of after.entries()) assert.ok(mb < before[index]! + 150, `memory ${Math.round(before[index]!)} -> ${Math.round(mb)} MB`);
    for (const audit of await auditSales(database.sql)) assert.deepEqual(violations(audit), [], `sale ${audit.saleId}`);
    t.diagnostic(JSON.stringify(facts));
    t.diagnostic(`peak ${facts['closed-loop peak, checkouts answered 200 a second']}/s, flood ${facts['flood: offered req/s']}/s: served ${facts['flood: served / peak (%)']}% of the peak, p99 ${facts['flood: p99 of the served (ms)']} ms, ${facts['flood: shed (503 overloaded)']} shed; back to normal within ${facts['after the flood: back to normal p99 within (ms)']} ms; memory ${before.map(Math.round).join(', ')} -> ${after.map(Math.round).join(', ')} MB`);
  } finally {
    await cleanUp([...instances.map((instance) => () => instance.stop()), () => database.drop(), () => dropRedisPrefix(prefix), () => rm(out, { recursive: true, force: true })]);
  }
});

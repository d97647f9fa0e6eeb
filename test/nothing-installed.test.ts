// `npm start` on a machine with only Node: no DATABASE_URL, no REDIS_URL, and nothing answering on
// PostgreSQL's and Redis's ports (a network namespace of its own, whose loopback has no listeners). The
// service starts an embedded PostgreSQL, runs without Redis, and sells.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const buyerPath = fileURLToPath(new URL('./nothing-installed-buyer.ts', import.meta.url));

test('with nothing on the usual ports and no URLs: an embedded PostgreSQL, no Redis, and an item bought', { timeout: 180_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'flash-embedded-'));
  // Run as root, the embedded server runs as a user of its own, which must reach its data directory.
  await chmod(dir, 0o755);
  try {
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', LOCAL_POSTGRES_DIR: join(dir, 'postgres') };
    const child = spawn('unshare', ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" "${buyerPath}"`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    const code = await new Promise((resolve) => child.once('close', resolve));
    assert.equal(code, 0, output);
    const result = JSON.parse(output.trim().split('\n').at(-1)!) as { health: { status: number; body: unknown }; purchase: number; log: string[]; exit: number | null; healthyAfterMs: number };
    assert.deepEqual(result.health, { status: 200, body: { status: 'ok', database: 'ok', redis: 'disabled' } });
    assert.equal(result.purchase, 200);
    assert.ok(result.log.some((line) => line.includes('an embedded server runs on 127.0.0.1:54329')), result.log.join('\n'));
    assert.ok(result.log.some((line) => line.includes('rate limits are counted per instance')), result.log.join('\n'));
    assert.equal(result.exit, 0, 'SIGTERM drains and stops the embedded server');
    t.diagnostic(`first healthy /health ${result.healthyAfterMs} ms after the start`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

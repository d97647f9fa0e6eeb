// Redis killed and restarted under load: every request answered correctly, /health follows Redis.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { freePort, limitsNeverReached, testEnv } from './helpers.ts';
import {
  assertAuditClean,
  checkPurchases,
  describeAnswer,
  exited,
  logs,
  makeTarget,
  openScope,
  report,
  saleItems,
  send,
  sleep,
  start,
  startLoad,
  startRedis,
  type Target,
  unexpectedAnswers,
} from './faults-load.ts';

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

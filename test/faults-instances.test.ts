// Service instances failing under load: one SIGKILLed, one SIGTERMed with slow requests in flight, and
// two whose clocks disagree by 14 seconds.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { testEnv, type Instance } from './helpers.ts';
import {
  type Answer,
  assertAuditClean,
  checkPurchases,
  describeAnswer,
  exited,
  logs,
  makeTarget,
  openScope,
  report,
  saleItems,
  saleSize,
  send,
  sleep,
  start,
  startLoad,
  type Target,
  tryConnect,
  unexpectedAnswers,
  within,
} from './faults-load.ts';

const skewedClockPath = fileURLToPath(new URL('./fixtures/skewed-clock.ts', import.meta.url));

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

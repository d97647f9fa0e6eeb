// PostgreSQL connections cut under load: 503 or success, the pools recover, retries replay the receipt.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { messages } from '../src/errors.ts';
import { testEnv } from './helpers.ts';
import {
  assertAuditClean,
  checkPurchases,
  describeAnswer,
  logs,
  makeTarget,
  openScope,
  report,
  saleItems,
  sleep,
  start,
  startLoad,
  testSql,
  unexpectedAnswers,
} from './faults-load.ts';

test('PostgreSQL connections cut during a load run: 503 or success, pools recover, retries replay the receipt', { timeout: 60_000 }, async (t) => {
  const scope = await openScope(t);
  const env = testEnv(scope.db, scope.prefix);
  const targets = (await start(scope, env, 2)).map((instance, index) => makeTarget(scope, instance, `i${index}`));
  const { items } = await saleItems(scope.sql);
  // One connection for the cuts, named differently from the service's.
  const cutter = testSql(scope.db.url, 1);
  t.after(() => cutter.end({ timeout: 5 }));
  const [me] = await cutter<{ name: string }[]>`select current_setting('application_name') as name`;
  assert.equal(me!.name, 'flash-test');

  const tag = `p${randomBytes(3).toString('hex')}`;
  const load = startLoad({ tag, targets, items, buyers: 30, durationMs: 7500, timeoutMs: 4000, markDownOnNetworkError: false, retryForMs: 10_000, thinkMs: 10 });
  const cuts: { at: number; pids: number[] }[] = [];
  try {
    await sleep(1500);
    for (let cut = 0; cut < 3; cut += 1) {
      const rows = await cutter<{ pid: number; terminated: boolean }[]>`
        select pid, pg_terminate_backend(pid) as terminated from pg_stat_activity
        where datname = ${scope.db.name} and application_name = 'flash-sale' and pid <> pg_backend_pid()`;
      cuts.push({ at: Date.now(), pids: rows.filter((row) => row.terminated).map((row) => row.pid) });
      if (cut < 2) await sleep(1000);
    }
  } finally {
    await load.done;
  }
  const lastCut = cuts.at(-1)!.at;
  assert.ok(cuts.every((cut) => cut.pids.length >= 2), `every cut terminated the instances' connections: ${JSON.stringify(cuts.map((cut) => cut.pids.length))}`);
  // The cutter itself survived all three.
  assert.equal((await cutter<{ one: number }[]>`select 1 as one`)[0]!.one, 1);

  // Never a hang, never a network error, never a 500: a success, a final refusal, or a clean 503.
  const noAnswer = load.answers.filter((answer) => answer.status === 0);
  assert.deepEqual(noAnswer.slice(0, 5).map(describeAnswer), [], `${noAnswer.length} requests without an answer (hang or dropped connection)\n${logs(scope)}`);
  const bad5xx = load.answers.filter((answer) => answer.status >= 500 && !(answer.status === 503 && answer.body.error === 'database_unavailable'));
  assert.deepEqual(bad5xx.slice(0, 5).map(describeAnswer), [], `${bad5xx.length} server errors other than 503 database_unavailable\n${logs(scope)}`);
  assert.deepEqual(unexpectedAnswers(load.answers).slice(0, 5).map(describeAnswer), []);
  const unavailable = load.answers.filter((answer) => answer.status === 503);
  for (const answer of unavailable) assert.equal(answer.body.message, messages.databaseUnavailable());

  // The pools recover by themselves: two seconds after the last cut, everything succeeds again.
  const late = load.answers.filter((answer) => answer.startedAt > lastCut + 2000);
  assert.deepEqual(late.filter((answer) => answer.status === 503).slice(0, 5).map(describeAnswer), [], `still failing 2 s after the last cut\n${logs(scope)}`);
  for (const target of targets) {
    const firstOk = load.answers.find((answer) => answer.target === target.name && answer.startedAt > lastCut && answer.status === 200);
    assert.ok(firstOk && firstOk.endedAt - lastCut < 3000, `${target.name} did not serve a 200 within 3 s of the last cut`);
    assert.ok(late.filter((answer) => answer.target === target.name && answer.status === 200).length >= 20, `${target.name} served little after recovery`);
  }
  // New connections: none of the service's backends now is one that was cut.
  const cutPids = new Set(cuts.flatMap((cut) => cut.pids));
  const nowPids = await cutter<{ pid: number }[]>`
    select pid from pg_stat_activity where datname = ${scope.db.name} and application_name = 'flash-sale'`;
  assert.ok(nowPids.length > 0 && nowPids.every((row) => !cutPids.has(row.pid)), 'the pools reconnected with new backends');

  // Every purchase that lost its answer was retried with its code until a final answer, which agrees
  // with the database (same receipt when the lost attempt had bought the item; never a second item).
  const outcome = await checkPurchases(scope.sql, load);
  assert.equal(outcome.unresolved, 0, 'every purchase reached a final answer');
  await assertAuditClean(scope.sql);
  report(
    t,
    'postgres cuts',
    load,
    `${cuts.map((cut) => cut.pids.length).join('+')} backends cut, ${unavailable.length} answered 503, ${outcome.retried} purchases retried ` +
      `(${outcome.replayedAfterLoss} replayed a receipt whose first answer was lost), ${outcome.bought} items bought, lost 0`,
  );
});

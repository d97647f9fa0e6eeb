// A stalled PostgreSQL (every process of its cluster stopped with SIGSTOP, as a stuck disk or a paused
// machine leaves it) under load from many buyers: every request is answered within the queue budget plus
// one statement, selling resumes promptly once it thaws, and every answer matches the database. And one
// buyer's row held by another transaction stalls only that buyer's purchases.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { auditSales, violations } from '../src/audit.ts';
import { connect } from '../src/db.ts';
import { cleanUp, createDatabase, dropRedisPrefix, startInstance, testEnv, uniquePrefix, type Instance, type TestDatabase } from './helpers.ts';
import { startCluster, type Cluster } from './postgres-cluster.ts';

const prefix = uniquePrefix();
let cluster: Cluster | undefined;
let instance: Instance | undefined;

before(async () => {
  cluster = await startCluster();
});

after(() => cleanUp([() => instance?.stop('SIGKILL'), () => cluster?.stop(), () => dropRedisPrefix(prefix)]));

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type Answer = { kind: 'checkout' | 'purchase'; status: number; error?: string; code?: string; user: string; startedAt: number; ms: number };

test('PostgreSQL frozen for 4 s under load: every request answered within its bounds, selling resumes, nothing lost', { timeout: 120_000 }, async (t) => {
  const queueTimeoutMs = 500;
  const statementTimeoutMs = 1000;
  instance = await startInstance(
    testEnv({ url: cluster!.url('flash') }, prefix, {
      SALE_SIZE: '5000',
      QUEUE_TIMEOUT_MS: String(queueTimeoutMs),
      STATEMENT_TIMEOUT_MS: String(statementTimeoutMs),
    }),
  );
  const sql = connect(cluster!.url('flash'), { max: 2 });
  try {
    const items = (await sql<{ id: number }[]>`select id from items order by id`).map((row) => row.id);
    const answers: Answer[] = [];
    let running = true;
    let next = 0;
    const call = async (kind: Answer['kind'], path: string, user: string) => {
      const startedAt = performance.now();
      const response = await fetch(`${instance!.url}${path}`, { method: 'POST', signal: AbortSignal.timeout(20_000) });
      const body = (await response.json()) as { error?: string; code?: string };
      const answer: Answer = { kind, status: response.status, error: body.error, code: body.code, user, startedAt, ms: performance.now() - startedAt };
      if (kind === 'purchase') answer.code = path.split('code=')[1];
      answers.push(answer);
      return answer;
    };
    const buyers = Array.from({ length: 40 }, async (_, client) => {
      for (let round = 0; running; round += 1) {
        const user = `stall-${client}-${round}`;
        const issued = await call('checkout', `/checkout?user_id=${user}&id=${items[next++ % items.length]}`, user);
        if (issued.status === 200) await call('purchase', `/purchase?code=${issued.code}`, user);
        else await sleep(20);
      }
    });

    await sleep(1500);
    const frozenAt = performance.now();
    cluster!.freeze();
    await sleep(4000);
    cluster!.thaw();
    const thawedAt = performance.now();
    await sleep(3000);
    running = false;
    await Promise.all(buyers);

    // Bounded: the queue budget, then one statement and the service's own deadline after it.
    const bound = queueTimeoutMs + statementTimeoutMs + 500 + 1000;
    const slowest = answers.reduce((worst, answer) => (answer.ms > worst.ms ? answer : worst));
    assert.ok(slowest.ms < bound, `slowest answer ${Math.round(slowest.ms)} ms: ${JSON.stringify(slowest)}`);
    for (const answer of answers) {
      const ok = answer.status === 200 || answer.status === 409 || (answer.status === 503 && ['overloaded', 'database_unavailable'].includes(answer.error!));
      assert.ok(ok, `unexpected answer ${JSON.stringify(answer)}`);
    }
    // Answered while frozen: refused, each within its bound (a statement in flight at the thaw may still succeed).
    const during = answers.filter((answer) => answer.startedAt > frozenAt + 100 && answer.startedAt + answer.ms < thawedAt);
    const summary = JSON.stringify(during.filter((answer) => answer.status !== 503).slice(0, 5));
    assert.ok(during.length >= 10 && during.every((answer) => answer.status === 503), `while frozen, every answer was 503: ${during.length} answers, ${summary}`);
    const resumed = answers.find((answer) => answer.kind === 'purchase' && answer.status === 200 && answer.startedAt > thawedAt);
    assert.ok(resumed && resumed.startedAt + resumed.ms - thawedAt < 2500, 'a purchase succeeded within seconds of the thaw');
    const refused = answers.filter((answer) => answer.status === 503);
    t.diagnostic(
      `${answers.length} answers, ${refused.length} of them 503 (${refused.filter((answer) => answer.error === 'overloaded').length} overloaded); ` +
        `slowest ${Math.round(slowest.ms)} ms; ${during.length} answered while frozen; first purchase after the thaw done ${Math.round(resumed.startedAt + resumed.ms - thawedAt)} ms after it`,
    );

    // Every answer matches the database: a 200 has its row; a sold item was answered 200, or 503 (a
    // purchase that committed while its answer was lost: the client's retry replays the receipt).
    const soldCodes = new Set((await sql<{ code: string }[]>`select purchase_code as code from items where buyer_id is not null`).map((row) => row.code));
    const issuedCodes = new Set((await sql<{ code: string }[]>`select code from checkout_attempts where outcome = 'issued'`).map((row) => row.code));
    for (const answer of answers) {
      if (answer.kind === 'checkout' && answer.status === 200) assert.ok(issuedCodes.has(answer.code!), `issued code recorded: ${answer.code}`);
      if (answer.kind === 'purchase' && answer.status === 200) assert.ok(soldCodes.has(answer.code!), `purchase recorded: ${answer.code}`);
    }
    const purchaseStatus = new Map(answers.filter((answer) => answer.kind === 'purchase').map((answer) => [answer.code!, answer.status]));
    for (const code of soldCodes) assert.ok([200, 503].includes(purchaseStatus.get(code)!), `sold item's purchase was answered ${purchaseStatus.get(code)}`);
    for (const audit of await auditSales(sql)) assert.deepEqual(violations(audit), [], `sale ${audit.saleId}`);

    const metrics = await (await fetch(`${instance.url}/metrics`)).text();
    assert.match(metrics, /requests_shed_total\{kind="checkout"\} [1-9]/, 'shed checkouts are counted');
  } finally {
    await sql.end({ timeout: 5 });
  }
});

test('a buyer row held by another transaction stalls only that buyer: the rest of its batch is answered at once', { timeout: 60_000 }, async (t) => {
  const database: TestDatabase = await createDatabase();
  const heldPrefix = uniquePrefix();
  const held = await startInstance(testEnv(database, heldPrefix, { QUEUE_TIMEOUT_MS: '500', STATEMENT_TIMEOUT_MS: '1000' }));
  try {
    const sql = database.sql;
    const items = (await sql<{ id: number }[]>`select id from items order by id limit 100`).map((row) => row.id);
    const post = async (path: string) => {
      const startedAt = performance.now();
      const response = await fetch(`${held.url}${path}`, { method: 'POST', signal: AbortSignal.timeout(20_000) });
      return { status: response.status, body: (await response.json()) as { code?: string; error?: string }, ms: performance.now() - startedAt };
    };
    const checkout = async (user: string, item: number) => (await post(`/checkout?user_id=${user}&id=${item}`)).body.code!;
    // The held buyer has bought once (its row exists) and holds three more codes; 60 others hold one each.
    assert.equal((await post(`/purchase?code=${await checkout('held-buyer', items[0]!)}`)).status, 200);
    const heldCodes = await Promise.all(items.slice(1, 4).map((item) => checkout('held-buyer', item)));
    const otherCodes = await Promise.all(items.slice(4, 64).map((item, index) => checkout(`other-${index}`, item)));
    const saleId = (await sql<{ saleId: number }[]>`select sale_id as "saleId" from sale_buyers where user_id = 'held-buyer'`)[0]!.saleId;

    let release!: () => void;
    let locked!: () => void;
    const isLocked = new Promise<void>((resolve) => (locked = resolve));
    let releasedAt = Infinity;
    const holder = sql.begin(async (tx) => {
      await tx`select * from sale_buyers where sale_id = ${saleId} and user_id = 'held-buyer' for update`;
      locked();
      await new Promise<void>((resolve) => (release = resolve));
      releasedAt = performance.now();
    });
    await isLocked;

    // All at once, so that the held buyer's purchases share statements with the others'.
    const codes = [...otherCodes.slice(0, 30), ...heldCodes, ...otherCodes.slice(30)];
    const answers = codes.map((code) => post(`/purchase?code=${code}`).then((answer) => ({ ...answer, code, at: performance.now() })));
    const others = await Promise.all(answers.filter((_, index) => !heldCodes.includes(codes[index]!)));
    for (const answer of others) {
      assert.equal(answer.status, 200, JSON.stringify(answer));
      assert.ok(answer.at < releasedAt, 'answered while the buyer row was still held');
    }
    // The held buyer's purchases wait for the lock, within lock_timeout, and are refused as safe to retry.
    const waited = await Promise.all(answers.filter((_, index) => heldCodes.includes(codes[index]!)));
    for (const answer of waited) {
      assert.equal(answer.status, 503, JSON.stringify(answer));
      assert.equal(answer.body.error, 'database_unavailable');
      assert.ok(answer.ms < 500 + 1000 + 500 + 1000, `answered in ${Math.round(answer.ms)} ms`);
    }
    assert.equal(releasedAt, Infinity, 'still held');

    // Tried again, they wait for the lock and go through as soon as it is released.
    const retried = heldCodes.map((code) => post(`/purchase?code=${code}`));
    await new Promise((resolve) => setTimeout(resolve, 200));
    release();
    await holder;
    for (const answer of await Promise.all(retried)) assert.equal(answer.status, 200, JSON.stringify(answer));

    const buyer = await sql<{ bought: number }[]>`select bought from sale_buyers where sale_id = ${saleId} and user_id = 'held-buyer'`;
    assert.equal(buyer[0]!.bought, 4);
    const sold = await sql<{ count: number }[]>`select count(*)::int as count from items where buyer_id is not null`;
    assert.equal(sold[0]!.count, 64);
    for (const audit of await auditSales(sql)) assert.deepEqual(violations(audit), [], `sale ${audit.saleId}`);
    t.diagnostic(`others answered in at most ${Math.round(Math.max(...others.map((answer) => answer.ms)))} ms; the held buyer's in ${waited.map((answer) => Math.round(answer.ms)).join(', ')} ms`);
  } finally {
    await cleanUp([() => held.stop('SIGKILL'), () => database.drop(), () => dropRedisPrefix(heldPrefix)]);
  }
});

// The HTTP contract of errors outside any one route: validation messages written for people, bodies
// refused before validation, form-encoded posts, unknown routes.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { errorStatus } from '../src/errors.ts';
import {
  assertError,
  attemptsAfter,
  attemptsCount,
  freshItem,
  type Json,
  newUser,
  type Reply,
  send,
  show,
  snapshot,
  testApp,
  useContractApp,
} from './helpers.ts';

useContractApp();

describe('validation messages', () => {
  // Written for people: the field and what it takes, from the schema's description, never a pattern.
  const cases: [string, string, string][] = [
    ['GET', '/sales?limit=abc', 'limit must be a whole number from 1 to 100: the open sales per page'],
    ['GET', '/sales/1/items?limit=501', 'limit must be a whole number from 1 to 500: the items per page'],
    ['GET', '/sales/1/items?available=maybe', 'available must be true or false: only items not yet sold'],
    ['POST', '/checkout?id=1', 'user_id is required'],
    ['POST', '/checkout?user_id=..&id=1', 'user_id must be 1 to 64 letters, digits or _ . : @ -, not only dots'],
    ['POST', '/checkout?user_id=a&id=0x10', 'id must be a positive whole number'],
    ['POST', '/purchase?code=short', 'code must be the 22-character code from checkout'],
    ['GET', '/items/abc', 'id must be a positive whole number'],
  ];
  for (const [method, url, message] of cases) {
    test(`${method} ${url}: 400 "${message}"`, async () => {
      const response = await testApp.app.inject({ method: method as 'GET' | 'POST', url });
      assert.equal(response.statusCode, 400);
      assert.deepEqual(response.json(), { error: 'bad_request', message });
    });
  }
});

describe('requests refused before validation (body and content type)', () => {
  // errors.ts: "this table alone maps codes to HTTP statuses": an error body's code must agree with the status.
  const statusOf: Record<string, number> = errorStatus;
  const cases: [string, Record<string, string>, string][] = [
    ['invalid JSON body', { 'content-type': 'application/json' }, '{bad'],
    ['empty JSON body', { 'content-type': 'application/json' }, ''],
    ['a body over the 1 KiB limit', { 'content-type': 'application/json' }, JSON.stringify({ pad: 'x'.repeat(2000) })],
    ['an unsupported content type', { 'content-type': 'text/xml' }, '<a/>'],
  ];
  for (const [label, headers, payload] of cases) {
    test(`POST /checkout with ${label}: a 4xx whose error code matches its status, recorded once`, async () => {
      const itemId = freshItem();
      const before = await snapshot();
      const { maxId } = await attemptsCount();
      const response = await testApp.app.inject({ method: 'POST', url: `/checkout?user_id=${newUser('body')}&id=${itemId}`, headers, payload });
      const reply: Reply = { status: response.statusCode, body: response.json() as Json, text: response.body, headers: response.headers };
      assert.ok(reply.status >= 400 && reply.status < 500, show(reply));
      assertError(reply, reply.status, String(reply.body.error));
      assert.equal(statusOf[String(reply.body.error)], reply.status, `error code "${String(reply.body.error)}" is not a ${reply.status}`);
      const rows = await attemptsAfter(maxId);
      assert.equal(rows.length, 1);
      assert.equal(rows[0]!.outcome, 'bad_request');
      assert.deepEqual(await snapshot(), before);
    });
  }
});

describe('form-encoded posts (curl -d \'\')', () => {
  test('a checkout and a purchase sent with an empty form body work: parameters travel in the query', async () => {
    const headers = { 'content-type': 'application/x-www-form-urlencoded' };
    const checkoutReply = await testApp.app.inject({ method: 'POST', url: `/checkout?user_id=${newUser('form')}&id=${freshItem()}`, headers, payload: '' });
    assert.equal(checkoutReply.statusCode, 200, checkoutReply.body);
    const purchaseReply = await testApp.app.inject({ method: 'POST', url: `/purchase?code=${checkoutReply.json().code}`, headers, payload: '' });
    assert.equal(purchaseReply.statusCode, 200, purchaseReply.body);
    assert.equal(purchaseReply.json().message, 'Purchase successful');
  });
});

describe('unknown routes', () => {
  test('answer 404 not_found JSON', async () => {
    for (const [method, url] of [
      ['GET', '/nope'],
      ['POST', '/nope?x=1'],
      ['GET', '/checkout?user_id=u&id=1'],
      ['GET', '/purchase?code=x'],
      ['POST', '/health'],
      ['POST', '/sales'],
    ] as const) {
      const { maxId } = await attemptsCount();
      const reply = await send(method, url);
      assertError(reply, 404, 'not_found');
      assert.equal((await attemptsAfter(maxId)).length, 0, 'a wrong route records no checkout attempt');
    }
  });
});

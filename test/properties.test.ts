// Property-based tests of the HTTP edge, with fast-check. Every endpoint gets generated requests whose
// query strings (and path parameters) mix missing, repeated and empty parameters, huge values, numeric
// tricks, unicode, raw and invalid percent escapes, injection-like text and unknown extra parameters.
// The oracle below says whether each request is valid or malformed from the documented rules, written
// in plain code (not the schemas' patterns, so a wrong pattern is caught). Checked on every request:
//   1. an error reply is JSON {"error","message"} and nothing else, with a stable code whose status the
//      errorStatus table agrees with, no stack trace and no SQL; never a 5xx; a malformed request is refused;
//   2. a valid request answers 2xx or one of its endpoint's documented refusals;
//   3. the database changes only by the recorded attempt: a malformed checkout adds exactly one
//      'bad_request' row of checkout_attempts, any other malformed request adds nothing anywhere;
//   4. afterwards the process still answers /health and its heap does not keep growing.
// The service bugs these properties found (bad path escapes, non-finite numbers, dot-only user ids)
// are fixed; each keeps a property of its own below.
// Reproduce a failure with FC_SEED=<seed> (and FC_PATH=<path>) as printed by fast-check.
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { errorStatus } from '../src/errors.ts';
import { createDatabase, currentSaleId, dropRedisPrefix, startApp, uniquePrefix, type TestApp, type TestDatabase } from './helpers.ts';

const RUNS = Number(process.env.FC_NUM_RUNS ?? 250);
const SALE_SIZE = 10_000;
// Ids and cursors are at most 15 digits (src/schemas.ts), safely below 2^53.
const MAX_ID = 999_999_999_999_999;

function fcParameters(numRuns: number): fc.Parameters<unknown> {
  const seed = process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED);
  return { numRuns, seed, path: process.env.FC_PATH, endOnFailure: false };
}

// ---------------------------------------------------------------------------------------------
// Fixtures: the app, one sale, and codes in every documented state (none of which a request can change).

let database: TestDatabase;
let testApp: TestApp;
const prefix = uniquePrefix();
const fixtures = {
  saleId: 0,
  itemIds: [] as number[],
  itemIdSet: new Set<number>(),
  maxItemId: 0,
  soldIds: [] as number[],
  // code → the status and error code its purchase answers, whatever the state of Redis.
  codes: new Map<string, [number, string | null]>(),
  buyer: 'prop-buyer',
  greedy: 'prop-greedy',
  purchasesOf: new Map<string, number>(),
};
const problems: unknown[] = [];
const onProblem = (reason: unknown) => problems.push(reason);

async function inject(method: 'GET' | 'POST', url: string) {
  return testApp.app.inject({ method, url });
}

async function checkoutFixture(user: string, itemId: number): Promise<string> {
  const reply = await inject('POST', `/checkout?user_id=${user}&id=${itemId}`);
  assert.equal(reply.statusCode, 200, reply.body);
  return (reply.json() as { code: string }).code;
}

async function buyFixture(user: string, itemId: number): Promise<string> {
  const code = await checkoutFixture(user, itemId);
  const reply = await inject('POST', `/purchase?code=${code}`);
  assert.equal(reply.statusCode, 200, reply.body);
  fixtures.soldIds.push(itemId);
  return code;
}

before(async () => {
  process.on('unhandledRejection', onProblem);
  process.on('uncaughtException', onProblem);
  database = await createDatabase();
  testApp = await startApp(database, prefix);
  fixtures.saleId = await currentSaleId(database.sql);
  fixtures.itemIds = (await database.sql<{ id: number }[]>`select id from items where sale_id = ${fixtures.saleId} order by id`).map((row) => row.id);
  assert.equal(fixtures.itemIds.length, SALE_SIZE);
  fixtures.itemIdSet = new Set(fixtures.itemIds);
  fixtures.maxItemId = fixtures.itemIds.at(-1)!;
  // Hand out items from the end of the sale, so that the generated checkouts of the first items find them unsold.
  let next = fixtures.itemIds.length - 1;
  const take = () => fixtures.itemIds[next--]!;

  for (let index = 0; index < 3; index += 1) fixtures.codes.set(await buyFixture(fixtures.buyer, take()), [200, null]);
  fixtures.purchasesOf.set(fixtures.buyer, 3);
  // Two users check out one item; the first buys it, the other's code hears item_sold.
  const contested = take();
  const loser = await checkoutFixture('prop-loser', contested);
  fixtures.codes.set(await buyFixture('prop-winner', contested), [200, null]);
  fixtures.codes.set(loser, [409, 'item_sold']);
  // An expired code of an unsold item.
  const expired = await checkoutFixture('prop-late', take());
  await database.sql`update checkout_attempts set expires_at = now() - interval '1 minute' where code = ${expired}`;
  fixtures.codes.set(expired, [410, 'code_expired']);
  // A user at the limit of 10, and the code of an 11th item.
  for (let index = 0; index < 10; index += 1) fixtures.codes.set(await buyFixture(fixtures.greedy, take()), [200, null]);
  fixtures.purchasesOf.set(fixtures.greedy, 10);
  fixtures.codes.set(await checkoutFixture(fixtures.greedy, take()), [429, 'limit_reached']);
});

after(async () => {
  process.off('unhandledRejection', onProblem);
  process.off('uncaughtException', onProblem);
  await testApp?.close();
  await database?.drop();
  await dropRedisPrefix(prefix);
});

// ---------------------------------------------------------------------------------------------
// Requests as segments whose decoding is known: `enc` goes into the URL as is; `q` is what it decodes
// to in a query string, `p` in a path parameter; null means it is not valid percent-encoding.

type Seg = { enc: string; q: string | null; p: string | null };

const text = (value: string): Seg => ({ enc: encodeURIComponent(value), q: value, p: value });
const raw = (enc: string, q: string | null, p: string | null = q): Seg => ({ enc, q, p });

// Every UTF-8 byte as %XX: decodes to the same value.
function percentAll(value: string, lower: boolean): Seg {
  const hex = [...Buffer.from(value, 'utf8')].map((byte) => `%${byte.toString(16).padStart(2, '0')}`).join('');
  return { enc: lower ? hex : hex.toUpperCase(), q: value, p: value };
}

// Raw escapes. Each is complete on its own (none can absorb the characters after it into an escape).
const RAW_VALID: Seg[] = [
  raw('%00', '\0'), raw('%20', ' '), raw('+', ' ', '+'), raw('%2B', '+'), raw('%2b', '+'), raw('%26', '&'), raw('%3D', '='),
  raw('%25', '%'), raw('%2F', '/'), raw('%3F', '?'), raw('%23', '#'), raw('%0A', '\n'), raw('%0d%0a', '\r\n'), raw('%09', '\t'),
  raw('%7F', '\x7f'), raw('%27', "'"), raw('%3B', ';'), raw('%22', '"'), raw('%5C', '\\'), raw('%2e%2e%2f', '../'),
  raw('%31', '1'), raw('%35', '5'), raw('%41', 'A'), raw('%5F', '_'), raw('%C3%A9', 'é'), raw('%E2%80%8B', '\u200b'),
  raw('%EF%BB%BF', '\ufeff'), raw('%C2%A0', '\u00a0'), raw('%EF%BC%91', '１'), raw('%D9%A1', '١'), raw('%F0%9F%98%80', '😀'),
  raw('%3Cscript%3E', '<script>'), raw('%24%7B%7D', '${}'),
];
// Not UTF-8, or not an escape: %FF, truncated and overlong sequences (%C0%B1 is an overlong "1"), a
// UTF-16 surrogate (%ED%A0%80), a code point past U+10FFFF, a bare % before non-hex characters.
const RAW_INVALID: Seg[] = [
  raw('%FF', null), raw('%fe', null), raw('%C3%28', null), raw('%E2%82', null), raw('%ED%A0%80', null), raw('%C0%AF', null),
  raw('%C0%B1', null), raw('%F4%90%80%80', null), raw('%F8%88%80%80%80', null), raw('%80', null), raw('%G', null), raw('%2G', null),
  raw('%ZZ', null), raw('%-1', null),
];

const INJECTIONS = [
  "' or 1=1 --", "1' or '1'='1", '1; drop table items', '1); drop table items; --', "1 union select * from items --", '${}', '${7*7}',
  '{{7*7}}', '<script>alert(1)</script>', '../../etc/passwd', '..\\..\\windows\\win.ini', '%s%s%n', '\\x00', 'null', 'undefined',
  'NaN', 'true', 'false', '[]', '{}', '__proto__', 'constructor', '$where', '*', '-0', '0', '00', '01',
];
const PREFIXES = ['', '', ' ', '  ', '\t', '\n', '+', '-', '0', '00', '0x', '\u00a0', '\ufeff', '\u200b'];
const SUFFIXES = ['', '', ' ', '\t', '\n', '.0', '.5', 'e0', 'e3', 'E-1', 'n', 'x', '\0', '\u200b', '%', '&', '=', "'"];

// Values meant to be wrong, though the model judges each one: some happen to be valid.
function garbage(valid: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.tuple(fc.constantFrom(...PREFIXES), valid, fc.constantFrom(...SUFFIXES)).map(([p, v, s]) => p + v + s) },
    { weight: 1, arbitrary: fc.constant('') },
    { weight: 2, arbitrary: fc.constantFrom(...INJECTIONS) },
    { weight: 1, arbitrary: fc.integer({ min: -(2 ** 31), max: 0 }).map(String) },
    { weight: 1, arbitrary: fc.double().map(String) },
    { weight: 1, arbitrary: fc.integer().map((n) => `${n < 0 ? '-' : ''}0x${Math.abs(n).toString(16)}`) },
    { weight: 1, arbitrary: fc.tuple(fc.integer({ min: -99, max: 99 }), fc.integer({ min: -30, max: 30 })).map(([m, e]) => `${m}e${e}`) },
    { weight: 1, arbitrary: fc.bigInt({ min: 10n ** 15n, max: 10n ** 40n }).map(String) },
    { weight: 1, arbitrary: fc.constantFrom('0b101', '0o17', '1_000', '1,000', '١٢٣', '１２３', '½', 'Ⅻ', '1.', '.1', '1..2', '--1') },
    { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
    { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 20 }) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 30 }) },
    { weight: 1, arbitrary: fc.string({ maxLength: 30 }) },
    // Huge: up to 20,000 characters, alone or after a valid value.
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.constantFrom('1', '9', '0', 'a', 'A', '-', "'", ' ', 'é', '😀'), fc.integer({ min: 65, max: 20_000 }), fc.option(valid, { nil: '' }))
        .map(([unit, length, head]) => head + unit.repeat(length)),
    },
  );
}

// A whole value, as segments: mostly a plain value, valid or not; sometimes a mix with raw escapes.
function valueSegs(valid: fc.Arbitrary<string>, raws: Seg[]): fc.Arbitrary<Seg[]> {
  const piece = fc.oneof(
    { weight: 2, arbitrary: valid.map(text) },
    { weight: 2, arbitrary: garbage(valid).map(text) },
    { weight: 3, arbitrary: fc.constantFrom(...raws) },
  );
  return fc.oneof(
    { weight: 6, arbitrary: valid.map((value) => [text(value)]) },
    { weight: 1, arbitrary: fc.tuple(valid, fc.boolean()).map(([value, lower]) => [percentAll(value, lower)]) },
    { weight: 5, arbitrary: garbage(valid).map((value) => [text(value)]) },
    { weight: 3, arbitrary: fc.array(piece, { minLength: 1, maxLength: 4 }) },
  );
}

// ---------------------------------------------------------------------------------------------
// The endpoints and a model of their schemas (src/schemas.ts).

type Kind = 'userId' | 'id' | 'code' | 'latest' | 'salesLimit' | 'limit' | 'after' | 'available';
type Verdict = 'valid' | 'malformed';
type Param = { name: string; kind: Kind; required: boolean; valid: () => fc.Arbitrary<string> };
type Endpoint = {
  name: string;
  method: 'GET' | 'POST';
  path: (param: string) => string;
  pathParam?: { kind: Kind; valid: () => fc.Arbitrary<string> };
  params: Param[];
  // What a valid request may answer: [status, error code] (null for a 2xx).
  documented: [number, string | null][];
};

// The documented rules (README's API section), stated without the schemas' regular expressions.
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const USER_ID_SYMBOLS = '_.:@-';
const isAsciiLetterOrDigit = (char: string) => (char >= 'a' && char <= 'z') || (char >= 'A' && char <= 'Z') || (char >= '0' && char <= '9');
const isDigits = (value: string) => value.length > 0 && [...value].every((char) => char >= '0' && char <= '9');

// 1 to 64 characters, each an ASCII letter, a digit or one of _ . : @ -; not dots alone ("." and ".."
// vanish from URL paths).
function isUserId(value: string): boolean {
  const chars = [...value];
  return chars.length >= 1 && chars.length <= 64 && chars.every((char) => isAsciiLetterOrDigit(char) || USER_ID_SYMBOLS.includes(char)) && chars.some((char) => char !== '.');
}

// A whole number from min to max written plainly: digits only, no sign, no leading zero.
function isWholeNumber(value: string, min: bigint, max: bigint): boolean {
  if (!isDigits(value)) return false;
  const number = BigInt(value);
  return number.toString() === value && number >= min && number <= max;
}

// A positive whole number of at most 15 digits.
const isId = (value: string) => isWholeNumber(value, 1n, BigInt(MAX_ID));

// 22 characters of the base64url alphabet.
const isCode = (value: string) => value.length === 22 && [...value].every((char) => BASE64URL.includes(char));

const INTEGER_RANGE: Partial<Record<Kind, [number, number]>> = { latest: [1, 100], salesLimit: [1, 100], limit: [1, 500], after: [0, MAX_ID] };

// The longest and shortest valid values of each kind, which the generators step just past.
const EDGES: Record<Kind, string[]> = {
  userId: ['u'.repeat(64), 'u'],
  id: ['1', String(MAX_ID)],
  code: ['A'.repeat(22)],
  latest: ['1', '100'],
  salesLimit: ['1', '100'],
  limit: ['1', '500'],
  after: ['0', String(MAX_ID)],
  available: ['true', 'false'],
};

// Just past the documented bounds, where a wrong bound in a pattern shows: a character fewer or one
// more, the number one below or above, as many dots.
function justPast(edges: string[]): string[] {
  return edges.flatMap((value) => {
    const numbers = /^[0-9]+$/.test(value) ? [String(BigInt(value) - 1n), String(BigInt(value) + 1n)] : [];
    return [value.slice(0, -1), value + value.at(-1)!, '.'.repeat(value.length), ...numbers];
  });
}

const validUserId = () => fc.oneof(fc.constantFrom(fixtures.buyer, fixtures.greedy, 'prop-loser', 'A.b_c-d:e@f'), fc.string({ unit: fc.constantFrom(...'abcXYZ019', ...USER_ID_SYMBOLS), minLength: 1, maxLength: 64 }).filter(isUserId));
const validItemId = () =>
  fc.oneof(
    fc.constantFrom(...fixtures.itemIds.slice(0, 40), ...fixtures.soldIds).map(String),
    fc.integer({ min: 1, max: 999_999_999_999_999 }).map(String),
    fc.constantFrom('999999999999999', '1'),
  );
const validSaleId = () => fc.oneof(fc.constant(String(fixtures.saleId)), fc.integer({ min: 1, max: 999_999_999_999_999 }).map(String));
const validCode = () => fc.oneof(fc.constantFrom(...fixtures.codes.keys()), fc.string({ unit: fc.constantFrom(...BASE64URL), minLength: 22, maxLength: 22 }));

const endpoints: Endpoint[] = [
  {
    name: 'POST /checkout',
    method: 'POST',
    path: () => '/checkout',
    params: [
      { name: 'user_id', kind: 'userId', required: true, valid: validUserId },
      { name: 'id', kind: 'id', required: true, valid: validItemId },
    ],
    documented: [[200, null], [404, 'item_unknown'], [409, 'item_sold']],
  },
  {
    name: 'POST /purchase',
    method: 'POST',
    path: () => '/purchase',
    params: [{ name: 'code', kind: 'code', required: true, valid: validCode }],
    documented: [[200, null], [404, 'code_unknown'], [410, 'code_expired'], [409, 'item_sold'], [429, 'limit_reached']],
  },
  {
    name: 'GET /sales',
    method: 'GET',
    path: () => '/sales',
    params: [
      { name: 'latest', kind: 'latest', required: false, valid: () => fc.integer({ min: 1, max: 100 }).map(String) },
      { name: 'limit', kind: 'salesLimit', required: false, valid: () => fc.integer({ min: 1, max: 100 }).map(String) },
      { name: 'after', kind: 'id', required: false, valid: validSaleId },
    ],
    documented: [[200, null]],
  },
  {
    name: 'GET /sales/{id}',
    method: 'GET',
    path: (id) => `/sales/${id}`,
    pathParam: { kind: 'id', valid: validSaleId },
    params: [],
    documented: [[200, null], [404, 'not_found']],
  },
  {
    name: 'GET /sales/{id}/items',
    method: 'GET',
    path: (id) => `/sales/${id}/items`,
    pathParam: { kind: 'id', valid: validSaleId },
    params: [
      { name: 'available', kind: 'available', required: false, valid: () => fc.constantFrom('true', 'false') },
      { name: 'limit', kind: 'limit', required: false, valid: () => fc.oneof(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 1, max: 500 })).map(String) },
      {
        name: 'after',
        kind: 'after',
        required: false,
        valid: () => fc.oneof(fc.integer({ min: 0, max: SALE_SIZE + 100 }), fc.constant(MAX_ID), fc.nat()).map(String),
      },
    ],
    documented: [[200, null], [404, 'not_found']],
  },
  {
    name: 'GET /items/{id}',
    method: 'GET',
    path: (id) => `/items/${id}`,
    pathParam: { kind: 'id', valid: validItemId },
    params: [],
    documented: [[200, null], [404, 'item_unknown']],
  },
  {
    name: 'GET /items/{id}/image',
    method: 'GET',
    path: (id) => `/items/${id}/image`,
    pathParam: { kind: 'id', valid: validItemId },
    params: [],
    documented: [[200, null], [404, 'item_unknown']],
  },
  {
    name: 'GET /users/{user_id}/purchases',
    method: 'GET',
    path: (user) => `/users/${user}/purchases`,
    pathParam: { kind: 'userId', valid: validUserId },
    params: [{ name: 'sale_id', kind: 'id', required: false, valid: validSaleId }],
    documented: [[200, null]],
  },
];

// What Ajv (Fastify's coerceTypes: 'array') does with a string for an integer: `x && x == +x && !(x % 1)`.
function ajvCoercesInteger(value: string): boolean {
  const number = Number(value);
  return value !== '' && !Number.isNaN(number) && !(number % 1);
}

function judge(kind: Kind, value: string | null): Verdict {
  if (value === null) return 'malformed';
  const verdict = (valid: boolean): Verdict => (valid ? 'valid' : 'malformed');
  switch (kind) {
    case 'userId':
      return verdict(isUserId(value));
    case 'id':
      return verdict(isId(value));
    case 'code':
      return verdict(isCode(value));
    case 'available':
      return verdict(value === 'true' || value === 'false');
    default: {
      const [min, max] = INTEGER_RANGE[kind]!;
      return verdict(isWholeNumber(value, BigInt(min), BigInt(max)));
    }
  }
}

function nonFiniteInteger(kind: Kind, value: string | null): boolean {
  return kind in INTEGER_RANGE && value !== null && ajvCoercesInteger(value) && !Number.isFinite(Number(value));
}

type Entry = { key: Seg[]; value: Seg[] | null; order: number };
type Req = {
  endpoint: Endpoint;
  method: 'GET' | 'POST';
  url: string;
  verdict: Verdict;
  // The decoded parameters the route sees (one value each, when given once).
  path: string | null | undefined;
  query: Map<string, (string | null)[]>;
  bugs: Set<string>;
  // A path parameter "." or ".." is a dot segment: the URL parser removes it, so the URL names another route.
  dotSegment: boolean;
};

const join = (segs: Seg[], side: 'q' | 'p'): string | null => (segs.some((seg) => seg[side] === null) ? null : segs.map((seg) => seg[side]).join(''));

function describeRequest(this: Req): string {
  const url = this.url.length > 600 ? `${this.url.slice(0, 300)} …(${this.url.length} characters)… ${this.url.slice(-200)}` : this.url;
  return `${this.method} ${url} (${this.verdict}${this.bugs.size > 0 ? `; known bug: ${[...this.bugs].join(', ')}` : ''})`;
}

function makeRequest(endpoint: Endpoint, pathSegs: Seg[] | undefined, entries: Entry[], separator: string, bareQuestionMark: boolean): Req {
  const path = pathSegs === undefined ? undefined : join(pathSegs, 'p');
  const ordered = [...entries].sort((a, b) => a.order - b.order);
  const pairs = ordered.map((entry) => entry.key.map((seg) => seg.enc).join('') + (entry.value === null ? '' : `=${entry.value.map((seg) => seg.enc).join('')}`));
  const search = pairs.length > 0 ? `?${pairs.join(separator)}` : bareQuestionMark ? '?' : '';
  const url = endpoint.path(pathSegs === undefined ? '' : pathSegs.map((seg) => seg.enc).join('')) + search;

  // fast-querystring: a pair without a key and without "=" is skipped; a repeated key makes an array.
  const query = new Map<string, (string | null)[]>();
  for (const entry of ordered) {
    if (entry.key.every((seg) => seg.enc === '') && entry.value === null) continue;
    const key = join(entry.key, 'q') ?? `\0undecodable:${entry.key.map((seg) => seg.enc).join('')}`;
    const value = entry.value === null ? '' : join(entry.value, 'q');
    query.set(key, [...(query.get(key) ?? []), value]);
  }

  const verdicts: Verdict[] = [];
  const bugs = new Set<string>();
  let dotSegment = false;
  if (endpoint.pathParam) {
    if (path === null) bugs.add('bad-path-escape');
    if (endpoint.pathParam.kind === 'userId' && (path === '.' || path === '..')) bugs.add('dot-user-id');
    dotSegment = path === '.' || path === '..';
    verdicts.push(judge(endpoint.pathParam.kind, path ?? null));
  }
  for (const param of endpoint.params) {
    const values = query.get(param.name) ?? [];
    if (values.length === 0) verdicts.push(param.required ? 'malformed' : 'valid');
    else if (values.length > 1) verdicts.push('malformed');
    else {
      verdicts.push(judge(param.kind, values[0]!));
      if (nonFiniteInteger(param.kind, values[0]!)) bugs.add('non-finite-integer');
    }
  }
  const verdict: Verdict = verdicts.includes('malformed') ? 'malformed' : 'valid';
  const request: Req = { endpoint, method: endpoint.method, url, verdict, path, query, bugs, dotSegment };
  Object.defineProperty(request, fc.toStringMethod, { value: describeRequest, enumerable: false });
  return request;
}

const OTHER_NAMES = ['user_id', 'id', 'code', 'latest', 'available', 'limit', 'after', 'sale_id'];
const NASTY_KEYS: Seg[] = [
  text('__proto__'), raw('__proto__[polluted]', '__proto__[polluted]'), raw('constructor[prototype][polluted]', 'constructor[prototype][polluted]'),
  text('constructor'), text('prototype'), text('toString'), text('hasOwnProperty'), text('valueOf'), text('ID'), text('Id'),
  raw('id[]', 'id[]'), raw('id%20', 'id '), raw('%20id', ' id'), raw('user%5Fid%00', 'user_id\0'), raw('user+id', 'user id'),
  raw('code%FF', null), raw('%FF', null), raw('', ''), text("' or 1=1 --"), text('<script>'),
];

function keyFor(name: string): fc.Arbitrary<Seg[]> {
  return fc.oneof({ weight: 8, arbitrary: fc.constant<Seg[]>([text(name)]) }, { weight: 1, arbitrary: fc.boolean().map((lower): Seg[] => [percentAll(name, lower)]) });
}

// A well-formed value: plain, or with every byte percent-encoded.
function wellFormedSegs(valid: fc.Arbitrary<string>): fc.Arbitrary<Seg[]> {
  return fc.oneof(
    { weight: 6, arbitrary: valid.map((value) => [text(value)]) },
    { weight: 1, arbitrary: fc.tuple(valid, fc.boolean()).map(([value, lower]) => [percentAll(value, lower)]) },
  );
}

// Requests of one endpoint: two thirds anything goes, one third the parameters well-formed, each at
// most once (unknown extras still come along), so that valid requests are common too.
function requestArbitrary(endpoint: Endpoint, options: { badPathEscapes: boolean }): fc.Arbitrary<Req> {
  const queryRaws = [...RAW_VALID, ...RAW_INVALID];
  const pathRaws = options.badPathEscapes ? queryRaws : RAW_VALID;
  const anyText = fc.oneof(fc.string({ unit: 'binary', maxLength: 12 }), fc.constantFrom(...OTHER_NAMES));
  const extra = fc.record({
    key: fc.oneof(fc.constantFrom(...NASTY_KEYS).map((seg) => [seg]), anyText.map((name) => [text(name)])),
    value: fc.option(valueSegs(anyText, queryRaws), { nil: null }),
    order: fc.nat(),
  });

  const build = (wellFormed: boolean) => {
    const entryFor = (param: Param) =>
      fc.record({
        key: keyFor(param.name),
        value: wellFormed
          ? wellFormedSegs(param.valid())
          : fc.oneof({ weight: 12, arbitrary: valueSegs(param.valid(), queryRaws) }, { weight: 1, arbitrary: fc.constant(null) }),
        order: fc.nat(),
      });
    const occurrences = (param: Param) =>
      fc.oneof(
        { weight: param.required && wellFormed ? 0 : 1, arbitrary: fc.constant([] as Entry[]) },
        { weight: 6, arbitrary: entryFor(param).map((entry) => [entry]) },
        { weight: wellFormed ? 0 : 1, arbitrary: fc.array(entryFor(param), { minLength: 2, maxLength: 3 }) },
      );
    const path = endpoint.pathParam
      ? wellFormed
        ? wellFormedSegs(endpoint.pathParam.valid())
        : valueSegs(endpoint.pathParam.valid(), pathRaws)
      : fc.constant(undefined);
    return fc
      .record({
        path,
        known: fc.tuple(...endpoint.params.map(occurrences)),
        extras: fc.oneof({ weight: 3, arbitrary: fc.constant([] as Entry[]) }, { weight: 2, arbitrary: fc.array(extra, { minLength: 1, maxLength: 3 }) }),
        separator: fc.constantFrom('&', '&', '&', '&&'),
        bareQuestionMark: fc.boolean(),
      })
      .map(({ path, known, extras, separator, bareQuestionMark }) =>
        makeRequest(endpoint, path, [...(known as Entry[][]).flat(), ...extras], separator, bareQuestionMark),
      );
  };
  return fc.oneof({ weight: 2, arbitrary: build(false) }, { weight: 1, arbitrary: build(true) });
}

// ---------------------------------------------------------------------------------------------
// Checks of one exchange

type Snapshot = {
  sales: number;
  salesHash: string;
  items: number;
  sold: number;
  soldHash: string;
  buyers: number;
  buyersHash: string;
  attempts: number;
  maxAttempt: number;
  attemptsHash: string;
};

// Everything a request could change, as comparable values; attemptsHash covers the rows up to `upTo`.
async function snapshot(upTo?: number): Promise<Snapshot> {
  const [row] = await database.sql<Snapshot[]>`
    with bound as (select coalesce(${upTo ?? null}::bigint, (select max(id) from checkout_attempts), 0) as id)
    select (select count(*) from sales) as sales,
           (select coalesce(md5(string_agg(concat_ws('|', id, starts_at, size, per_user_limit), ',' order by id)), '') from sales) as "salesHash",
           (select count(*) from items) as items,
           (select count(*) from items where buyer_id is not null) as sold,
           (select coalesce(md5(string_agg(concat_ws('|', id, sale_id, seed, buyer_id, purchase_code, sold_at), ',' order by id)), '')
              from items where buyer_id is not null) as "soldHash",
           (select count(*) from sale_buyers) as buyers,
           (select coalesce(md5(string_agg(concat_ws('|', sale_id, user_id, bought), ',' order by sale_id, user_id)), '') from sale_buyers) as "buyersHash",
           (select count(*) from checkout_attempts) as attempts,
           (select coalesce(max(id), 0) from checkout_attempts) as "maxAttempt",
           (select coalesce(md5(string_agg(
              concat_ws('|', id, created_at, outcome, coalesce(user_id, '∅'), coalesce(item_id::text, '∅'), coalesce(sale_id::text, '∅'),
                        coalesce(code, '∅'), coalesce(expires_at::text, '∅'), coalesce(detail, '∅')), ',' order by id)), '')
              from checkout_attempts where id <= (select id from bound)) as "attemptsHash"`;
  return row!;
}

type Attempt = { id: number; outcome: string; userId: string | null; itemId: number | null; saleId: number | null; code: string | null; detail: string | null };

async function attemptsAfter(id: number): Promise<Attempt[]> {
  return database.sql<Attempt[]>`
    select id, outcome, user_id as "userId", item_id as "itemId", sale_id as "saleId", code, detail
    from checkout_attempts where id > ${id} order by id`;
}

const STACK = /\n\s*at\s|\bat (?:async )?(?:\S+ \()?(?:file:\/\/|node:|\/|[A-Za-z]:\\)|node_modules|\.[cm]?[jt]s:\d+/;
const SQL = /\b(?:select|insert\s+into|delete\s+from|update\s+\w+\s+set|drop\s+table)\b|syntax error|relation "|violates|postgres|invalid input syntax|out of range for type|\bbigint\b|sqlstate|checkout_attempts|sale_buyers/i;

type Reply = Awaited<ReturnType<typeof inject>>;
type ErrorBody = { error: string; message: string };

// Property 1: the error contract. Returns the error code.
function assertErrorReply(reply: Reply, context: string): string {
  assert.ok(reply.statusCode >= 400 && reply.statusCode < 500, `a 4xx, not ${reply.statusCode}: ${context}`);
  assert.match(String(reply.headers['content-type']), /^application\/json/, context);
  let body: unknown;
  assert.doesNotThrow(() => (body = JSON.parse(reply.body)), `the body is JSON: ${reply.body.slice(0, 300)}`);
  assert.ok(typeof body === 'object' && body !== null && !Array.isArray(body), context);
  assert.deepEqual(Object.keys(body).sort(), ['error', 'message'], `exactly error and message: ${reply.body.slice(0, 300)}`);
  const { error, message } = body as ErrorBody;
  assert.equal(typeof error, 'string', context);
  assert.ok(Object.hasOwn(errorStatus, error), `"${error}" is a stable code of errorStatus: ${context}`);
  assert.equal(errorStatus[error as keyof typeof errorStatus], reply.statusCode, `errorStatus.${error} is the status: ${context}`);
  assert.equal(typeof message, 'string', context);
  assert.ok(message.length > 0, `a message: ${context}`);
  // The not-found message quotes the (percent-encoded) path: judge what the service wrote, not what it quotes.
  const own = message.replace(/^No route (?:GET|POST) \S*/, 'No route');
  assert.doesNotMatch(own, STACK, `no stack trace: ${message.slice(0, 300)}`);
  assert.doesNotMatch(own, SQL, `no SQL: ${message.slice(0, 300)}`);
  return error;
}

const TOP_KEYS: Record<string, string[]> = {
  'POST /checkout': ['code', 'expires_at', 'item_id', 'sale_id', 'user_id'],
  'POST /purchase': ['code', 'item_id', 'message', 'purchased_at', 'sale_id', 'user_id'],
  'GET /sales': ['next_after', 'next_sale_at', 'sales'],
  'GET /sales/{id}': ['id', 'items', 'open', 'per_user_limit', 'sold', 'starts_at'],
  'GET /sales/{id}/items': ['items', 'next_after'],
  'GET /items/{id}': ['id', 'image_url', 'name', 'sale_id', 'sold'],
  'GET /users/{user_id}/purchases': ['purchases', 'user_id'],
};

function assertSuccessReply(request: Req, reply: Reply, context: string): void {
  if (request.endpoint.name === 'GET /items/{id}/image') {
    assert.match(String(reply.headers['content-type']), /^image\/svg\+xml/, context);
    assert.ok(reply.body.startsWith('<svg'), context);
    return;
  }
  assert.match(String(reply.headers['content-type']), /^application\/json/, context);
  const body = reply.json() as Record<string, unknown>;
  assert.deepEqual(Object.keys(body).sort(), TOP_KEYS[request.endpoint.name], context);
  if (request.endpoint.name === 'GET /users/{user_id}/purchases') {
    assert.equal(body.user_id, request.path, context);
    const saleFilter = request.query.get('sale_id')?.[0];
    const owned = fixtures.purchasesOf.get(request.path!) ?? 0;
    const expected = saleFilter === undefined || Number(saleFilter) === fixtures.saleId ? owned : 0;
    assert.equal((body.purchases as unknown[]).length, expected, context);
  }
}

const one = (request: Req, name: string): string => request.query.get(name)![0]!;

// What a valid request answers, narrowed with the fixtures where they decide it.
function expectedReplies(request: Req): [number, string | null][] {
  const { endpoint } = request;
  const itemAnswer = (id: number, unknown: string): [number, string | null][] | undefined => {
    if (fixtures.itemIdSet.has(id)) return [[200, null]];
    if (id > fixtures.maxItemId + 10 * SALE_SIZE) return [[404, unknown]];
    return undefined;
  };
  const saleAnswer = (id: number): [number, string | null][] | undefined => {
    if (id === fixtures.saleId) return [[200, null]];
    if (id > fixtures.saleId + 1000) return [[404, 'not_found']];
    return undefined;
  };
  let narrowed: [number, string | null][] | undefined;
  switch (endpoint.name) {
    case 'POST /checkout': {
      const id = Number(one(request, 'id'));
      narrowed = fixtures.soldIds.includes(id) ? [[409, 'item_sold']] : itemAnswer(id, 'item_unknown');
      break;
    }
    case 'POST /purchase':
      narrowed = [fixtures.codes.get(one(request, 'code')) ?? [404, 'code_unknown']];
      break;
    case 'GET /sales/{id}':
    case 'GET /sales/{id}/items':
      narrowed = saleAnswer(Number(request.path));
      break;
    case 'GET /items/{id}':
    case 'GET /items/{id}/image':
      narrowed = itemAnswer(Number(request.path), 'item_unknown');
      break;
  }
  return narrowed ?? endpoint.documented;
}

const CHECKOUT_OUTCOME: Record<string, string> = { '200': 'issued', '400:bad_request': 'bad_request', '404:item_unknown': 'item_unknown', '409:item_sold': 'item_sold' };

type Stats = Map<string, { count: number; example: string }>;

// One exchange and every property that applies to it.
async function exercise(request: Req, stats?: Stats): Promise<void> {
  const context = describeRequest.call(request);
  const before = await snapshot();
  const reply = await inject(request.method, request.url);
  const afterwards = await snapshot(before.maxAttempt);
  const status = reply.statusCode;

  // Never a 5xx; every error follows the contract.
  assert.ok(status < 500, `no 5xx, got ${status} ${reply.body.slice(0, 200)}: ${context}`);
  const error = status >= 400 ? assertErrorReply(reply, context) : null;
  if (stats) {
    const key = `${request.verdict.padEnd(9)} ${status} ${error ?? ''}`;
    const seen = stats.get(key);
    if (seen) seen.count += 1;
    else stats.set(key, { count: 1, example: `${request.method} ${request.url.length > 90 ? `${request.url.slice(0, 90)}… (${request.url.length} characters)` : request.url}` });
  }

  if (request.verdict === 'malformed') {
    // Refused as malformed, not answered as if it were valid (a 404 code_unknown for a 21-character code).
    const refusal = request.dotSegment ? [404, 'not_found'] : [400, 'bad_request'];
    assert.deepEqual([status, error], refusal, `a malformed request is refused as such: ${context}`);
  } else {
    const allowed = expectedReplies(request);
    assert.ok(
      allowed.some(([s, code]) => s === status && code === error),
      `${request.verdict} request: expected one of ${allowed.map(([s, code]) => `${s} ${code ?? ''}`).join(', ')}, got ${status} ${reply.body.slice(0, 200)}: ${context}`,
    );
    if (status < 300) assertSuccessReply(request, reply, context);
  }

  // Nothing in the process was polluted through a query key.
  assert.equal(Object.hasOwn(Object.prototype, 'polluted'), false, context);
  assert.equal(({} as Record<string, unknown>).polluted, undefined, context);

  // The database: only the recorded attempt of a checkout.
  const added = await attemptsAfter(before.maxAttempt);
  if (request.endpoint.name === 'POST /checkout') {
    assert.equal(added.length, 1, `a checkout adds exactly one attempt: ${context}`);
    const row = added[0]!;
    assert.equal(row.outcome, CHECKOUT_OUTCOME[error === null ? String(status) : `${status}:${error}`], `the attempt's outcome agrees with ${status} ${error}: ${context}`);
    if (request.verdict === 'malformed') assert.equal(row.outcome, 'bad_request', context);
    if (row.outcome === 'bad_request') {
      assert.equal(row.code, null, context);
      assert.equal(row.saleId, null, context);
      assert.ok(row.detail !== null && row.detail.startsWith('/checkout'), context);
      const userIds = request.query.get('user_id') ?? [];
      const ids = request.query.get('id') ?? [];
      if (userIds.length === 1 && userIds[0] !== null) {
        // What the client sent, without NUL bytes, cut to 100 characters (as PostgreSQL stores UTF-16 halves).
        assert.equal(row.userId, Buffer.from(userIds[0]!.replaceAll('\0', '').slice(0, 100)).toString(), context);
      }
      if (userIds.length !== 1) assert.equal(row.userId, null, context);
      assert.equal(row.itemId, ids.length === 1 && ids[0] !== null && isId(ids[0]!) ? Number(ids[0]) : null, context);
    } else {
      const body = reply.json() as { code?: string };
      assert.equal(row.userId, one(request, 'user_id'), context);
      assert.equal(row.itemId, Number(one(request, 'id')), context);
      assert.equal(row.code, body.code ?? null, context);
    }
    assert.equal(afterwards.attempts, before.attempts + 1, context);
  } else {
    assert.equal(added.length, 0, `no checkout attempt recorded: ${context}`);
    assert.equal(afterwards.attempts, before.attempts, context);
  }
  assert.equal(afterwards.attemptsHash, before.attemptsHash, `earlier attempts untouched: ${context}`);
  const rest = (s: Snapshot) => ({ sold: s.sold, soldHash: s.soldHash, buyers: s.buyers, buyersHash: s.buyersHash });
  assert.deepEqual(rest(afterwards), rest(before), `no item sold, no buyer changed: ${context}`);
  // Reads never write: not even the hour turning makes GET /sales open a sale.
  assert.deepEqual(
    { sales: afterwards.sales, salesHash: afterwards.salesHash, items: afterwards.items },
    { sales: before.sales, salesHash: before.salesHash, items: before.items },
    `sales and items unchanged: ${context}`,
  );
}

function report(t: TestContext, stats: Stats): void {
  for (const [key, { count, example }] of [...stats].sort()) t.diagnostic(`${key.padEnd(28)} ${String(count).padStart(4)}   e.g. ${example}`);
}

// ---------------------------------------------------------------------------------------------
// Properties 1–3, per endpoint

describe('every request, valid or not, answers by the contract and changes only what it records', () => {
  for (const endpoint of endpoints) {
    test(endpoint.name, async (t) => {
      const stats: Stats = new Map();
      const requests = requestArbitrary(endpoint, { badPathEscapes: true });
      await fc.assert(
        fc.asyncProperty(requests, async (request) => {
          // A dot segment is another URL (only a user id "." or ".." is a problem: the bug below).
          fc.pre(!request.dotSegment || request.bugs.has('dot-user-id'));
          await exercise(request, stats);
        }),
        fcParameters(RUNS),
      );
      report(t, stats);
      // The generators reach both sides of the schema.
      assert.ok([...stats.keys()].some((key) => key.startsWith('valid')), 'some valid requests');
      assert.ok([...stats.keys()].some((key) => key.startsWith('malformed')), 'some malformed requests');
    });
  }

  // Random values rarely land on a bound: each parameter is also tried at and just past each of its
  // bounds, alone, with the required others at a valid value.
  test('every parameter at and just past its documented bounds', async () => {
    const validEntry = (param: Param): Entry => ({ key: [text(param.name)], value: [text(EDGES[param.kind][0]!)], order: 0 });
    for (const endpoint of endpoints) {
      const path = endpoint.pathParam ? [text(EDGES[endpoint.pathParam.kind][0]!)] : undefined;
      const required = endpoint.params.filter((param) => param.required);
      for (const param of endpoint.params) {
        for (const value of [...EDGES[param.kind], ...justPast(EDGES[param.kind])]) {
          const others = required.filter((other) => other !== param).map(validEntry);
          await exercise(makeRequest(endpoint, path, [...others, { key: [text(param.name)], value: [text(value)], order: 1 }], '&', false));
        }
      }
      if (!endpoint.pathParam) continue;
      for (const value of [...EDGES[endpoint.pathParam.kind], ...justPast(EDGES[endpoint.pathParam.kind])]) {
        const request = makeRequest(endpoint, [text(value)], required.map(validEntry), '&', false);
        if (!request.dotSegment) await exercise(request);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Bugs these properties found, each kept as the property that found it.

const pathEndpoints = endpoints.filter((endpoint) => endpoint.pathParam);

describe('found by these properties, now fixed', () => {
  test(
    'an invalid percent escape in a path parameter is answered by the error contract',
    {},
    async () => {
      // Only the path parameter: whatever the query, the path decides this.
      const requests = fc
        .constantFrom(...pathEndpoints)
        .chain((endpoint) => fc.tuple(fc.constant(endpoint), valueSegs(endpoint.pathParam!.valid(), [...RAW_VALID, ...RAW_INVALID])))
        .map(([endpoint, path]) => makeRequest(endpoint, path, [], '&', false))
        .filter((request) => request.bugs.has('bad-path-escape'));
      await fc.assert(fc.asyncProperty(requests, async (request) => exercise(request)), fcParameters(30));
    },
  );

  test(
    'a non-finite integer query parameter is refused, not a 500',
    {},
    async () => {
      const integerEndpoints = endpoints.filter((endpoint) => endpoint.params.some((param) => param.kind in INTEGER_RANGE));
      const infinite = fc.oneof(
        fc.constantFrom('Infinity', '-Infinity', '+Infinity', ' Infinity ', '1e400', '-1e999'),
        fc.integer({ min: 309, max: 100_000 }).map((exponent) => `1e${exponent}`),
        fc.integer({ min: 309, max: 5_000 }).map((digits) => '9'.repeat(digits)),
      );
      const requests = fc
        .constantFrom(...integerEndpoints)
        .chain((endpoint) => fc.tuple(fc.constant(endpoint), fc.constantFrom(...endpoint.params.filter((param) => param.kind in INTEGER_RANGE)), infinite))
        .map(([endpoint, param, value]) => {
          // The one parameter alone: every other parameter takes its default.
          const entries: Entry[] = [{ key: [text(param.name)], value: [text(value)], order: 0 }];
          return makeRequest(endpoint, endpoint.pathParam ? [text(String(fixtures.saleId))] : undefined, entries, '&', false);
        });
      await fc.assert(fc.asyncProperty(requests, async (request) => exercise(request)), fcParameters(30));
    },
  );

  test(
    'a user id of only dots is refused everywhere, since a path could never address it',
    {},
    async () => {
      await fc.assert(
        fc.asyncProperty(fc.constantFrom('.', '..', '...', '%2e', '%2E%2E', '.%2e'), async (dots) => {
          const checkout = await inject('POST', `/checkout?user_id=${dots}&id=${fixtures.itemIds[0]}`);
          assert.equal(checkout.statusCode, 400, checkout.body);
          const purchases = await inject('GET', `/users/${dots}/purchases`);
          assert.ok(purchases.statusCode === 400 || purchases.statusCode === 404, purchases.body);
        }),
        fcParameters(10),
      );
    },
  );

});

// ---------------------------------------------------------------------------------------------
// Property 4: no crash, no leak

// --expose-gc from inside the process: the flag exposes gc() to contexts created after it is set.
function exposeGc(): (() => void) | undefined {
  try {
    setFlagsFromString('--expose-gc');
    return runInNewContext('gc') as () => void;
  } catch {
    return undefined;
  }
}

describe('the process survives', () => {
  test('after batches of malformed and valid requests: /health answers, the heap and the pool stay flat', async (t) => {
    const gc = exposeGc();
    const all = fc.oneof(...endpoints.map((endpoint) => requestArbitrary(endpoint, { badPathEscapes: true })));
    const batchSize = Number(process.env.FC_LEAK_BATCH ?? 400);
    const heapAfterBatch: number[] = [];
    const handlesAfterBatch: number[] = [];
    for (let batch = 0; batch < 4; batch += 1) {
      // Generated afresh each time (and dropped), so the batch itself is not what stays on the heap.
      for (const request of fc.sample(all, { numRuns: batchSize, seed: batch })) {
        const reply = await inject(request.method, request.url);
        if (!request.bugs.has('non-finite-integer')) assert.ok(reply.statusCode < 500, `${reply.statusCode} for ${request.method} ${request.url.slice(0, 300)}`);
      }
      for (let round = 0; round < 3; round += 1) {
        gc?.();
        await new Promise((resolve) => setImmediate(resolve));
      }
      heapAfterBatch.push(process.memoryUsage().heapUsed);
      handlesAfterBatch.push(process.getActiveResourcesInfo().length);
    }
    const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;
    t.diagnostic(`gc exposed: ${gc !== undefined}; heap used after each batch of ${batchSize}: ${heapAfterBatch.map(mb).join(', ')}`);
    t.diagnostic(`active handles and requests after each batch: ${handlesAfterBatch.join(', ')}`);
    // Batch 0 warms up (compiled code, caches); from then on the heap may not keep growing.
    const growth = heapAfterBatch.at(-1)! - heapAfterBatch[1]!;
    assert.ok(growth < (gc ? 16 : 30) * 1024 * 1024, `heap grew by ${mb(growth)} over ${2 * batchSize} requests`);
    // Sockets and timers do not pile up either (the pool may open a few more connections).
    assert.ok(handlesAfterBatch.at(-1)! <= handlesAfterBatch[1]! + 20, `active handles: ${handlesAfterBatch.join(', ')}`);

    const health = await inject('GET', '/health');
    assert.equal(health.statusCode, 200, health.body);
    assert.deepEqual(health.json(), { status: 'ok', database: 'ok', redis: 'ok' });
    const [connections] = await database.sql<{ count: number }[]>`
      select count(*) as count from pg_stat_activity where datname = ${database.name}`;
    assert.ok(connections!.count <= testApp.config.databasePoolMax + 4 + 1, `${connections!.count} connections to the test database`);
    assert.deepEqual(problems, [], 'no unhandled rejection or uncaught exception');
  });
});

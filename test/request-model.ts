// The model behind test/properties.test.ts: requests as segments whose decoding is known, generators of
// valid and malformed values, the endpoints, and the oracle that says from the documented rules (not the
// schemas' patterns) whether a request is valid and what a valid one may answer.
import fc from 'fast-check';

export const SALE_SIZE = 10_000;
// Ids and cursors are at most 15 digits (src/schemas.ts), safely below 2^53.
export const MAX_ID = 999_999_999_999_999;

// Filled by the test file's before(): the app's sale, and codes in every documented state (none of which
// a request can change).
export const fixtures = {
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

// ---------------------------------------------------------------------------------------------
// Requests as segments whose decoding is known: `enc` goes into the URL as is; `q` is what it decodes
// to in a query string, `p` in a path parameter; null means it is not valid percent-encoding.

export type Seg = { enc: string; q: string | null; p: string | null };

export const text = (value: string): Seg => ({ enc: encodeURIComponent(value), q: value, p: value });
export const raw = (enc: string, q: string | null, p: string | null = q): Seg => ({ enc, q, p });

// Every UTF-8 byte as %XX: decodes to the same value.
export function percentAll(value: string, lower: boolean): Seg {
  const hex = [...Buffer.from(value, 'utf8')].map((byte) => `%${byte.toString(16).padStart(2, '0')}`).join('');
  return { enc: lower ? hex : hex.toUpperCase(), q: value, p: value };
}

// Raw escapes. Each is complete on its own (none can absorb the characters after it into an escape).
export const RAW_VALID: Seg[] = [
  raw('%00', '\0'), raw('%20', ' '), raw('+', ' ', '+'), raw('%2B', '+'), raw('%2b', '+'), raw('%26', '&'), raw('%3D', '='),
  raw('%25', '%'), raw('%2F', '/'), raw('%3F', '?'), raw('%23', '#'), raw('%0A', '\n'), raw('%0d%0a', '\r\n'), raw('%09', '\t'),
  raw('%7F', '\x7f'), raw('%27', "'"), raw('%3B', ';'), raw('%22', '"'), raw('%5C', '\\'), raw('%2e%2e%2f', '../'),
  raw('%31', '1'), raw('%35', '5'), raw('%41', 'A'), raw('%5F', '_'), raw('%C3%A9', 'é'), raw('%E2%80%8B', '\u200b'),
  raw('%EF%BB%BF', '\ufeff'), raw('%C2%A0', '\u00a0'), raw('%EF%BC%91', '１'), raw('%D9%A1', '١'), raw('%F0%9F%98%80', '😀'),
  raw('%3Cscript%3E', '<script>'), raw('%24%7B%7D', '${}'),
];
// Not UTF-8, or not an escape: %FF, truncated and overlong sequences (%C0%B1 is an overlong "1"), a
// UTF-16 surrogate (%ED%A0%80), a code point past U+10FFFF, a bare % before non-hex characters.
export const RAW_INVALID: Seg[] = [
  raw('%FF', null), raw('%fe', null), raw('%C3%28', null), raw('%E2%82', null), raw('%ED%A0%80', null), raw('%C0%AF', null),
  raw('%C0%B1', null), raw('%F4%90%80%80', null), raw('%F8%88%80%80%80', null), raw('%80', null), raw('%G', null), raw('%2G', null),
  raw('%ZZ', null), raw('%-1', null),
];

export const INJECTIONS = [
  "' or 1=1 --", "1' or '1'='1", '1; drop table items', '1); drop table items; --', "1 union select * from items --", '${}', '${7*7}',
  '{{7*7}}', '<script>alert(1)</script>', '../../etc/passwd', '..\\..\\windows\\win.ini', '%s%s%n', '\\x00', 'null', 'undefined',
  'NaN', 'true', 'false', '[]', '{}', '__proto__', 'constructor', '$where', '*', '-0', '0', '00', '01',
];
export const PREFIXES = ['', '', ' ', '  ', '\t', '\n', '+', '-', '0', '00', '0x', '\u00a0', '\ufeff', '\u200b'];
export const SUFFIXES = ['', '', ' ', '\t', '\n', '.0', '.5', 'e0', 'e3', 'E-1', 'n', 'x', '\0', '\u200b', '%', '&', '=', "'"];

// Values meant to be wrong, though the model judges each one: some happen to be valid.
export function garbage(valid: fc.Arbitrary<string>): fc.Arbitrary<string> {
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
export function valueSegs(valid: fc.Arbitrary<string>, raws: Seg[]): fc.Arbitrary<Seg[]> {
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

export type Kind = 'userId' | 'id' | 'code' | 'latest' | 'salesLimit' | 'limit' | 'after' | 'available';
export type Verdict = 'valid' | 'malformed';
export type Param = { name: string; kind: Kind; required: boolean; valid: () => fc.Arbitrary<string> };
export type Endpoint = {
  name: string;
  method: 'GET' | 'POST';
  path: (param: string) => string;
  pathParam?: { kind: Kind; valid: () => fc.Arbitrary<string> };
  params: Param[];
  // What a valid request may answer: [status, error code] (null for a 2xx).
  documented: [number, string | null][];
};

// The documented rules (README's API section), stated without the schemas' regular expressions.
export const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
export const USER_ID_SYMBOLS = '_.:@-';
export const isAsciiLetterOrDigit = (char: string) => (char >= 'a' && char <= 'z') || (char >= 'A' && char <= 'Z') || (char >= '0' && char <= '9');
export const isDigits = (value: string) => value.length > 0 && [...value].every((char) => char >= '0' && char <= '9');

// 1 to 64 characters, each an ASCII letter, a digit or one of _ . : @ -; not dots alone ("." and ".."
// vanish from URL paths).
export function isUserId(value: string): boolean {
  const chars = [...value];
  return chars.length >= 1 && chars.length <= 64 && chars.every((char) => isAsciiLetterOrDigit(char) || USER_ID_SYMBOLS.includes(char)) && chars.some((char) => char !== '.');
}

// A whole number from min to max written plainly: digits only, no sign, no leading zero.
export function isWholeNumber(value: string, min: bigint, max: bigint): boolean {
  if (!isDigits(value)) return false;
  const number = BigInt(value);
  return number.toString() === value && number >= min && number <= max;
}

// A positive whole number of at most 15 digits.
export const isId = (value: string) => isWholeNumber(value, 1n, BigInt(MAX_ID));

// 22 characters of the base64url alphabet.
export const isCode = (value: string) => value.length === 22 && [...value].every((char) => BASE64URL.includes(char));

export const INTEGER_RANGE: Partial<Record<Kind, [number, number]>> = { latest: [1, 100], salesLimit: [1, 100], limit: [1, 500], after: [0, MAX_ID] };

// The longest and shortest valid values of each kind, which the generators step just past.
export const EDGES: Record<Kind, string[]> = {
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
export function justPast(edges: string[]): string[] {
  return edges.flatMap((value) => {
    const numbers = /^[0-9]+$/.test(value) ? [String(BigInt(value) - 1n), String(BigInt(value) + 1n)] : [];
    return [value.slice(0, -1), value + value.at(-1)!, '.'.repeat(value.length), ...numbers];
  });
}

export const validUserId = () => fc.oneof(fc.constantFrom(fixtures.buyer, fixtures.greedy, 'prop-loser', 'A.b_c-d:e@f'), fc.string({ unit: fc.constantFrom(...'abcXYZ019', ...USER_ID_SYMBOLS), minLength: 1, maxLength: 64 }).filter(isUserId));
export const validItemId = () =>
  fc.oneof(
    fc.constantFrom(...fixtures.itemIds.slice(0, 40), ...fixtures.soldIds).map(String),
    fc.integer({ min: 1, max: 999_999_999_999_999 }).map(String),
    fc.constantFrom('999999999999999', '1'),
  );
export const validSaleId = () => fc.oneof(fc.constant(String(fixtures.saleId)), fc.integer({ min: 1, max: 999_999_999_999_999 }).map(String));
export const validCode = () => fc.oneof(fc.constantFrom(...fixtures.codes.keys()), fc.string({ unit: fc.constantFrom(...BASE64URL), minLength: 22, maxLength: 22 }));

export const endpoints: Endpoint[] = [
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
export function ajvCoercesInteger(value: string): boolean {
  const number = Number(value);
  return value !== '' && !Number.isNaN(number) && !(number % 1);
}

export function judge(kind: Kind, value: string | null): Verdict {
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

export function nonFiniteInteger(kind: Kind, value: string | null): boolean {
  return kind in INTEGER_RANGE && value !== null && ajvCoercesInteger(value) && !Number.isFinite(Number(value));
}

export type Entry = { key: Seg[]; value: Seg[] | null; order: number };
export type Req = {
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

export const join = (segs: Seg[], side: 'q' | 'p'): string | null => (segs.some((seg) => seg[side] === null) ? null : segs.map((seg) => seg[side]).join(''));

export function describeRequest(this: Req): string {
  const url = this.url.length > 600 ? `${this.url.slice(0, 300)} …(${this.url.length} characters)… ${this.url.slice(-200)}` : this.url;
  return `${this.method} ${url} (${this.verdict}${this.bugs.size > 0 ? `; known bug: ${[...this.bugs].join(', ')}` : ''})`;
}

export function makeRequest(endpoint: Endpoint, pathSegs: Seg[] | undefined, entries: Entry[], separator: string, bareQuestionMark: boolean): Req {
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

export const OTHER_NAMES = ['user_id', 'id', 'code', 'latest', 'available', 'limit', 'after', 'sale_id'];
export const NASTY_KEYS: Seg[] = [
  text('__proto__'), raw('__proto__[polluted]', '__proto__[polluted]'), raw('constructor[prototype][polluted]', 'constructor[prototype][polluted]'),
  text('constructor'), text('prototype'), text('toString'), text('hasOwnProperty'), text('valueOf'), text('ID'), text('Id'),
  raw('id[]', 'id[]'), raw('id%20', 'id '), raw('%20id', ' id'), raw('user%5Fid%00', 'user_id\0'), raw('user+id', 'user id'),
  raw('code%FF', null), raw('%FF', null), raw('', ''), text("' or 1=1 --"), text('<script>'),
];

export function keyFor(name: string): fc.Arbitrary<Seg[]> {
  return fc.oneof({ weight: 8, arbitrary: fc.constant<Seg[]>([text(name)]) }, { weight: 1, arbitrary: fc.boolean().map((lower): Seg[] => [percentAll(name, lower)]) });
}

// A well-formed value: plain, or with every byte percent-encoded.
export function wellFormedSegs(valid: fc.Arbitrary<string>): fc.Arbitrary<Seg[]> {
  return fc.oneof(
    { weight: 6, arbitrary: valid.map((value) => [text(value)]) },
    { weight: 1, arbitrary: fc.tuple(valid, fc.boolean()).map(([value, lower]) => [percentAll(value, lower)]) },
  );
}

// Requests of one endpoint: two thirds anything goes, one third the parameters well-formed, each at
// most once (unknown extras still come along), so that valid requests are common too.
export function requestArbitrary(endpoint: Endpoint, options: { badPathEscapes: boolean }): fc.Arbitrary<Req> {
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

export const one = (request: Req, name: string): string => request.query.get(name)![0]!;

// What a valid request answers, narrowed with the fixtures where they decide it.
export function expectedReplies(request: Req): [number, string | null][] {
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

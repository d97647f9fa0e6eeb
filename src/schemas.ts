// Request and response schemas of every route: Fastify validates the first and compiles the second.

// Not dots alone: "." and ".." vanish from a URL path, so such a user could never be addressed.
const userId = {
  type: 'string',
  pattern: '^(?!\\.+$)[A-Za-z0-9_.:@-]{1,64}$',
  description: '1 to 64 letters, digits or _ . : @ -, not only dots',
} as const;
// Ids are strings of digits in the query, converted by the handler: no "1e3", " 7" or "0x10" slips through.
const id = { type: 'string', pattern: '^[1-9][0-9]{0,14}$', description: 'A positive whole number' } as const;
// Whole numbers in a range, as strings of digits matched by a pattern: Ajv's number coercion would let
// "1e309" (Infinity), " 5" or "0x10" through. The handlers convert them.
const digits = (pattern: string, fallback: number, description: string) =>
  ({ type: 'string', pattern, default: String(fallback), description }) as const;

const timestamp = { type: 'string', format: 'date-time' } as const;

const error = {
  type: 'object',
  required: ['error', 'message'],
  properties: { error: { type: 'string' }, message: { type: 'string' } },
} as const;

const errors = { '4xx': error, '5xx': error } as const;

const item = {
  type: 'object',
  required: ['id', 'sale_id', 'name', 'image_url', 'sold'],
  properties: {
    id: { type: 'integer' },
    sale_id: { type: 'integer' },
    name: { type: 'string' },
    image_url: { type: 'string' },
    sold: { type: 'boolean' },
  },
} as const;

const sale = {
  type: 'object',
  required: ['id', 'starts_at', 'items', 'sold', 'per_user_limit', 'open'],
  properties: {
    id: { type: 'integer' },
    starts_at: timestamp,
    items: { type: 'integer' },
    sold: { type: 'integer' },
    per_user_limit: { type: 'integer' },
    open: { type: 'boolean' },
  },
} as const;

const receipt = {
  type: 'object',
  required: ['message', 'code', 'item_id', 'sale_id', 'user_id', 'purchased_at'],
  properties: {
    message: { type: 'string' },
    code: { type: 'string' },
    item_id: { type: 'integer' },
    sale_id: { type: 'integer' },
    user_id: { type: 'string' },
    purchased_at: timestamp,
  },
} as const;

export const checkoutSchema = {
  summary: "Check an item out: a code bound to this user and item, valid for CODE_TTL; every attempt is recorded",
  tags: ['buy'],
  querystring: { type: 'object', required: ['user_id', 'id'], properties: { user_id: userId, id } },
  response: {
    200: {
      type: 'object',
      required: ['code', 'user_id', 'item_id', 'sale_id', 'expires_at'],
      properties: {
        code: { type: 'string' },
        user_id: { type: 'string' },
        item_id: { type: 'integer' },
        sale_id: { type: 'integer' },
        expires_at: timestamp,
      },
    },
    ...errors,
  },
} as const;

export const purchaseSchema = {
  summary: "Buy the code's item; replaying a successful code answers the same receipt",
  tags: ['buy'],
  querystring: {
    type: 'object',
    required: ['code'],
    properties: { code: { type: 'string', pattern: '^[A-Za-z0-9_-]{22}$', description: 'The 22-character code from checkout' } },
  },
  response: { 200: receipt, ...errors },
} as const;

const dependency = { type: 'string', enum: ['ok', 'error'] } as const;
const health = {
  type: 'object',
  required: ['status', 'database', 'redis'],
  properties: { status: dependency, database: dependency, redis: { type: 'string', enum: ['ok', 'error', 'disabled'] } },
} as const;

export const healthSchema = {
  summary: "State of the PostgreSQL and Redis connections",
  tags: ['operate'],
  response: { 200: health, 503: health },
} as const;

export const livezSchema = {
  summary: 'Liveness: the process runs (touches no dependency)',
  tags: ['operate'],
  response: { 200: { type: 'object', required: ['status'], properties: { status: { type: 'string', enum: ['ok'] } } } },
} as const;

const readiness = {
  type: 'object',
  required: ['status', 'database', 'schema', 'expected_schema'],
  properties: {
    status: dependency,
    database: dependency,
    schema: { type: ['string', 'null'], description: 'The newest migration applied to the database' },
    expected_schema: { type: 'string', description: 'The newest migration this instance knows' },
  },
} as const;

export const readyzSchema = {
  summary: 'Readiness: PostgreSQL answers and its schema is the one this instance expects (Redis is not needed)',
  tags: ['operate'],
  response: { 200: readiness, 503: readiness },
} as const;

export const salesSchema = {
  summary: "Open sales, newest first, a keyset page at a time; the first page also lists the latest sales, open or not",
  description: 'Served from a snapshot at most a second old (SALES_SNAPSHOT_MS), with an ETag.',
  tags: ['browse'],
  querystring: {
    type: 'object',
    properties: {
      limit: digits('^(100|[1-9][0-9]?)$', 20, 'A whole number from 1 to 100: the open sales per page'),
      after: { ...id, description: 'The next_after of the previous page, a positive whole number' },
      latest: digits('^(100|[1-9][0-9]?)$', 5, 'A whole number from 1 to 100: the recent sales, open or not, listed on the first page too'),
    },
  },
  response: {
    200: {
      type: 'object',
      required: ['sales', 'next_after', 'next_sale_at'],
      properties: {
        sales: { type: 'array', items: sale },
        next_after: { type: ['integer', 'null'], description: 'Pass as after for the next page of open sales (null on the last)' },
        next_sale_at: timestamp,
      },
    },
    ...errors,
  },
} as const;

export const saleSchema = {
  summary: "One sale with its sold count",
  tags: ['browse'],
  params: { type: 'object', required: ['id'], properties: { id } },
  response: { 200: sale, ...errors },
} as const;

export const saleItemsSchema = {
  summary: "A sale's items in id order, a keyset page at a time",
  tags: ['browse'],
  params: { type: 'object', required: ['id'], properties: { id } },
  querystring: {
    type: 'object',
    properties: {
      available: { type: 'boolean', default: false, description: 'True or false: only items not yet sold' },
      limit: digits('^(500|[1-4][0-9]{2}|[1-9][0-9]?)$', 100, 'A whole number from 1 to 500: the items per page'),
      after: digits('^(0|[1-9][0-9]{0,14})$', 0, 'The last item id of the previous page, a whole number'),
    },
  },
  response: {
    200: {
      type: 'object',
      required: ['items', 'next_after'],
      properties: { items: { type: 'array', items: item }, next_after: { type: ['integer', 'null'] } },
    },
    ...errors,
  },
} as const;

export const itemSchema = {
  summary: "One item with its generated name",
  tags: ['browse'],
  params: { type: 'object', required: ['id'], properties: { id } },
  response: { 200: item, ...errors },
} as const;

export const itemImageSchema = {
  summary: "The item's generated SVG image",
  tags: ['browse'],
  params: { type: 'object', required: ['id'], properties: { id } },
  response: { ...errors },
} as const;

export const userPurchasesSchema = {
  summary: "What a user bought, newest first",
  tags: ['browse'],
  params: { type: 'object', required: ['user_id'], properties: { user_id: userId } },
  querystring: { type: 'object', properties: { sale_id: id } },
  response: {
    200: {
      type: 'object',
      required: ['user_id', 'purchases'],
      properties: {
        user_id: { type: 'string' },
        purchases: {
          type: 'array',
          items: {
            type: 'object',
            required: ['item_id', 'sale_id', 'name', 'image_url', 'purchased_at'],
            properties: {
              item_id: { type: 'integer' },
              sale_id: { type: 'integer' },
              name: { type: 'string' },
              image_url: { type: 'string' },
              purchased_at: timestamp,
            },
          },
        },
      },
    },
    ...errors,
  },
} as const;

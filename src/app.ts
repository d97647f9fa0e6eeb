// Builds the Fastify application with every route and the one error boundary. Never listens.
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import fastifySwagger from '@fastify/swagger';
import fastifySwaggerUi from '@fastify/swagger-ui';
import Fastify, { LogController, type FastifyError, type FastifyReply, type FastifyRequest, type FastifySchemaValidationError } from 'fastify';
import type { Config } from './config.ts';
import { AppError, errorStatus, messages, type ErrorCode } from './errors.ts';
import { isDatabaseUnavailable } from './db.ts';
import { registerRateLimits } from './rate-limits.ts';
import { createSnapshots } from './listing.ts';
import { createMetrics } from './metrics.ts';
import { registerRoutes, type Deps } from './routes.ts';
import { createShop } from './shop.ts';

// Fastify's own refusals (body, content type, route) keep a code whose status the table agrees with.
const clientErrorCodes: Record<number, ErrorCode> = { 404: 'not_found', 413: 'payload_too_large', 415: 'unsupported_media_type' };

type Reply = { status: number; error: ErrorCode | string; message: string };

function toReply(error: FastifyError | AppError | Error): Reply {
  if (error instanceof AppError) return { status: errorStatus[error.code], error: error.code, message: error.message };
  if ('validation' in error && error.validation) {
    return { status: 400, error: 'bad_request', message: error.message };
  }
  if (isDatabaseUnavailable(error)) {
    return { status: 503, error: 'database_unavailable', message: messages.databaseUnavailable() };
  }
  const status = (error as FastifyError).statusCode;
  if (status !== undefined && status >= 400 && status < 500) {
    const code = clientErrorCodes[status] ?? 'bad_request';
    return { status: errorStatus[code], error: code, message: error.message };
  }
  return { status: 500, error: 'internal', message: 'Something went wrong on our side' };
}

// A validation failure in words, from the schema's own description of what the field takes.
function describeInvalid(errors: FastifySchemaValidationError[], where: string): Error {
  const [first] = errors as (FastifySchemaValidationError & { parentSchema?: { description?: string } })[];
  const name = first!.instancePath.slice(1) || where;
  if (first!.keyword === 'required') return new Error(`${String(first!.params.missingProperty)} is required`);
  const description = first!.parentSchema?.description;
  return new Error(description ? `${name} must be ${description[0]!.toLowerCase()}${description.slice(1)}` : `${name} is not valid`);
}

// item_unknown and item_sold were recorded by the checkout statement itself.
function decidedByCheckout(error: Error): boolean {
  return error instanceof AppError && (error.code === 'item_unknown' || error.code === 'item_sold');
}

// What the client sent, for the record of a refused checkout, cut short so that a flood of refusals stays
// small on disk. NUL bytes are not text to PostgreSQL.
function rawCheckout(request: FastifyRequest) {
  const query = request.query as Record<string, unknown> | undefined;
  const userId = typeof query?.user_id === 'string' ? query.user_id.replaceAll('\0', '').slice(0, 100) : null;
  const id = typeof query?.id === 'string' && /^[1-9][0-9]{0,14}$/.test(query.id) ? Number(query.id) : null;
  return { userId, itemId: id, detail: request.url.slice(0, 200) };
}

const publicDir = fileURLToPath(new URL('../public/', import.meta.url));

// How long an idle keep-alive connection stays open. A proxy in front must drop its idle connections
// sooner (deploy/nginx.conf: 4 s), or it may send a request down one the service is closing.
export const keepAliveTimeoutMs = 5_000;

// What Node's HTTP parser refuses before Fastify sees a request (headers over 16 KB, a malformed request
// line, a client too slow to send its request), answered in the service's own error format.
function clientError(error: Error & { code?: string }, socket: Duplex): void {
  if (error.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const [code, message]: [ErrorCode, string] =
    error.code === 'HPE_HEADER_OVERFLOW' ? ['headers_too_large', 'The request headers are larger than 16 KB']
    : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? ['request_timeout', 'The request took too long to arrive']
    : ['bad_request', 'The request is not valid HTTP (a byte outside ASCII in the URL, a malformed line)'];
  const body = JSON.stringify({ error: code, message });
  const status = errorStatus[code];
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

export function buildApp(config: Config, deps: Pick<Deps, 'sql' | 'readSql' | 'probeSql' | 'redis'>) {
  const hops = Number(config.trustProxy);
  const app = Fastify({
    logger: { level: config.logLevel },
    // A line per request costs a visible share of throughput: off unless LOG_REQUESTS asks for it.
    logController: new LogController({ disableRequestLogging: !config.logRequests }),
    // Every log line of a request carries its id (reqId): the caller's X-Request-Id, or a fresh one.
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    bodyLimit: 1024,
    // Validation errors carry the failing field's schema, whose description makes the message.
    ajv: { customOptions: { verbose: true } },
    schemaErrorFormatter: describeInvalid,
    // Long path parameters must reach the schema (a 400), not miss the route (a 404): as long as a URL may be.
    routerOptions: { maxParamLength: 16_384 },
    // The router's own refusals (a malformed URL such as /items/%FF) answer in our error format.
    frameworkErrors: (error, _request, reply) => {
      const response = toReply(error);
      void (reply as FastifyReply).code(response.status).send({ error: response.error, message: response.message });
    },
    clientErrorHandler: clientError,
    trustProxy: typeof config.trustProxy === 'number' ? (_address: string, hop: number) => hop < hops : config.trustProxy,
    requestTimeout: config.requestTimeoutMs,
    connectionTimeout: config.requestTimeoutMs,
    keepAliveTimeout: keepAliveTimeoutMs,
    // While draining, requests already on an open connection are still served (with `Connection: close`):
    // nothing a client sent is dropped; new connections are refused by the closed listener.
    return503OnClosing: false,
  });

  // Draining: Fastify closes only idle connections, and a response to a request in flight at SIGTERM
  // would keep its keep-alive connection open past the grace period. Tell every client to hang up.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id);
    if (closing) reply.header('connection', 'close');
  });

  const metrics = createMetrics({ sql: deps.probeSql, redis: deps.redis, databasePoolMax: config.databasePoolMax });
  const shop = createShop({
    sql: deps.sql,
    metrics,
    codeTtlSeconds: config.codeTtlSeconds,
    batch: { maxBatch: config.batchMax, maxInFlight: config.batchesInFlight, maxQueued: config.queueMax, queueTimeoutMs: config.queueTimeoutMs },
    statementTimeoutMs: config.statementTimeoutMs,
  });
  app.addHook('onResponse', async (request, reply) => {
    metrics.observeRequest(request.method, request.routeOptions.url ?? 'unknown', reply.statusCode, reply.elapsedTime / 1000);
  });

  app.setErrorHandler(async (error: FastifyError, request, reply) => {
    let response = toReply(error);
    // A checkout refused before the checkout statement ran (bad parameters, rate limit, overload) is still
    // an attempt. When it cannot be recorded either (the database is out of reach, or the recording was
    // shed too), the client is refused all the same and the metrics count the attempt.
    const shedding = response.error === 'overloaded';
    if (request.routeOptions.url === '/checkout' && (response.status < 500 || shedding) && !decidedByCheckout(error)) {
      const outcome = shedding ? 'overloaded' : response.error === 'rate_limited' ? 'rate_limited' : 'bad_request';
      try {
        await shop.recordRefusedCheckout({ ...rawCheckout(request), outcome });
        metrics.checkout(outcome);
      } catch (recordError) {
        metrics.unrecordedCheckout(outcome);
        if (!shedding) response = toReply(recordError as Error);
      }
    }
    if (response.status === 503) reply.header('retry-after', 1);
    if (response.status === 500) request.log.error({ err: error }, 'request failed');
    else if (response.error === 'database_unavailable') request.log.warn({ err: error }, 'database unavailable');
    return reply.code(response.status).send({ error: response.error, message: response.message });
  });

  // Every parameter travels in the query string; a form-encoded POST (curl -d '') carries nothing we read.
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_request, _body, done) => done(null, undefined));

  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send({ error: 'not_found', message: `No route ${request.method} ${request.url.split('?')[0]}` });
  });

  // The OpenAPI description is generated from the route schemas; routes register after it to be seen.
  app.register(fastifySwagger, {
    openapi: {
      info: { title: 'flash-sale', version: '1.0.0', description: 'Hourly 10,000-item flash sales: checkout, purchase, browse.' },
    },
  });
  app.register(fastifySwaggerUi, { routePrefix: '/docs' });
  // The storefront: static files, revalidated on every load (they are small and change with deploys).
  app.register(fastifyStatic, { root: publicDir, cacheControl: true, maxAge: 0, etag: true, lastModified: true });
  // The rate limits' hooks and the routes share one plugin context, so the hooks see every route.
  app.register(async (instance) => {
    if (config.rateLimit) await registerRateLimits(instance, deps.redis, config.rateLimit);
    registerRoutes(instance, {
      ...deps,
      metrics,
      rules: { saleIntervalSeconds: config.saleIntervalSeconds, saleSize: config.saleSize, perUserLimit: config.perUserLimit },
      shop,
      snapshots: createSnapshots({ redis: deps.redis, ttlMs: config.salesSnapshotMs }),
      healthTimeoutMs: config.healthTimeoutMs,
    });
  });
  return app;
}

// Rate limits, shared by every instance through Redis: per client address on every API route, per user
// on checkout, and per address on unknown codes (a burst of guessed codes). With Redis down they let
// requests through (degrade open): they protect the service, they never decide a sale.
import rateLimit, { type FastifyRateLimitStoreCtor } from '@fastify/rate-limit';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Redis } from './redis.ts';
import { AppError } from './errors.ts';

export type LimitSettings = { windowMs: number; addressMax: number; userMax: number; badCodeMax: number };

type Status = { ttlInSeconds: number };

function refuse(reply: { header: (name: string, value: number) => unknown }, status: Status): never {
  reply.header('retry-after', status.ttlInSeconds);
  throw new AppError('rate_limited', `Too many requests; retry in ${status.ttlInSeconds} s`);
}

export async function registerRateLimits(app: FastifyInstance, redis: Redis, settings: LimitSettings): Promise<void> {
  const store = redis.rateLimitStore();
  await app.register(rateLimit, {
    // `new Store()` returning an object yields that object: every limiter shares the one Redis store.
    // Without Redis, the plugin's own store: counts per instance.
    store: redis.enabled ? (function RedisStore() {
      return store;
    } as unknown as FastifyRateLimitStoreCtor) : undefined,
    skipOnError: true,
    max: settings.addressMax,
    timeWindow: settings.windowMs,
    keyGenerator: (request) => `address:${request.ip}`,
    errorResponseBuilder: (_request, context) =>
      new AppError('rate_limited', `Too many requests; retry in ${Math.ceil(context.ttl / 1000)} s`),
  });

  const perUser = app.createRateLimit({
    max: settings.userMax,
    timeWindow: settings.windowMs,
    keyGenerator: (request) => `user:${(request.query as { user_id?: string }).user_id}`,
  });
  const badCodes = app.createRateLimit({
    max: settings.badCodeMax,
    timeWindow: settings.windowMs,
    keyGenerator: (request) => `bad-code:${request.ip}`,
  });

  app.addHook('preHandler', async (request: FastifyRequest, reply) => {
    const route = request.routeOptions.url;
    if (route === '/checkout') {
      const status = await perUser(request);
      if (!status.isAllowed && status.isExceeded) refuse(reply, status);
    } else if (route === '/purchase') {
      // A peek: refused once the address has used up its unknown codes (the failures count, in onError).
      const status = await badCodes(request, { increment: false });
      if (!status.isAllowed && status.remaining === 0) refuse(reply, status);
    }
  });
  // Only unknown codes count against the address: buyers with real codes are never slowed by it.
  app.addHook('onError', async (request, _reply, error) => {
    if (error instanceof AppError && error.code === 'code_unknown') await badCodes(request);
  });
}

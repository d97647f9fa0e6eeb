// Thin handlers: read the validated request, call the shop or the store, shape the reply.
import type { FastifyInstance } from 'fastify';
import type { Redis } from './redis.ts';
import { type Sql } from './db.ts';
import { latestMigration } from './migrate.ts';
import type { Snapshots } from './listing.ts';
import type { Metrics } from './metrics.ts';
import { AppError } from './errors.ts';
import { itemImage, itemName } from './item-art.ts';
import * as schemas from './schemas.ts';
import * as shop from './shop.ts';
import * as store from './store.ts';

export type Deps = {
  sql: Sql;
  // /health, /readyz and /metrics: a connection of their own, so that probes never take one from the sale.
  probeSql: Sql;
  // Read-only endpoints use this one: a replica when READ_DATABASE_URL is set, else the primary.
  readSql: Sql;
  snapshots: Snapshots;
  redis: Redis;
  metrics: Metrics;
  rules: store.SaleRules;
  shop: shop.Shop;
  healthTimeoutMs: number;
};

type IdParams = { Params: { id: string } };

function withTimeout(work: Promise<unknown>, ms: number): Promise<'ok' | 'error'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'error'>((resolve) => {
    timer = setTimeout(() => resolve('error'), ms);
  });
  return Promise.race([work.then(() => 'ok' as const, () => 'error' as const), timeout]).finally(() => clearTimeout(timer));
}

const itemView = (row: { id: number; saleId: number; seed: number; sold: boolean }) => ({
  id: row.id,
  sale_id: row.saleId,
  name: itemName(row.seed),
  image_url: `/items/${row.id}/image`,
  sold: row.sold,
});

const saleView = (sale: store.SaleSummary) => ({
  id: sale.id,
  starts_at: sale.startsAt.toISOString(),
  items: sale.size,
  sold: sale.sold,
  per_user_limit: sale.perUserLimit,
  open: sale.sold < sale.size,
});

export function registerRoutes(app: FastifyInstance, deps: Deps): void {
  app.post<{ Querystring: { user_id: string; id: string } }>('/checkout', { schema: schemas.checkoutSchema }, async (request) => {
    const issued = await shop.checkout(deps.shop, request.query.user_id, Number(request.query.id));
    return {
      code: issued.code,
      user_id: issued.userId,
      item_id: issued.itemId,
      sale_id: issued.saleId,
      expires_at: issued.expiresAt.toISOString(),
    };
  });

  app.post<{ Querystring: { code: string } }>('/purchase', { schema: schemas.purchaseSchema }, async (request) => {
    const receipt = await shop.purchase(deps.shop, request.query.code);
    return {
      message: 'Purchase successful',
      code: receipt.code,
      item_id: receipt.itemId,
      sale_id: receipt.saleId,
      user_id: receipt.userId,
      purchased_at: receipt.purchasedAt,
    };
  });

  // Probes and scrapes are never rate limited.
  const unlimited = { rateLimit: false };

  app.get('/metrics', { schema: { hide: true }, config: unlimited }, async (_request, reply) => {
    const body = await deps.metrics.registry.metrics();
    return reply.type(deps.metrics.registry.contentType).send(body);
  });

  app.get('/health', { schema: schemas.healthSchema, config: unlimited }, async (_request, reply) => {
    const [database, redis] = await Promise.all([
      withTimeout(store.ping(deps.probeSql), deps.healthTimeoutMs),
      deps.redis.enabled ? withTimeout(deps.redis.ping(), deps.healthTimeoutMs) : ('disabled' as const),
    ]);
    const ok = database === 'ok' && redis !== 'error';
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'error', database, redis });
  });

  // Liveness: the process runs and its event loop turns. Touches no dependency.
  app.get('/livez', { schema: schemas.livezSchema, config: unlimited }, async () => ({ status: 'ok' }));

  // Readiness: PostgreSQL answers and has every migration this code needs. A newer schema is fine: each
  // migration keeps the release before it working, so running instances go on serving through a deploy.
  // Redis is not asked: without it the service still sells correctly.
  const expectedSchema = latestMigration();
  app.get('/readyz', { schema: schemas.readyzSchema, config: unlimited }, async (_request, reply) => {
    let schema = null as string | null;
    const database = await withTimeout(
      store.schemaVersion(deps.probeSql).then((version) => (schema = version)),
      deps.healthTimeoutMs,
    );
    const ready = database === 'ok' && schema !== null && schema >= expectedSchema;
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ok' : 'error', database, schema, expected_schema: expectedSchema });
  });

  app.get<{ Querystring: { limit: string; after?: string; latest: string } }>(
    '/sales',
    { schema: schemas.salesSchema },
    async (request, reply) => {
      const page = {
        limit: Number(request.query.limit),
        after: request.query.after === undefined ? null : Number(request.query.after),
        latest: Number(request.query.latest),
      };
      const snapshot = await deps.snapshots(`sales:${page.limit}:${page.after}:${page.latest}`, async () => {
        deps.metrics.salesListingRead();
        const { sales, nextSaleAt } = await store.listSales(deps.readSql, page, deps.rules.saleIntervalSeconds);
        const open = sales.filter((sale) => sale.sold < sale.size);
        const nextAfter = open.length >= page.limit ? open[page.limit - 1]!.id : null;
        return JSON.stringify({ sales: sales.map(saleView), next_after: nextAfter, next_sale_at: nextSaleAt.toISOString() });
      });
      // A CDN, a proxy or the browser may answer repeats for a second.
      reply.header('cache-control', 'public, max-age=1').header('etag', snapshot.etag);
      if (request.headers['if-none-match'] === snapshot.etag) return reply.code(304).send();
      return reply.type('application/json; charset=utf-8').send(snapshot.text);
    },
  );

  app.get<IdParams>('/sales/:id', { schema: schemas.saleSchema }, async (request, reply) => {
    const sale = await store.getSale(deps.readSql, Number(request.params.id));
    if (!sale) throw new AppError('not_found', `Sale ${request.params.id} does not exist`);
    reply.header('cache-control', 'public, max-age=1');
    return saleView(sale);
  });

  app.get<IdParams & { Querystring: { available: boolean; limit: string; after: string } }>(
    '/sales/:id/items',
    { schema: schemas.saleItemsSchema },
    async (request) => {
      const saleId = Number(request.params.id);
      const page = { available: request.query.available, limit: Number(request.query.limit), after: Number(request.query.after) };
      const items = await store.listItems(deps.readSql, saleId, page);
      if (items.length === 0 && !(await store.getSale(deps.readSql, saleId))) {
        throw new AppError('not_found', `Sale ${saleId} does not exist`);
      }
      const full = items.length === page.limit;
      return { items: items.map(itemView), next_after: full ? items.at(-1)!.id : null };
    },
  );

  app.get<IdParams>('/items/:id', { schema: schemas.itemSchema }, async (request) => {
    const item = await store.getItem(deps.readSql, Number(request.params.id));
    if (!item) throw new AppError('item_unknown', `Item ${request.params.id} does not exist`);
    return itemView(item);
  });

  app.get<IdParams>('/items/:id/image', { schema: schemas.itemImageSchema }, async (request, reply) => {
    const item = await store.getItem(deps.readSql, Number(request.params.id));
    if (!item) throw new AppError('item_unknown', `Item ${request.params.id} does not exist`);
    // The image is a pure function of the item's fixed seed: cache it hard.
    return reply
      .type('image/svg+xml')
      .header('cache-control', 'public, max-age=31536000, immutable')
      .send(itemImage(item.seed));
  });

  app.get<{ Params: { user_id: string }; Querystring: { sale_id?: string } }>(
    '/users/:user_id/purchases',
    { schema: schemas.userPurchasesSchema },
    async (request) => {
      const saleId = request.query.sale_id === undefined ? undefined : Number(request.query.sale_id);
      const rows = await store.userPurchases(deps.readSql, request.params.user_id, saleId);
      return {
        user_id: request.params.user_id,
        purchases: rows.map((row) => ({
          item_id: row.itemId,
          sale_id: row.saleId,
          name: itemName(row.seed),
          image_url: `/items/${row.itemId}/image`,
          purchased_at: row.purchasedAt.toISOString(),
        })),
      };
    },
  );
}

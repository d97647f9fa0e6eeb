// Prometheus metrics: requests by route and status, checkout and purchase outcomes, items sold per
// sale (read from PostgreSQL at scrape time, so every instance reports the same truth), pool state.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Redis } from './redis.ts';
import type { Sql } from './db.ts';
import { connectionStates, listSales } from './store.ts';

export type Metrics = ReturnType<typeof createMetrics>;

export function createMetrics(deps: { sql: Sql; redis: Redis; databasePoolMax: number }) {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });

  const requestDuration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'HTTP request latency by method, route and status',
    labelNames: ['method', 'route', 'status_code'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const checkoutOutcomes = new Counter({
    name: 'checkout_outcomes_total',
    help: 'Checkout requests by outcome',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const purchaseOutcomes = new Counter({
    name: 'purchase_outcomes_total',
    help: 'Purchase requests by outcome',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  new Gauge({
    name: 'sale_items_sold',
    help: 'Items sold per sale (the newest 100 open sales and the latest ones), as sales.sold says at scrape time',
    labelNames: ['sale_id'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      const { sales } = await listSales(deps.sql, { limit: 100, after: null, latest: 5 }, 3600).catch(() => ({ sales: [] }));
      for (const sale of sales) this.set({ sale_id: String(sale.id) }, sale.sold);
    },
  });
  const shedRequests = new Counter({
    name: 'requests_shed_total',
    help: 'Requests answered 503 overloaded without reaching PostgreSQL (queue full or its budget spent), by kind',
    labelNames: ['kind'] as const,
    registers: [registry],
  });
  const unrecordedCheckouts = new Counter({
    name: 'checkout_attempts_unrecorded_total',
    help: 'Refused checkouts that could not be recorded (PostgreSQL out of reach, or the recording shed too), by outcome',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const salesListingReads = new Counter({
    name: 'sales_listing_reads_total',
    help: 'Reads of the sales listing from PostgreSQL (the rest are served from the shared snapshot)',
    registers: [registry],
  });
  new Gauge({ name: 'database_pool_max', help: 'Connections this instance may open to PostgreSQL', registers: [registry] }).set(
    deps.databasePoolMax,
  );
  new Gauge({
    name: 'database_connections',
    help: "PostgreSQL connections of every flash-sale instance to this database, by state (pg_stat_activity)",
    labelNames: ['state'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      const rows = await connectionStates(deps.sql).catch(() => []);
      for (const row of rows) this.set({ state: row.state }, row.count);
    },
  });
  new Gauge({
    name: 'redis_connected',
    help: '1 while the Redis connection is ready, 0 while the service runs without it (rate limits let requests through)',
    registers: [registry],
    collect() {
      this.set(deps.redis.isReady() ? 1 : 0);
    },
  });

  return {
    registry,
    observeRequest(method: string, route: string, statusCode: number, seconds: number): void {
      requestDuration.observe({ method, route, status_code: String(statusCode) }, seconds);
    },
    checkout(outcome: string): void {
      checkoutOutcomes.inc({ outcome });
    },
    purchase(outcome: string): void {
      purchaseOutcomes.inc({ outcome });
    },
    shed(kind: string): void {
      shedRequests.inc({ kind });
    },
    unrecordedCheckout(outcome: string): void {
      unrecordedCheckouts.inc({ outcome });
    },
    salesListingRead(): void {
      salesListingReads.inc();
    },
  };
}

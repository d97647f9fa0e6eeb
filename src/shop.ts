// Checkout and purchase: PostgreSQL decides each, in one statement shared by concurrent requests.
// Neither asks Redis anything: a Redis round trip in front of every purchase cost more than the
// refusals it could answer saved (BENCHMARKS.md).
import { randomFillSync } from 'node:crypto';
import { coalesce, type Limits } from './batch.ts';
import { isLockTimeout, retryOnce, withDeadline, type Sql } from './db.ts';
import { AppError, messages } from './errors.ts';
import type { Metrics } from './metrics.ts';
import * as store from './store.ts';

export type Shop = ReturnType<typeof createShop>;

export type Receipt = { code: string; itemId: number; saleId: number; userId: string; purchasedAt: string };

// Concurrent checkouts (and purchases) share one statement: requests arriving while one runs wait to go
// together in the next (`batch`: how many a statement takes, how many statements of a kind at once).
// Every wait is bounded: the queue (`batch` again), and each statement by `statementTimeoutMs` on the
// server's side and, a little later, on ours (a frozen server enforces nothing).
export function createShop(deps: {
  sql: Sql;
  metrics: Metrics;
  codeTtlSeconds: number;
  batch: Limits;
  statementTimeoutMs: number;
}) {
  const limits = deps.batch;
  const deadlineMs = deps.statementTimeoutMs + 500;
  const shed = (kind: string) => () => deps.metrics.shed(kind);
  // Purchases whose buyer's row another transaction held: one statement at a time, waiting for the row.
  const decideHeld = coalesce(
    async (codes: string[]) => (await withDeadline(retryOnce(() => store.purchase(deps.sql, codes)), deadlineMs)) as store.PurchaseResult[],
    { ...limits, maxInFlight: 1 },
    shed('purchase'),
  );
  return {
    metrics: deps.metrics,
    // A connection cut (a restarted PostgreSQL, pg_terminate_backend) fails a whole batch: it is tried once
    // more on a fresh connection (both statements are idempotent) rather than failing all its requests.
    recordCheckout: coalesce(
      (requests: store.CheckoutRequest[]) =>
        withDeadline(retryOnce(() => store.checkout(deps.sql, requests, deps.codeTtlSeconds)), deadlineMs),
      limits,
      shed('checkout'),
    ),
    // A buyer's row another transaction holds must stall no one else: a batch that meets one is sent again
    // skipping it, and that buyer's requests wait for the row alone.
    decidePurchase: coalesce(
      async (codes: string[]) => {
        // As before first (giving up on a row locked for 50 ms); then skipping the rows others hold.
        const decide = () =>
          store.purchase(deps.sql, codes, 'first').catch((error: unknown) => {
            if (isLockTimeout(error)) return store.purchase(deps.sql, codes, 'skip');
            throw error;
          });
        const results = await withDeadline(retryOnce(decide), deadlineMs);
        return results.map((result, index) => (result.outcome === 'held' ? decideHeld(codes[index]!) : (result as store.PurchaseResult)));
      },
      limits,
      shed('purchase'),
    ),
    // A flood of refused checkouts (rate limited, or shed for overload) must not take turns with the
    // checkouts on the connections: they go in batches of up to 64 however small BATCH_MAX is, each
    // lingering 50 ms for company. Not retried: the insert is not idempotent.
    recordRefusedCheckout: coalesce(
      async (attempts: store.RefusedCheckout[]) => {
        await withDeadline(store.recordRefusedCheckouts(deps.sql, attempts), deadlineMs);
        return attempts.map(() => undefined);
      },
      { ...limits, maxBatch: 64, lingerMs: 50 },
      shed('refused_checkout'),
    ),
  };
}

// 22 base64url characters, as the reference's clients expect: 4 bytes of the second the code is issued
// in (big-endian Unix time), which keys it near the right edge of the code index, and 96 random bits.
// The random bytes come from a pool refilled 256 codes at a time: it pays on checkout (BENCHMARKS.md).
const randomPart = 12;
const pool = Buffer.alloc(randomPart * 256);
let used = pool.length;

export function newCode(): string {
  if (used === pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  const code = Buffer.allocUnsafe(4 + randomPart);
  code.writeUInt32BE(Math.floor(Date.now() / 1000), 0);
  pool.copy(code, 4, used, used + randomPart);
  used += randomPart;
  return code.toString('base64url');
}

export async function checkout(shop: Shop, userId: string, itemId: number) {
  const result = await shop.recordCheckout({ userId, itemId, code: newCode() });
  shop.metrics.checkout(result.outcome);
  if (result.outcome === 'item_unknown') throw new AppError('item_unknown', messages.itemUnknown(itemId));
  if (result.outcome === 'item_sold') throw new AppError('item_sold', messages.itemSold(itemId));
  return { code: result.code!, userId, itemId, saleId: result.saleId!, expiresAt: result.expiresAt! };
}

export async function purchase(shop: Shop, code: string): Promise<Receipt> {
  const result = await shop.decidePurchase(code);
  shop.metrics.purchase(result.outcome);
  switch (result.outcome) {
    case 'code_unknown':
      throw new AppError('code_unknown', messages.codeUnknown());
    case 'code_expired':
      throw new AppError('code_expired', messages.codeExpired());
    case 'item_sold':
      throw new AppError('item_sold', messages.itemSold(result.itemId!));
    case 'limit_reached':
      throw new AppError('limit_reached', messages.limitReached(result.perUserLimit!));
    case 'purchased':
    case 'replayed':
      return { code, itemId: result.itemId!, saleId: result.saleId!, userId: result.userId!, purchasedAt: result.purchasedAt!.toISOString() };
  }
}

// Checkout and purchase: PostgreSQL decides each in one statement; Redis only answers what can no
// longer change (a sold item, a user at the limit, a replayed receipt) and is never asked to decide.
import { randomBytes } from 'node:crypto';
import type { Cache, Receipt } from './cache.ts';
import { coalesce } from './batch.ts';
import { retryOnce, type Sql } from './db.ts';
import { AppError, messages } from './errors.ts';
import type { Metrics } from './metrics.ts';
import * as store from './store.ts';

export type Shop = ReturnType<typeof createShop>;

// Concurrent checkouts (and purchases) share one statement: at most `batchesInFlight` statements of each
// kind run at once, and requests arriving meanwhile wait to go together in the next one (at most 64).
export function createShop(deps: { sql: Sql; cache: Cache; metrics: Metrics; codeTtlSeconds: number; batchesInFlight: number }) {
  const limits = { maxBatch: 64, maxInFlight: deps.batchesInFlight };
  return {
    cache: deps.cache,
    metrics: deps.metrics,
    // A connection cut (a restarted PostgreSQL, pg_terminate_backend) fails a whole batch: it is tried once
    // more on a fresh connection (both statements are idempotent) rather than failing all its requests.
    recordCheckout: coalesce(
      (requests: store.CheckoutRequest[]) => retryOnce(() => store.checkout(deps.sql, requests, deps.codeTtlSeconds)),
      limits,
    ),
    decidePurchase: coalesce((codes: string[]) => retryOnce(() => store.purchase(deps.sql, codes)), limits),
  };
}

// 128 bits from the operating system's CSPRNG, base64url: 22 characters, as the reference's clients expect.
export function newCode(): string {
  return randomBytes(16).toString('base64url');
}

export async function checkout(shop: Shop, userId: string, itemId: number) {
  const result = await shop.recordCheckout({ userId, itemId, code: newCode() });
  shop.metrics.checkout(result.outcome);
  if (result.outcome === 'item_unknown') throw new AppError('item_unknown', messages.itemUnknown(itemId));
  if (result.outcome === 'item_sold') throw new AppError('item_sold', messages.itemSold(itemId));
  const issued = { code: result.code!, userId, itemId, saleId: result.saleId!, expiresAt: result.expiresAt! };
  shop.cache.rememberCode(issued.code, issued);
  return issued;
}

export async function purchase(shop: Shop, code: string): Promise<Receipt> {
  const shortcut = await shop.cache.purchaseShortcut(code);
  if (shortcut) shop.metrics.purchase(shortcut.outcome, 'redis');
  if (shortcut?.outcome === 'replayed') return shortcut.receipt;
  if (shortcut?.outcome === 'item_sold') throw new AppError('item_sold', messages.itemSold(shortcut.itemId));
  if (shortcut?.outcome === 'limit_reached') throw new AppError('limit_reached', messages.limitReached(shortcut.perUserLimit));

  const result = await shop.decidePurchase(code);
  shop.metrics.purchase(result.outcome, 'postgres');
  switch (result.outcome) {
    case 'code_unknown':
      throw new AppError('code_unknown', messages.codeUnknown());
    case 'code_expired':
      throw new AppError('code_expired', messages.codeExpired());
    case 'item_sold':
      throw new AppError('item_sold', messages.itemSold(result.itemId!));
    case 'limit_reached':
      shop.cache.rememberLimit(result.saleId!, result.userId!, result.perUserLimit!, result.boughtCodes ?? []);
      throw new AppError('limit_reached', messages.limitReached(result.perUserLimit!));
    case 'purchased':
    case 'replayed': {
      const receipt = {
        code,
        itemId: result.itemId!,
        saleId: result.saleId!,
        userId: result.userId!,
        purchasedAt: result.purchasedAt!.toISOString(),
      };
      shop.cache.rememberSold(receipt);
      return receipt;
    }
  }
}

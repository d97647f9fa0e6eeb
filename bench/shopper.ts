// A simulated user: pages through a sale's available items from a random place, checks items out and
// (unless they abandon their carts) buys them, until they have what they want or give up.
import { randomInt } from 'node:crypto';
import type { SaleInfo } from './database.ts';
import type { Run } from './run.ts';

const pageSize = 50;
const maxPages = 20;

export type Tally = { users: number; satisfied: number; bought: number; held: number; lost: number; limit: number; error: number; pages: number };

export function newTally(): Tally {
  return { users: 0, satisfied: 0, bought: 0, held: 0, lost: 0, limit: 0, error: 0, pages: 0 };
}

function shuffle<T>(list: T[]): T[] {
  for (let i = list.length - 1; i > 0; i -= 1) {
    const j = randomInt(i + 1);
    [list[i], list[j]] = [list[j]!, list[i]!];
  }
  return list;
}

// Keyset pages of GET /sales/:id/items?available=true, starting anywhere in the sale's id range and
// wrapping around once, so that users spread over the sale instead of all reading page 1.
export class ItemCursor {
  private queue: number[] = [];
  private after: number;
  private wrapped = false;
  private done = false;
  private pages = 0;
  private failures = 0;

  private readonly run: Run;
  private readonly sale: SaleInfo;
  private readonly tally: Tally;

  constructor(run: Run, sale: SaleInfo, tally: Tally) {
    this.run = run;
    this.sale = sale;
    this.tally = tally;
    this.after = randomInt(sale.firstItemId - 1, sale.lastItemId);
  }

  async next(): Promise<number | null> {
    while (this.queue.length === 0 && !this.done && !this.run.shouldStop()) await this.fetch();
    return this.queue.pop() ?? null;
  }

  private async fetch(): Promise<void> {
    const from = this.after;
    this.pages += 1;
    this.tally.pages += 1;
    if (this.pages >= maxPages) this.done = true;
    const reply = await this.run.http.call('items', 'GET', `/sales/${this.sale.id}/items?available=true&limit=${pageSize}&after=${from}`);
    if (reply.kind !== 'ok') {
      this.failures += 1;
      if (this.failures >= 3) this.done = true;
      return;
    }
    const items = reply.body!.items as { id: number }[];
    const nextAfter = reply.body!.next_after as number | null;
    this.queue = shuffle(items.map((item) => item.id));
    if (nextAfter !== null) {
      this.after = nextAfter;
    } else if (!this.wrapped) {
      this.after = 0;
      this.wrapped = true;
    } else {
      this.done = true;
    }
    if (from === 0 && nextAfter === null && items.length === 0) this.run.stop('sold out (no item left in the list)');
  }
}

export type Attempt = 'bought' | 'held' | 'lost' | 'limit' | 'error';

// One item: check it out, then (unless abandoning) buy it. Refusals are normal in a sale; errors are not.
export async function tryItem(run: Run, userId: string, itemId: number, abandons: boolean, think: boolean, onBought: () => void): Promise<Attempt> {
  const checkout = await run.http.call('checkout', 'POST', `/checkout?user_id=${userId}&id=${itemId}`);
  // By the error code, not the status alone: a 429 may be the per-user limit or the rate limit.
  if (checkout.kind !== 'ok') return checkout.outcome === '409 item_sold' ? 'lost' : 'error';
  if (abandons) return 'held';
  if (think) await run.think();
  const purchase = await run.http.call('purchase', 'POST', `/purchase?code=${String(checkout.body!.code)}`);
  if (purchase.kind === 'ok') {
    onBought();
    return 'bought';
  }
  if (purchase.outcome === '409 item_sold') return 'lost';
  if (purchase.outcome === '429 limit_reached') return 'limit';
  return 'error';
}

export type User = { id: string; wants: number; abandons: boolean };

export async function shop(run: Run, sale: SaleInfo, user: User, tally: Tally, options: { think: boolean; onBought: () => void }): Promise<void> {
  tally.users += 1;
  const cursor = new ItemCursor(run, sale, tally);
  let got = 0;
  let errors = 0;
  for (let tries = 0; got < user.wants && tries < user.wants * 4 + 10 && errors < 3; tries += 1) {
    const itemId = await cursor.next();
    if (itemId === null || run.shouldStop()) break;
    if (options.think) await run.think();
    const result = await tryItem(run, user.id, itemId, user.abandons, options.think, options.onBought);
    tally[result] += 1;
    if (result === 'bought' || result === 'held') got += 1;
    if (result === 'error') errors += 1;
    if (result === 'limit') break;
  }
  if (got >= user.wants) tally.satisfied += 1;
}

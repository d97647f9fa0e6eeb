// Opens each sale at its boundary. Every instance runs one; PostgreSQL lets exactly one of them create
// the sale, and PostgreSQL's clock says when the next boundary comes, not this machine's.
import type { FastifyBaseLogger } from 'fastify';
import type { Sql } from './db.ts';
import { ensureCurrentSale, type SaleRules } from './store.ts';

const retryDelayMs = 1000;
// Wake a little after the boundary so that the database's clock has surely passed it.
const boundarySlackMs = 20;

export function startScheduler(sql: Sql, rules: SaleRules, log: FastifyBaseLogger): { stop: () => void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  async function tick(): Promise<void> {
    let delayMs = retryDelayMs;
    try {
      const sale = await ensureCurrentSale(sql, rules);
      if (sale.created) log.info({ saleId: sale.saleId }, 'sale opened');
      delayMs = Math.max(0, sale.secondsToNext * 1000) + boundarySlackMs;
    } catch (error) {
      log.warn({ err: error }, 'could not ensure the current sale; retrying');
    }
    if (!stopped) timer = setTimeout(() => void tick(), delayMs);
  }

  void tick();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

// Opens each sale at its boundary, keeps the sales' sold figures at most about a second behind, and
// makes checkout_attempts' partitions ahead of time (dropping old ones when retention is set).
// Every instance runs one; PostgreSQL lets exactly one of them create a sale (and fold the tallies at
// a time), and PostgreSQL's clock says when the next boundary comes, not this machine's.
import type { FastifyBaseLogger } from 'fastify';
import type { Sql } from './db.ts';
import { createAttemptPartitions, dropOldAttemptPartitions, ensureCurrentSale, refreshSoldCounts, type SaleRules } from './store.ts';

const retryDelayMs = 1000;
// Wake a little after the boundary so that the database's clock has surely passed it.
const boundarySlackMs = 20;
// Node fires a timer of over about 24.8 days at once: a long interval is slept in steps.
const maxSleepMs = 3_600_000;
const refreshEveryMs = 500;
const maintainEveryMs = 3_600_000;

export function startScheduler(
  sql: Sql,
  rules: SaleRules,
  log: FastifyBaseLogger,
  attempts: { retentionDays: number | null } = { retentionDays: null },
): { stop: () => void } {
  const timers = new Map<string, NodeJS.Timeout>();
  let stopped = false;
  let refreshFailing = false;

  // Runs `work` now, then again after the delay it answers, until stopped.
  function repeat(name: string, work: () => Promise<number>): void {
    const run = async () => {
      const delayMs = await work();
      if (!stopped) timers.set(name, setTimeout(() => void run(), delayMs));
    };
    void run();
  }

  repeat('sale', async () => {
    try {
      const sale = await ensureCurrentSale(sql, rules);
      if (sale.created) log.info({ saleId: sale.saleId }, 'sale opened');
      return Math.min(maxSleepMs, Math.max(0, sale.secondsToNext * 1000) + boundarySlackMs);
    } catch (error) {
      log.warn({ err: error }, 'could not ensure the current sale; retrying');
      return retryDelayMs;
    }
  });

  repeat('refresh', async () => {
    try {
      await refreshSoldCounts(sql);
      refreshFailing = false;
    } catch (error) {
      if (!refreshFailing) log.warn({ err: error }, 'could not refresh the sold figures; retrying');
      refreshFailing = true;
    }
    return refreshEveryMs;
  });

  repeat('maintain', async () => {
    try {
      const made = await createAttemptPartitions(sql);
      if (made > 0) log.info({ made }, 'checkout_attempts partitions made ahead');
      if (attempts.retentionDays !== null) {
        const dropped = await dropOldAttemptPartitions(sql, attempts.retentionDays);
        if (dropped.length > 0) log.info({ dropped }, 'checkout_attempts partitions past retention dropped');
      }
    } catch (error) {
      log.warn({ err: error }, 'could not maintain the checkout_attempts partitions; trying again in an hour');
    }
    return maintainEveryMs;
  });

  return {
    stop() {
      stopped = true;
      for (const timer of timers.values()) clearTimeout(timer);
    },
  };
}

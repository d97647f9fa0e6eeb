// After a run: read the database back and hold it against what the load generator saw.
// The per-sale rules are src/audit.ts's; the run's own counts are compared here.
import { auditSales, violations, type SaleAudit } from '../src/audit.ts';
import type { Sql } from '../src/db.ts';
import { attemptsSince, type Snapshot } from './database.ts';
import type { Recorder } from './stats.ts';

export type Check = { name: string; ok: boolean; detail: string };
export type AuditedSale = SaleAudit & { soldDuringRun: number; violations: string[] };
export type Invariants = { ok: boolean; checks: Check[]; sales: AuditedSale[] };

// Requests whose effect is unknown: no answer arrived, or the service failed midway.
function uncertain(recorder: Recorder, endpoint: 'checkout' | 'purchase'): number {
  const outcomes = recorder.byEndpoint.get(endpoint)?.outcomes ?? new Map<string, number>();
  let count = 0;
  for (const [outcome, n] of outcomes) if (outcome.startsWith('network') || outcome.startsWith('5')) count += n;
  return count;
}

function within(value: number, low: number, high: number): boolean {
  return value >= low && value <= high;
}

function saleChecks(sales: AuditedSale[], fullSaleId: number | undefined): Check[] {
  const broken = sales.flatMap((sale) => sale.violations.map((problem) => `sale ${sale.saleId}: ${problem}`));
  const overLimit = sales.reduce((sum, sale) => sum + sale.buyersOverLimit, 0);
  const twice = sales.reduce((sum, sale) => sum + sale.itemsSoldTwice + sale.codesUsedTwice, 0);
  const checks: Check[] = [
    { name: 'nobody over the per-user limit', ok: overLimit === 0, detail: `${overLimit} buyers over the limit` },
    { name: 'no item sold twice, no code used twice', ok: twice === 0, detail: `${twice} items or codes used twice` },
    {
      name: 'every sale passes auditSales()/violations()',
      ok: broken.length === 0,
      detail: broken.length === 0 ? `${sales.length} sales clean` : broken.slice(0, 10).join('; '),
    },
  ];
  if (fullSaleId !== undefined) {
    const sale = sales.find((candidate) => candidate.saleId === fullSaleId);
    checks.push({
      name: `sale ${fullSaleId} sold exactly its ${sale?.size ?? '?'} items`,
      ok: sale !== undefined && sale.sold === sale.size,
      detail: sale ? `sold ${sale.sold} of ${sale.size}` : 'sale missing',
    });
  }
  return checks;
}

async function attemptChecks(sql: Sql, before: Snapshot, recorder: Recorder): Promise<Check[]> {
  const rows = await attemptsSince(sql, before.lastAttemptId);
  const total = [...rows.values()].reduce((sum, n) => sum + n, 0);
  const sent = recorder.requests('checkout');
  const unsure = uncertain(recorder, 'checkout');
  const issued = rows.get('issued') ?? 0;
  const sold = rows.get('item_sold') ?? 0;
  const codes = recorder.count('checkout', '200');
  const refused = recorder.count('checkout', '409 item_sold');
  return [
    {
      name: 'checkout attempts recorded = checkout requests sent',
      ok: within(total, sent - unsure, sent),
      detail: `${total} rows for ${sent} requests${unsure ? ` (${unsure} without a definite answer)` : ''}`,
    },
    {
      name: 'issued / item_sold attempts = 200 / 409 answers',
      ok: within(issued, codes, codes + unsure) && within(sold, refused, refused + unsure),
      detail: `issued ${issued} vs ${codes} codes received; item_sold ${sold} vs ${refused} refusals`,
    },
  ];
}

function purchaseCheck(sales: AuditedSale[], recorder: Recorder): Check {
  const soldDuringRun = sales.reduce((sum, sale) => sum + sale.soldDuringRun, 0);
  const successes = recorder.count('purchase', '200');
  const unsure = uncertain(recorder, 'purchase');
  return {
    name: 'items sold during the run = successful purchases',
    ok: within(soldDuringRun, successes, successes + unsure),
    detail: `${soldDuringRun} items sold, ${successes} purchases answered 200`,
  };
}

export async function checkInvariants(sql: Sql, before: Snapshot, recorder: Recorder, fullSaleId?: number): Promise<Invariants> {
  const audited = (await auditSales(sql)).map((sale) => ({
    ...sale,
    soldDuringRun: sale.sold - (before.soldBySale.get(sale.saleId) ?? 0),
    violations: violations(sale),
  }));
  const checks = [
    ...saleChecks(audited, fullSaleId),
    ...(await attemptChecks(sql, before, recorder)),
    purchaseCheck(audited, recorder),
  ];
  // Keep the report short on a long-lived database: only the sales this run touched or that are broken.
  const sales = audited.filter((sale) => sale.soldDuringRun !== 0 || sale.violations.length > 0 || sale.saleId === fullSaleId);
  return { ok: checks.every((check) => check.ok), checks, sales };
}

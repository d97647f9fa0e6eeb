// npm run audit [-- --json]: checks every sale's invariants in the database; exits 1 on any violation.
import { auditSales, attemptsWithoutSale, violations } from '../audit.ts';
import { loadConfig } from '../config.ts';
import { connect } from '../db.ts';

const json = process.argv.includes('--json');
const sql = connect(loadConfig().databaseUrl, { max: 1 });
try {
  const sales = await auditSales(sql);
  const unattributed = await attemptsWithoutSale(sql);
  const report = sales.map((sale) => ({ ...sale, violations: violations(sale) }));
  const clean = report.every((sale) => sale.violations.length === 0);
  if (json) {
    console.log(JSON.stringify({ clean, sales: report, attemptsWithoutSale: unattributed }, null, 2));
  } else {
    const columns = ['saleId', 'startsAt', 'items', 'sold', 'buyers', 'buyersOverLimit', 'itemsSoldTwice',
      'purchasesWithoutCode', 'codesUsedTwice', 'buyerCountsWrong', 'attempts'] as const;
    const rows = report.map((sale) => columns.map((column) =>
      column === 'startsAt' ? sale.startsAt.toISOString() : String(sale[column])));
    const widths = columns.map((column, index) => Math.max(column.length, ...rows.map((row) => row[index]!.length)));
    const line = (cells: readonly string[]) => cells.map((cell, index) => cell.padStart(widths[index]!)).join('  ');
    console.log(line(columns));
    for (const row of rows) console.log(line(row));
    console.log(`attempts without a sale (unknown items, bad requests): ${unattributed}`);
    for (const sale of report) for (const problem of sale.violations) console.log(`VIOLATION sale ${sale.saleId}: ${problem}`);
    console.log(clean ? 'audit clean' : 'audit FAILED');
  }
  process.exitCode = clean ? 0 : 1;
} finally {
  await sql.end({ timeout: 5 });
}

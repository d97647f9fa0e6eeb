// The load generator's own SQL: fresh sales and pre-issued codes for setup, and the counts read back
// before and after a run. The invariants themselves come from src/audit.ts.
import { randomInt } from 'node:crypto';
import type { Sql } from '../src/db.ts';
import { newCode } from '../src/shop.ts';

export type SaleInfo = { id: number; size: number; perUserLimit: number; firstItemId: number; lastItemId: number };

const perUserLimit = 10;
const codeTtl = '10 minutes';

// A sale at an unused hour since 2000-01-01 (the service only creates the current hour's), with its
// items, in one transaction so that nobody sees the sale without its items.
export async function createFreshSale(sql: Sql, size: number): Promise<SaleInfo> {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const hours = randomInt(0, 200_000); // 2000-01-01 plus up to ~22 years
    const id = await sql.begin(async (tx) => {
      const [sale] = await tx<{ id: number }[]>`
        insert into sales (starts_at, size, per_user_limit)
        values (timestamptz '2000-01-01 00:00:00+00' + make_interval(hours => ${hours}), ${size}, ${perUserLimit})
        on conflict (starts_at) do nothing
        returning id`;
      if (!sale) return null;
      await tx`
        insert into items (sale_id, seed)
        select ${sale.id}, floor(random() * 2147483647)::int from generate_series(1, ${size})`;
      return sale.id;
    });
    if (id !== null) return saleInfo(sql, id);
  }
  throw new Error('could not find an unused sale hour in 20 tries');
}

export async function saleInfo(sql: Sql, saleId: number): Promise<SaleInfo> {
  const [row] = await sql<SaleInfo[]>`
    select s.id, s.size, s.per_user_limit as "perUserLimit",
           min(i.id) as "firstItemId", max(i.id) as "lastItemId"
    from sales s join items i on i.sale_id = s.id
    where s.id = ${saleId}
    group by s.id`;
  if (!row) throw new Error(`sale ${saleId} has no items`);
  return row;
}

export async function availableItemIds(sql: Sql, saleId: number): Promise<number[]> {
  const rows = await sql<{ id: number }[]>`select id from items where sale_id = ${saleId} and buyer_id is null order by id`;
  return rows.map((row) => row.id);
}

// Codes as the service's checkout would issue them, inserted directly: code i is for item i mod n,
// so the first n codes (round 0) can each buy an item and later rounds meet item_sold. A user's codes
// are far apart (user = item index mod users), so concurrent purchases rarely wait on the same
// user's row, and each user holds at most per_user_limit codes of a round: nobody reaches the limit.
export async function preIssueCodes(sql: Sql, sale: SaleInfo, itemIds: number[], count: number, runId: string): Promise<string[]> {
  const codes: string[] = [];
  const chunk = 5_000;
  const users = Math.ceil(itemIds.length / sale.perUserLimit);
  for (let from = 0; from < count; from += chunk) {
    const batch = { codes: [] as string[], users: [] as string[], items: [] as number[] };
    for (let i = from; i < Math.min(count, from + chunk); i += 1) {
      batch.codes.push(newCode());
      const round = Math.floor(i / itemIds.length);
      batch.users.push(`${runId}-r${round}u${(i % itemIds.length) % users}`);
      batch.items.push(itemIds[i % itemIds.length]!);
    }
    await sql`
      insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_key, expires_at)
      select 'issued', u, i, ${sale.id}, c, code_key(c), now() + ${codeTtl}::interval
      from unnest(${sql.array(batch.users)}::text[], ${sql.array(batch.items)}::bigint[], ${sql.array(batch.codes)}::text[]) as t(u, i, c)`;
    codes.push(...batch.codes);
  }
  return codes;
}

export type Snapshot = { lastAttemptId: number; soldBySale: Map<number, number> };

export async function snapshot(sql: Sql): Promise<Snapshot> {
  const [last] = await sql<{ id: number }[]>`select coalesce(max(id), 0) as id from checkout_attempts`;
  const sold = await sql<{ saleId: number; sold: number }[]>`
    select sale_id as "saleId", count(*) as sold from items where buyer_id is not null group by sale_id`;
  return { lastAttemptId: last!.id, soldBySale: new Map(sold.map((row) => [row.saleId, row.sold])) };
}

export async function attemptsSince(sql: Sql, lastAttemptId: number): Promise<Map<string, number>> {
  const rows = await sql<{ outcome: string; count: number }[]>`
    select outcome, count(*) as count from checkout_attempts where id > ${lastAttemptId} group by outcome`;
  return new Map(rows.map((row) => [row.outcome, row.count]));
}

// A steady-state run measures the service, not its own setup: a fresh sale and pre-issued codes are
// vacuumed (so that autovacuum does not start on them mid-run) and checkpointed (so that the
// checkpointer and the kernel do not write them out during the measured seconds). At half of peak,
// purchase p99 was 18-20 ms without this and 13-15 ms with it (alternating runs). CHECKPOINT needs
// superuser or pg_checkpoint; without them the run goes on.
export async function settle(sql: Sql): Promise<void> {
  await sql`vacuum (analyze) items, checkout_attempts`;
  await sql`checkpoint`.catch(() => {});
}

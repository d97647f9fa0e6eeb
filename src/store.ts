// Every SQL statement of the service. The rules themselves live in migrations/ as SQL functions.
import type { Sql } from './db.ts';

export type SaleRules = { saleIntervalSeconds: number; saleSize: number; perUserLimit: number };

export async function ensureCurrentSale(sql: Sql, rules: SaleRules) {
  const [row] = await sql<{ saleId: number; created: boolean; nextStartsAt: Date; secondsToNext: number }[]>`
    select sale_id as "saleId", created, next_starts_at as "nextStartsAt", seconds_to_next as "secondsToNext"
    from ensure_current_sale(${rules.saleIntervalSeconds}, ${rules.saleSize}, ${rules.perUserLimit})`;
  return row!;
}

export type CheckoutOutcome = 'issued' | 'item_sold' | 'item_unknown';
export type CheckoutRequest = { userId: string; itemId: number; code: string };
export type CheckoutResult = { outcome: CheckoutOutcome; saleId: number | null; code: string | null; expiresAt: Date | null };

// Results come back in the order of the requests (the functions number them with `ord`).
function inOrder<T extends { ord: number }>(rows: T[]): T[] {
  return rows.toSorted((a, b) => a.ord - b.ord);
}

// Any number of checkouts, each recorded and decided, in one statement.
export async function checkout(sql: Sql, requests: CheckoutRequest[], ttlSeconds: number): Promise<CheckoutResult[]> {
  const rows = await sql<(CheckoutResult & { ord: number })[]>`
    select ord, outcome, sale_id as "saleId", code, expires_at as "expiresAt"
    from checkout(
      ${requests.map((request) => request.userId)}::text[],
      ${requests.map((request) => request.itemId)}::bigint[],
      ${requests.map((request) => request.code)}::text[],
      ${ttlSeconds})`;
  return inOrder(rows);
}

export type RefusedCheckout = { outcome: 'bad_request' | 'rate_limited' | 'overloaded'; userId: string | null; itemId: number | null; detail: string };

// Refused requests are still attempts: any number of them recorded in one statement, each with what the
// client sent (cut to a readable length by the caller).
export async function recordRefusedCheckouts(sql: Sql, attempts: RefusedCheckout[]): Promise<void> {
  await sql`
    insert into checkout_attempts (outcome, user_id, item_id, detail)
    select * from unnest(
      ${attempts.map((attempt) => attempt.outcome)}::text[],
      ${attempts.map((attempt) => attempt.userId)}::text[],
      ${attempts.map((attempt) => attempt.itemId)}::bigint[],
      ${attempts.map((attempt) => attempt.detail)}::text[])`;
}

export type PurchaseOutcome = 'purchased' | 'replayed' | 'code_unknown' | 'code_expired' | 'item_sold' | 'limit_reached';

export type PurchaseResult<Outcome = PurchaseOutcome> = {
  outcome: Outcome;
  itemId: number | null;
  saleId: number | null;
  userId: string | null;
  purchasedAt: Date | null;
  perUserLimit: number | null;
};

// Any number of purchases, each decided, in one transaction. `wait` (the default): for every buyer's and
// item's row, within lock_timeout. `first`: fails with lock_not_available if a row stays locked for
// `firstTryLockMs`. `skip`: a request whose buyer's row another transaction holds is answered 'held'.
const firstTryLockMs = 50;
export async function purchase(sql: Sql, codes: string[], mode: 'wait' | 'first' | 'skip' = 'wait'): Promise<PurchaseResult<PurchaseOutcome | 'held'>[]> {
  const rows = await sql<(PurchaseResult<PurchaseOutcome | 'held'> & { ord: number })[]>`
    select ord, outcome, item_id as "itemId", sale_id as "saleId", user_id as "userId",
           purchased_at as "purchasedAt", per_user_limit as "perUserLimit"
    from purchase(${codes}::text[], ${mode === 'skip'}, ${mode === 'first' ? firstTryLockMs : null}::integer)`;
  return inOrder(rows);
}

export type SaleSummary = { id: number; startsAt: Date; size: number; perUserLimit: number; sold: number };

// A page of open sales, newest first, after the sale `after` (keyset), and on the first page also the
// `latest` newest sales, open or not; and when the next sale opens, by PostgreSQL's clock (the one the
// scheduler follows). `sold` is the figure refresh_sold_counts() keeps (at most a second behind): one
// row per sale, whatever the sale's size.
export async function listSales(sql: Sql, page: { limit: number; after: number | null; latest: number }, intervalSeconds: number) {
  const columns = sql`id, starts_at as "startsAt", size, per_user_limit as "perUserLimit", sold`;
  const open = sql`
    select ${columns} from sales
    where sold < size ${page.after === null ? sql`` : sql`and starts_at < (select starts_at from sales where id = ${page.after})`}
    order by starts_at desc limit ${page.limit}`;
  const latest = sql`select ${columns} from sales order by starts_at desc limit ${page.latest}`;
  // One row with no sale when there is none, so that the next boundary always comes back.
  const rows = await sql<(SaleSummary & { nextSaleAt: Date })[]>`
    select page.*, next.at as "nextSaleAt"
    from (select sale_boundary(now(), ${intervalSeconds}) + make_interval(secs => ${intervalSeconds}) as at) as next
    left join ((${open}) ${page.after === null ? sql`union (${latest})` : sql``}) as page on true
    order by page."startsAt" desc`;
  const sales: SaleSummary[] = rows.filter((row) => row.id !== null);
  return { sales, nextSaleAt: rows[0]!.nextSaleAt };
}

export async function getSale(sql: Sql, saleId: number): Promise<SaleSummary | undefined> {
  const [row] = await sql<SaleSummary[]>`
    select id, starts_at as "startsAt", size, per_user_limit as "perUserLimit", sold from sales where id = ${saleId}`;
  return row;
}

// Folds the purchases' tallies into every sale's sold figure (one instance at a time does the work).
export async function refreshSoldCounts(sql: Sql): Promise<void> {
  await sql`select refresh_sold_counts()`;
}

export type ItemRow = { id: number; saleId: number; seed: number; sold: boolean };

export async function listItems(sql: Sql, saleId: number, page: { available: boolean; limit: number; after: number }) {
  return sql<ItemRow[]>`
    select i.id, i.sale_id as "saleId", i.seed, i.buyer_id is not null as sold
    from items i
    where i.sale_id = ${saleId} and i.id > ${page.after}
      ${page.available ? sql`and i.buyer_id is null` : sql``}
    order by i.id
    limit ${page.limit}`;
}

export async function getItem(sql: Sql, itemId: number): Promise<ItemRow | undefined> {
  const [row] = await sql<ItemRow[]>`
    select i.id, i.sale_id as "saleId", i.seed, i.buyer_id is not null as sold
    from items i where i.id = ${itemId}`;
  return row;
}

export type PurchaseRow = { itemId: number; saleId: number; seed: number; purchasedAt: Date };

export async function userPurchases(sql: Sql, userId: string, saleId: number | undefined) {
  return sql<PurchaseRow[]>`
    select i.id as "itemId", i.sale_id as "saleId", i.seed, i.sold_at as "purchasedAt"
    from items i
    where i.buyer_id = ${userId} ${saleId === undefined ? sql`` : sql`and i.sale_id = ${saleId}`}
    order by i.sold_at desc, i.id desc
    limit 1000`;
}

// Partitions of checkout_attempts for the month ahead, made ahead of time (one instance at a time).
export async function createAttemptPartitions(sql: Sql): Promise<number> {
  const [row] = await sql<{ made: number }[]>`select create_attempt_partitions(1) as made`;
  return row!.made;
}

// Detaches and drops every partition whose attempts are all older than `retentionDays` at `at`: whole
// tables, never rows. Detaching locks the whole table for a moment: it waits at most 200 ms for that (a
// checkout waits behind it no longer), or fails and is tried again at the next maintenance.
export async function dropOldAttemptPartitions(sql: Sql, retentionDays: number, at = new Date()): Promise<string[]> {
  const expired = await sql<{ name: string }[]>`
    select name from attempt_partitions()
    where ends_at <= ${at}::timestamptz - make_interval(days => ${retentionDays})
    order by ends_at`;
  for (const { name } of expired) {
    await sql.begin(async (tx) => {
      await tx`set local lock_timeout = '200ms'`;
      await tx`alter table checkout_attempts detach partition ${tx(name)}`;
      await tx`drop table ${tx(name)}`;
    });
  }
  return expired.map((row) => row.name);
}

// The service's connections as PostgreSQL sees them (all instances): active, idle, idle in transaction.
export async function connectionStates(sql: Sql) {
  return sql<{ state: string; count: number }[]>`
    select coalesce(state, 'unknown') as state, count(*) as count
    from pg_stat_activity
    where datname = current_database() and application_name = 'flash-sale'
    group by 1`;
}

export async function ping(sql: Sql): Promise<void> {
  await sql`select 1`;
}

// The newest migration applied to the database (one row of a small table).
export async function schemaVersion(sql: Sql): Promise<string | null> {
  const [row] = await sql<{ version: string | null }[]>`select max(version) as version from schema_migrations`;
  return row!.version;
}

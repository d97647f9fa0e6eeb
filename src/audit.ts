// The invariant audit: reads the database back and reports, per sale, every rule the sale must obey.
// The constraints and functions in migrations/ enforce the rules; this is the second path that checks them.
import type { Sql } from './db.ts';

export type SaleAudit = {
  saleId: number;
  startsAt: Date;
  size: number;
  perUserLimit: number;
  items: number;
  sold: number;
  buyers: number;
  buyersOverLimit: number;
  itemsSoldTwice: number;
  purchasesWithoutCode: number;
  codesUsedTwice: number;
  buyerCountsWrong: number;
  attempts: number;
  attemptsIssued: number;
  soldFigure: number;
  soldTallied: number;
};

// One pass over each table, grouped by sale: the cost grows with the data, not with the data times the
// number of sales (subqueries per sale would read every attempt once per sale).
export async function auditSales(sql: Sql): Promise<SaleAudit[]> {
  return sql<SaleAudit[]>`
    with item_figures as (
      select i.sale_id, count(*) as items, count(i.buyer_id) as sold, count(distinct i.buyer_id) as buyers,
             count(i.buyer_id) - count(distinct i.id) filter (where i.buyer_id is not null) as sold_twice
      from items i group by i.sale_id
    ), bought as (
      select i.sale_id, i.buyer_id as user_id, count(*) as items
      from items i where i.buyer_id is not null group by i.sale_id, i.buyer_id
    ), over_limit as (
      select b.sale_id, count(*) as buyers
      from bought b join sales s on s.id = b.sale_id
      where b.items > s.per_user_limit group by b.sale_id
    ), without_code as (
      -- A sale is only valid with the code its buyer got at checkout for that very item, found through
      -- the unique index on code_key() (the bare code has none).
      select i.sale_id, count(*) as purchases
      from items i
      where i.buyer_id is not null and not exists (
        select 1 from checkout_attempts c
        where c.code_key = code_key(i.purchase_code) and c.code = i.purchase_code
          and c.item_id = i.id and c.user_id = i.buyer_id and c.outcome = 'issued')
      group by i.sale_id
    ), codes_twice as (
      select t.sale_id, count(*) as codes
      from (select i.sale_id from items i where i.purchase_code is not null
            group by i.sale_id, i.purchase_code having count(*) > 1) as t
      group by t.sale_id
    ), counts_wrong as (
      -- A buyer's counted purchases must equal their items; a buyer with items needs a count.
      select coalesce(b.sale_id, sb.sale_id) as sale_id, count(*) as buyers
      from bought b full join sale_buyers sb on sb.sale_id = b.sale_id and sb.user_id = b.user_id
      where sb.user_id is null or coalesce(b.items, 0) <> sb.bought
      group by 1
    ), tallies as (
      select t.sale_id, sum(t.items) as items from sold_tallies t group by t.sale_id
    ), attempt_figures as (
      select c.sale_id, count(*) as attempts, count(*) filter (where c.outcome = 'issued') as issued
      from checkout_attempts c where c.sale_id is not null group by c.sale_id
    )
    select s.id as "saleId", s.starts_at as "startsAt", s.size, s.per_user_limit as "perUserLimit",
      coalesce(f.items, 0) as items, coalesce(f.sold, 0) as sold, coalesce(f.buyers, 0) as buyers,
      coalesce(o.buyers, 0) as "buyersOverLimit", coalesce(f.sold_twice, 0) as "itemsSoldTwice",
      coalesce(w.purchases, 0) as "purchasesWithoutCode", coalesce(t.codes, 0) as "codesUsedTwice",
      coalesce(cw.buyers, 0) as "buyerCountsWrong",
      coalesce(a.attempts, 0) as attempts, coalesce(a.issued, 0) as "attemptsIssued",
      s.sold as "soldFigure", s.sold + coalesce(ta.items, 0) as "soldTallied"
    from sales s
    left join item_figures f on f.sale_id = s.id
    left join over_limit o on o.sale_id = s.id
    left join without_code w on w.sale_id = s.id
    left join codes_twice t on t.sale_id = s.id
    left join counts_wrong cw on cw.sale_id = s.id
    left join attempt_figures a on a.sale_id = s.id
    left join tallies ta on ta.sale_id = s.id
    order by s.starts_at`;
}

// Every way a sale can break the rules, in words; empty when the sale is sound.
export function violations(sale: SaleAudit): string[] {
  const found: string[] = [];
  if (sale.items !== sale.size) found.push(`has ${sale.items} items, not ${sale.size}`);
  if (sale.sold > sale.size) found.push(`sold ${sale.sold} of ${sale.size}`);
  if (sale.buyersOverLimit > 0) found.push(`${sale.buyersOverLimit} buyers over the limit of ${sale.perUserLimit}`);
  if (sale.itemsSoldTwice > 0) found.push(`${sale.itemsSoldTwice} items sold twice`);
  if (sale.purchasesWithoutCode > 0) found.push(`${sale.purchasesWithoutCode} purchases without a matching issued code`);
  if (sale.codesUsedTwice > 0) found.push(`${sale.codesUsedTwice} codes used twice`);
  // Read in one snapshot, the figure plus the tallies not yet folded into it is the truth.
  if (sale.soldTallied !== sale.sold) found.push(`sold figure ${sale.soldFigure} and tallies ${sale.soldTallied - sale.soldFigure} disagree with ${sale.sold} sold`);
  if (sale.buyerCountsWrong > 0) found.push(`${sale.buyerCountsWrong} buyers whose counted purchases disagree with their items`);
  return found;
}

export async function attemptsWithoutSale(sql: Sql): Promise<number> {
  const [row] = await sql<{ count: number }[]>`select count(*) as count from checkout_attempts where sale_id is null`;
  return row!.count;
}

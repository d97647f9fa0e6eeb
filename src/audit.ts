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
};

export async function auditSales(sql: Sql): Promise<SaleAudit[]> {
  return sql<SaleAudit[]>`
    select s.id as "saleId", s.starts_at as "startsAt", s.size, s.per_user_limit as "perUserLimit",
      (select count(*) from items i where i.sale_id = s.id) as items,
      (select count(*) from items i where i.sale_id = s.id and i.buyer_id is not null) as sold,
      (select count(distinct i.buyer_id) from items i where i.sale_id = s.id) as buyers,
      (select count(*) from (
         select 1 from items i where i.sale_id = s.id and i.buyer_id is not null
         group by i.buyer_id having count(*) > s.per_user_limit) as over) as "buyersOverLimit",
      (select count(*) - count(distinct i.id) from items i where i.sale_id = s.id and i.buyer_id is not null) as "itemsSoldTwice",
      -- A sale is only valid with the code its buyer got at checkout for that very item. Codes are found
      -- by their hash's unique index: by the bare code, a young table's stale statistics once planned a
      -- scan of all attempts per sold item (still running after 44 s, three stampedes into a fresh database).
      (select count(*) from items i where i.sale_id = s.id and i.buyer_id is not null and not exists (
         select 1 from checkout_attempts c
         where c.code_hash = sha256(convert_to(i.purchase_code, 'UTF8')) and c.code = i.purchase_code and c.item_id = i.id and c.user_id = i.buyer_id and c.outcome = 'issued')
      ) as "purchasesWithoutCode",
      (select count(*) from (
         select 1 from items i where i.sale_id = s.id and i.purchase_code is not null
         group by i.purchase_code having count(*) > 1) as twice) as "codesUsedTwice",
      (select count(*) from (
         select b.user_id from sale_buyers b
         where b.sale_id = s.id and b.bought <> (select count(*) from items i where i.sale_id = s.id and i.buyer_id = b.user_id)
         union all
         select i.buyer_id from items i where i.sale_id = s.id and i.buyer_id is not null
           and not exists (select 1 from sale_buyers b where b.sale_id = s.id and b.user_id = i.buyer_id)
       ) as wrong) as "buyerCountsWrong",
      (select count(*) from checkout_attempts c where c.sale_id = s.id) as attempts,
      (select count(*) from checkout_attempts c where c.sale_id = s.id and c.outcome = 'issued') as "attemptsIssued"
    from sales s
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
  if (sale.buyerCountsWrong > 0) found.push(`${sale.buyerCountsWrong} buyers whose counted purchases disagree with their items`);
  return found;
}

export async function attemptsWithoutSale(sql: Sql): Promise<number> {
  const [row] = await sql<{ count: number }[]>`select count(*) as count from checkout_attempts where sale_id is null`;
  return row!.count;
}

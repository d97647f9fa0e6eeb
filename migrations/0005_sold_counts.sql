-- Each sale keeps its sold figure, so browsing reads one row per sale instead of counting its unsold
-- items (a sale stays open until sold out, so unsold items pile up with every quiet hour).
--
-- No purchase updates the figure: that would be a hot row. Each purchase batch appends a tally row
-- (sale, items sold) to sold_tallies, and refresh_sold_counts(), called every second by every
-- instance's scheduler, folds the tallies into sales.sold. The figure lags by at most that second and
-- only ever counts committed sales, so a sale never reads sold out while an item is unsold.

alter table sales add column sold integer not null default 0;
-- When refresh_sold_counts() last recounted this sale from its buyers' rows (null: never).
alter table sales add column counted_at timestamptz;
-- Open sales, newest first (GET /sales pages through them), and the next one to recount.
create index sales_open_idx on sales (starts_at desc) where sold < size;
create index sales_recount_idx on sales (counted_at nulls first, id) where sold < size;

-- Appended by purchase(), emptied by refresh_sold_counts(): never updated, so never contended.
create table sold_tallies (
  sale_id bigint not null,
  items   integer not null check (items > 0)
);

-- Sales that exist already: their buyers' rows count what they sold (the audit holds them equal).
update sales s set sold = coalesce((select sum(b.bought) from sale_buyers b where b.sale_id = s.id), 0);

-- Folds the tallies into the sales' figures, then recounts one open sale exactly. One caller at a time
-- (the others return at once); each statement below takes its own snapshot, after the lock.
create function refresh_sold_counts() returns void
language plpgsql as $$
declare
  recount_id bigint;
begin
  if not pg_try_advisory_xact_lock(7201042918) then
    return;
  end if;

  with folded as (
    delete from sold_tallies returning sale_id, items
  ), per_sale as (
    select f.sale_id, sum(f.items)::integer as items from folded f group by f.sale_id
  )
  update sales s set sold = s.sold + p.items from per_sale p where s.id = p.sale_id;

  -- The recount heals a figure that missed purchases: those decided by the purchase() this migration
  -- replaces, while it was being replaced. Tallies this statement sees are in its count already, so
  -- they go; later ones stay for the next fold. Open sales take turns, least recently counted first.
  select s.id into recount_id from sales s where s.sold < s.size order by s.counted_at nulls first, s.id limit 1;
  if recount_id is not null then
    with folded as (
      delete from sold_tallies t where t.sale_id = recount_id
    )
    update sales s
    set sold = (select coalesce(sum(b.bought), 0) from sale_buyers b where b.sale_id = recount_id), counted_at = now()
    where s.id = recount_id;
  end if;
end;
$$;

-- purchase() as in migration 0004, and a tally per sale for what the batch sold.
create or replace function purchase(p_codes text[])
returns table (ord bigint, outcome text, item_id bigint, sale_id bigint, user_id text, purchased_at timestamptz,
               per_user_limit integer)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set enable_material = off
as $$
declare
  request record;
  sold_by text;
  refused boolean := false;
  sold_in bigint[] := '{}';
begin
  -- The buyers' rows, created if new and locked, in (sale, user) order; `where false` locks a row that
  -- exists without writing it again.
  insert into sale_buyers as b (sale_id, user_id, bought)
  select distinct c.sale_id, c.user_id, 0
  from unnest(p_codes) as p(code)
  join checkout_attempts c on c.code_key = code_key(p.code) and c.outcome = 'issued'
  order by 1, 2
  on conflict on constraint sale_buyers_pkey do update set bought = b.bought where false;

  for request in
    select p.ord, p.code, c.user_id, c.item_id, c.sale_id, c.expires_at, s.per_user_limit
    from unnest(p_codes) with ordinality as p(code, ord)
    left join checkout_attempts c on c.code_key = code_key(p.code) and c.outcome = 'issued'
    left join sales s on s.id = c.sale_id
    order by c.item_id nulls first, p.ord
  loop
    ord := request.ord; item_id := request.item_id; sale_id := request.sale_id; user_id := request.user_id;
    per_user_limit := request.per_user_limit; purchased_at := null;
    if request.item_id is null then
      outcome := 'code_unknown';
      return next;
      continue;
    end if;

    -- Conditional update: under READ COMMITTED a concurrent buyer's commit makes this re-check and miss.
    if request.expires_at > now() then
      update items i set buyer_id = request.user_id, purchase_code = request.code, sold_at = now()
      where i.id = request.item_id and i.buyer_id is null
      returning i.sold_at into purchased_at;
    end if;

    if purchased_at is null then
      select i.purchase_code, i.sold_at into sold_by, purchased_at from items i where i.id = request.item_id;
      if sold_by = request.code then
        outcome := 'replayed';
      else
        outcome := case when request.expires_at > now() then 'item_sold' else 'code_expired' end;
        purchased_at := null;
      end if;
    else
      -- The buyer's row (locked above) counts the items bought; the limit is a conditional update.
      update sale_buyers b set bought = b.bought + 1
      where b.sale_id = request.sale_id and b.user_id = request.user_id and b.bought < request.per_user_limit;
      if found then
        outcome := 'purchased';
        sold_in := sold_in || request.sale_id;
      else
        -- Over the limit: give the item back, inside the same transaction, so nothing changed.
        update items i set buyer_id = null, purchase_code = null, sold_at = null where i.id = request.item_id;
        outcome := 'limit_reached';
        purchased_at := null;
      end if;
    end if;
    refused := refused or outcome not in ('purchased', 'replayed');
    return next;
  end loop;

  if cardinality(sold_in) > 0 then
    insert into sold_tallies (sale_id, items)
    select t.sale_id, count(*) from unnest(sold_in) as t(sale_id) group by t.sale_id;
  end if;

  -- A buyer whose purchases were all refused leaves no row behind: a refusal changes nothing. (Only
  -- rows made above can be at 0, and this transaction holds their locks.)
  if refused then
    delete from sale_buyers b
    using unnest(p_codes) as p(code)
    join checkout_attempts c on c.code_key = code_key(p.code) and c.outcome = 'issued'
    where b.sale_id = c.sale_id and b.user_id = c.user_id and b.bought = 0;
  end if;
end;
$$;

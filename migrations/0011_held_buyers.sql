-- purchase() as in migration 0005, except that a buyer's row held by another transaction need no longer
-- stall the whole batch. The service first sends a batch with p_lock_timeout_ms: it fails at once
-- (lock_not_available) if a row stays locked that long. Then it sends the batch again with p_skip_held,
-- which skips the buyers' rows other transactions hold and answers their requests 'held'; those are tried
-- once more in a statement of their own (no argument), which waits for the lock, within lock_timeout. The
-- first try is the same statement as before: skipping costs purchase about 5% (README), paid only then.
-- Called without arguments, as instances from before this migration do, purchase() waits as before.
drop function purchase(text[]);

create function purchase(p_codes text[], p_skip_held boolean default false, p_lock_timeout_ms integer default null)
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
  -- The buyers whose rows this transaction holds, as 'sale_id:user_id' (a sale id has no colon).
  mine text[];
begin
  if p_lock_timeout_ms is not null then
    perform set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
  end if;
  if p_skip_held then
    -- The new buyers' rows, made, and the existing ones no one else holds, locked (`free` reads the
    -- statement's snapshot: rows `made` inserts are not in it).
    with buyers as (
      select distinct c.sale_id, c.user_id
      from unnest(p_codes) as p(code)
      join checkout_attempts c on c.code_key = code_key(p.code) and c.outcome = 'issued'
    ), made as (
      insert into sale_buyers as m (sale_id, user_id, bought)
      select n.sale_id, n.user_id, 0 from buyers n
      order by 1, 2
      on conflict on constraint sale_buyers_pkey do nothing
      returning m.sale_id, m.user_id
    ), free as (
      select b.sale_id, b.user_id from sale_buyers b join buyers w on w.sale_id = b.sale_id and w.user_id = b.user_id
      for update of b skip locked
    )
    select coalesce(array_agg(f.sale_id || ':' || f.user_id), '{}') into mine
    from (select * from free union all select * from made) f;
  else
    -- The buyers' rows, created if new and locked, in (sale, user) order; `where false` locks a row that
    -- exists without writing it again.
    insert into sale_buyers as b (sale_id, user_id, bought)
    select distinct c.sale_id, c.user_id, 0
    from unnest(p_codes) as p(code)
    join checkout_attempts c on c.code_key = code_key(p.code) and c.outcome = 'issued'
    order by 1, 2
    on conflict on constraint sale_buyers_pkey do update set bought = b.bought where false;
  end if;

  for request in
    select p.ord, p.code, c.user_id, c.item_id, c.sale_id, c.expires_at, s.per_user_limit,
           p_skip_held and (c.sale_id || ':' || c.user_id) <> all(mine) as held
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
    if request.held then
      outcome := 'held';
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
  -- rows made above can be at 0, and this transaction holds their locks; a held buyer's row is not touched.)
  if refused then
    delete from sale_buyers b
    using unnest(p_codes) as p(code)
    join checkout_attempts c on c.code_key = code_key(p.code) and c.outcome = 'issued'
    where b.sale_id = c.sale_id and b.user_id = c.user_id and b.bought = 0
      and (not p_skip_held or (b.sale_id || ':' || b.user_id) = any(mine));
  end if;
end;
$$;

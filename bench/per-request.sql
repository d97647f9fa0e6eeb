-- The ceiling's SQL: the per-request design the service used before it coalesced requests (one
-- statement per checkout or purchase, the same rules), installed by `npm run bench` in its own
-- database only. pgbench runs these, so the service's batched statements are compared with the best
-- per-request statements, not with their own one-element form.

-- Records one checkout attempt and decides it, in one statement: the item must exist and be unsold.
-- A code never holds the item: the first valid purchase wins. plpgsql with cached plans, as the
-- service's checkout() (migration 0003): a SQL function's statement is planned again at every call.
create or replace function checkout_one(p_user_id text, p_item_id bigint, p_code text, p_ttl_seconds integer)
returns table (outcome text, sale_id bigint, code text, expires_at timestamptz)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set enable_material = off
as $$
begin
  return query
  insert into checkout_attempts as a (outcome, user_id, item_id, sale_id, code, code_key, expires_at)
  select o.outcome, p_user_id, p_item_id, i.sale_id,
         case when o.outcome = 'issued' then p_code end,
         code_key(p_code),
         case when o.outcome = 'issued' then now() + make_interval(secs => p_ttl_seconds) end
  from (select 1) as one
  left join items i on i.id = p_item_id
  cross join lateral (
    select case when i.id is null then 'item_unknown'
                when i.buyer_id is not null then 'item_sold'
                else 'issued' end as outcome
  ) as o
  returning a.outcome, a.sale_id, a.code, a.expires_at;
end;
$$;

-- Sells the code's item to the code's user, or says why not. Locks in one order (item, then the
-- user's row of the sale), so concurrent purchases cannot deadlock. A refusal changes nothing.
-- Outcomes: purchased, replayed (this code already bought it), code_unknown, code_expired,
-- item_sold (to another code), limit_reached.
create or replace function purchase_one(p_code text)
returns table (outcome text, item_id bigint, sale_id bigint, user_id text, purchased_at timestamptz,
               bought integer, per_user_limit integer)
language plpgsql as $$
declare
  attempt record;
  sold_by text;
begin
  select c.user_id, c.item_id, c.sale_id, c.expires_at, s.per_user_limit into attempt
  from checkout_attempts c join sales s on s.id = c.sale_id
  where c.code_key = code_key(p_code) and c.outcome = 'issued';
  if not found then
    return query select 'code_unknown', null::bigint, null::bigint, null::text, null::timestamptz, null::integer, null::integer;
    return;
  end if;
  item_id := attempt.item_id; sale_id := attempt.sale_id; user_id := attempt.user_id;
  per_user_limit := attempt.per_user_limit;

  -- Conditional update: under READ COMMITTED a concurrent buyer's commit makes this re-check and miss.
  if attempt.expires_at > now() then
    update items i set buyer_id = attempt.user_id, purchase_code = p_code, sold_at = now()
    where i.id = attempt.item_id and i.buyer_id is null
    returning i.sold_at into purchased_at;
  end if;

  if purchased_at is null then
    select i.purchase_code, i.sold_at into sold_by, purchased_at from items i where i.id = attempt.item_id;
    if sold_by = p_code then
      outcome := 'replayed';
    else
      outcome := case when attempt.expires_at > now() then 'item_sold' else 'code_expired' end;
      purchased_at := null;
    end if;
    return next;
    return;
  end if;

  -- The user's row of this sale counts the items bought; the conditional upsert locks it.
  insert into sale_buyers as b (sale_id, user_id, bought)
  values (attempt.sale_id, attempt.user_id, 1)
  on conflict on constraint sale_buyers_pkey do update set bought = b.bought + 1
  where b.bought < attempt.per_user_limit
  returning b.bought into bought;

  if bought is null then
    -- Over the limit: give the item back, inside the same transaction, so nothing changed.
    update items i set buyer_id = null, purchase_code = null, sold_at = null where i.id = attempt.item_id;
    outcome := 'limit_reached';
    purchased_at := null;
  else
    outcome := 'purchased';
  end if;
  return next;
end;
$$;

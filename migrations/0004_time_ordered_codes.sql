-- Codes are keyed by the second they were issued in, so that the hot part of the code index stays small.
--
-- checkout_attempts keeps every attempt for good, and its code index grew with it: keyed by the SHA-256
-- alone, each new code went to a random leaf, so every checkout and purchase touched pages spread over
-- the whole index. Once the index outgrew shared_buffers, most of those were misses (read back from the
-- OS), and each checkpoint was followed by a burst of full-page writes of leaves all over it. With 8
-- million attempts (a 585 MB index, a few weeks of hourly stampedes) checkouts ran 8,100-10,000 req/s
-- against 9,900-12,200 with time-ordered keys, alternating (bench/load.ts checkout-only, 64 connections).
--
-- A code is now 4 bytes of its issue second (big-endian Unix time) and 12 random bytes (96 bits from
-- the CSPRNG): still 22 base64url characters. Its key is that second followed by its SHA-256, so new
-- keys land at the index's right edge and lookups of live codes (at most CODE_TTL old) stay in its
-- recent pages. Comparisons on the key still say nothing about a guess beyond the second it names.

-- The key of a code. Text that does not start with 8 base64url characters (never one of our codes) gets
-- no time part; such a code can never be found, since every issued code has one.
create function code_key(code text) returns bytea
language sql stable parallel safe
return case when code ~ '^[A-Za-z0-9_-]{8}'
            then substring(decode(translate(left(code, 8), '-_', '+/'), 'base64') from 1 for 4)
            else ''::bytea end
       || sha256(convert_to(code, 'UTF8'));

alter table checkout_attempts rename column code_hash to code_key;
alter table checkout_attempts rename constraint checkout_attempts_code_hash_key to checkout_attempts_code_key_unique;
comment on column checkout_attempts.code_key is
  'code_key() of the code the service drew for this request, issued or not: the second it names, then its SHA-256';

-- Issued codes keep working (a purchase, or a replay of one) under the new key. Refused attempts keep
-- theirs: a key only lets a retried checkout find its own record, seconds later.
update checkout_attempts set code_key = code_key(code) where code is not null;

create or replace function checkout(p_user_ids text[], p_item_ids bigint[], p_codes text[], p_ttl_seconds integer)
returns table (ord bigint, outcome text, sale_id bigint, code text, expires_at timestamptz)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set enable_material = off
as $$
begin
  return query
  with decided as (
    select input.ord, input.user_id, input.item_id, i.sale_id, o.outcome,
           code_key(input.code) as code_key,
           case when o.outcome = 'issued' then input.code end as code,
           case when o.outcome = 'issued' then now() + make_interval(secs => p_ttl_seconds) end as expires_at
    from unnest(p_user_ids, p_item_ids, p_codes) with ordinality as input(user_id, item_id, code, ord)
    left join items i on i.id = input.item_id
    cross join lateral (
      select case when i.id is null then 'item_unknown'
                  when i.buyer_id is not null then 'item_sold'
                  else 'issued' end as outcome
    ) as o
  ), recorded as (
    -- A data-modifying CTE runs to completion whether or not it is read: no outcome without its record.
    insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_key, expires_at)
    select d.outcome, d.user_id, d.item_id, d.sale_id, d.code, d.code_key, d.expires_at
    from decided d order by d.ord
    on conflict (code_key) do nothing
  )
  -- The statement's snapshot shows only records of an earlier try of the same request: answer those.
  select d.ord, coalesce(earlier.outcome, d.outcome), coalesce(earlier.sale_id, d.sale_id),
         case when earlier.id is null then d.code else earlier.code end,
         case when earlier.id is null then d.expires_at else earlier.expires_at end
  from decided d
  left join checkout_attempts earlier on earlier.code_key = d.code_key
  order by d.ord;
end;
$$;

-- The two batched functions, as in migrations 0002 and 0003, finding codes by code_key().

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

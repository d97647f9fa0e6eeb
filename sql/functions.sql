-- The live definition of every SQL function: where each rule of the sale is decided today.
--
-- The migrator applies this file after the numbered migrations, in one transaction, whenever its checksum
-- differs from the one recorded in schema_functions, and only to a database whose migrations are exactly
-- this release's (an older release never overwrites a newer one's functions). So edit a function here, in
-- place; `git log -p sql/functions.sql` is its history (the migrations hold the earlier versions and why
-- they changed). A numbered migration is still needed to drop a function, to change its arguments or
-- result (drop it there; it is created here), and with a change that must not be undone while the
-- previous release still runs (README, "Reliability", on deploys).

---------------------------------------------------------------------------------------------------------
-- Where a sale is decided: the service sends every checkout and purchase, in batches, to these two.
---------------------------------------------------------------------------------------------------------

-- Checkout: records every attempt and issues a code only for an item that exists and is unsold. The code
-- never holds the item (the first valid purchase wins), so an abandoned checkout strands nothing.
-- Generic plans over key lookups only (the `set` lines): a plan made on a young table must stay good.
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

-- Purchase: sells each code's item to the code's user, at most once per item and at most the sale's
-- per-user limit per buyer, or says why not; a refusal changes nothing. Locks go in one global order
-- (buyers' rows, then items by id), so concurrent purchases never deadlock. With p_skip_held, a buyer's
-- row another transaction holds is answered 'held' instead of stalling the batch (src/shop.ts retries it).
create or replace function purchase(p_codes text[], p_skip_held boolean default false, p_lock_timeout_ms integer default null)
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

---------------------------------------------------------------------------------------------------------
-- Codes and attempt keys: every key starts with the second it was made in, so new keys land at the
-- index's right edge and name their month's partition of checkout_attempts.
---------------------------------------------------------------------------------------------------------

-- The key a code is found by: its issue second (its first 4 bytes), then its SHA-256. Codes are never
-- compared as text, so an index lookup says nothing about how close a guess came.
create or replace function code_key(code text) returns bytea
language sql stable parallel safe
return case when code ~ '^[A-Za-z0-9_-]{8}'
            then substring(decode(translate(left(code, 8), '-_', '+/'), 'base64') from 1 for 4)
            else ''::bytea end
       || sha256(convert_to(code, 'UTF8'));

-- The first four bytes of every key made in the second of `at`: the bounds of a month's partition.
create or replace function attempt_key_at(at timestamptz) returns bytea
language sql immutable parallel safe
return substring(int8send(floor(extract(epoch from at))::bigint) from 5 for 4);

-- The key of an attempt without a code (a refused request): its second, then 128 random bits.
create or replace function attempt_key() returns bytea
language sql volatile parallel safe
return attempt_key_at(now()) || uuid_send(gen_random_uuid());

---------------------------------------------------------------------------------------------------------
-- Sales: when each opens, and how much of it is sold.
---------------------------------------------------------------------------------------------------------

-- The start of the sale interval that holds `at`, counted from the Unix epoch in UTC.
create or replace function sale_boundary(at timestamptz, interval_seconds integer) returns timestamptz
language sql immutable parallel safe
return to_timestamp(floor(extract(epoch from at) / interval_seconds) * interval_seconds);

-- Opens the sale of the current boundary (by this database's clock) with all its items, exactly once:
-- callers may race, the unique starts_at lets one insert. Called by every instance's scheduler.
create or replace function ensure_current_sale(interval_seconds integer, sale_size integer, per_user_limit integer)
returns table (sale_id bigint, created boolean, next_starts_at timestamptz, seconds_to_next double precision)
language plpgsql as $$
declare
  boundary timestamptz := sale_boundary(now(), interval_seconds);
  new_id bigint;
begin
  select s.id into sale_id from sales s where s.starts_at = boundary;
  created := false;
  if sale_id is null then
    insert into sales (starts_at, size, per_user_limit)
    values (boundary, sale_size, ensure_current_sale.per_user_limit)
    on conflict (starts_at) do nothing
    returning id into new_id;
    if new_id is not null then
      insert into items (sale_id, seed)
      select new_id, floor(random() * 2147483647)::integer from generate_series(1, sale_size);
      sale_id := new_id;
      created := true;
    else
      select s.id into sale_id from sales s where s.starts_at = boundary;
    end if;
  end if;
  next_starts_at := boundary + make_interval(secs => interval_seconds);
  seconds_to_next := extract(epoch from next_starts_at - clock_timestamp());
  return next;
end;
$$;

-- Folds the tallies purchase() appends into each sale's sold figure, then recounts one open sale from
-- its buyers' rows. No purchase updates the figure itself: that would be a hot row.
create or replace function refresh_sold_counts() returns void
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

---------------------------------------------------------------------------------------------------------
-- checkout_attempts' monthly partitions (the scheduler makes them ahead; retention drops whole months).
---------------------------------------------------------------------------------------------------------

-- The non-default partitions and where each ends (the upper bound of its keys, as a time).
create or replace function attempt_partitions() returns table (name text, ends_at timestamptz)
language sql stable as $$
  select c.relname::text, to_timestamp(('x' || bound[1])::bit(32)::bigint)
  from pg_inherits i
  join pg_class c on c.oid = i.inhrelid
  cross join lateral regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''\\x([0-9a-f]{8})') as bound
  where i.inhparent = 'checkout_attempts'::regclass and bound is not null
$$;

-- Adds a partition for each month until the partitions reach `months_ahead` months past now (UTC). One
-- caller at a time; a lock it cannot get within a second fails the call, to be tried again later, rather
-- than queue checkouts behind it.
create or replace function create_attempt_partitions(months_ahead integer) returns integer
language plpgsql as $$
declare
  covered timestamptz;
  next_month timestamptz;
  made integer := 0;
begin
  perform pg_advisory_xact_lock(7201042919);
  perform set_config('lock_timeout', '1s', true);
  select coalesce(max(p.ends_at), (date_trunc('month', now() at time zone 'UTC')) at time zone 'UTC') into covered
  from attempt_partitions() p;
  while covered < now() + make_interval(months => months_ahead) loop
    next_month := ((covered at time zone 'UTC') + interval '1 month') at time zone 'UTC';
    execute format('create table %I (like checkout_attempts including all)',
                   'checkout_attempts_' || to_char(covered at time zone 'UTC', 'YYYY_MM'));
    execute format('alter table checkout_attempts attach partition %I for values from (%L) to (%L)',
                   'checkout_attempts_' || to_char(covered at time zone 'UTC', 'YYYY_MM'),
                   attempt_key_at(covered), attempt_key_at(next_month));
    covered := next_month;
    made := made + 1;
  end loop;
  return made;
end;
$$;

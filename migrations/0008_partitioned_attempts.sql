-- Partitioning checkout_attempts by month, step 3 of 3: the partitioned table takes the old one's name,
-- and the old table becomes its partition of everything before the cutover.
--
-- The partition key is code_key: every key begins with the second it was made in (migration 0004), so a
-- code names its partition. Whole months leave when ATTEMPTS_RETENTION_DAYS says so (detached and
-- dropped, never deleted row by row). Months, not days: PostgreSQL 15 prepares every partition a cached
-- plan may touch at each execution, so a plan over hundreds of daily partitions costs many times one over
-- a few monthly ones; checkout() and purchase() also bound the keys they look up, so that only the
-- partitions of the batch's own seconds are opened.

-- Scans the table under a lock that lets checkouts go on; after it, nothing below reads or writes rows.
alter table checkout_attempts validate constraint checkout_attempts_before_cutover;

lock table checkout_attempts in access exclusive mode;
do $$
declare
  cutover bytea := decode(substring(
    (select pg_get_constraintdef(oid) from pg_constraint
     where conrelid = 'checkout_attempts'::regclass and conname = 'checkout_attempts_before_cutover'),
    '\\x([0-9a-f]{8})'), 'hex');
  before_name text := 'checkout_attempts_until_'
    || to_char(to_timestamp(('x' || encode(cutover, 'hex'))::bit(32)::bigint) at time zone 'UTC', 'YYYY_MM');
begin
  perform setval('checkout_attempt_ids', greatest(
    (select max(id) from checkout_attempts), (select max(id) from checkout_attempts_other), 1));
  execute format('alter table checkout_attempts rename to %I', before_name);
  -- Its valid check proves the column holds no null: no scan.
  execute format('alter table %I alter column code_key set not null, alter column id drop identity', before_name);
  alter table checkout_attempts_partitioned rename to checkout_attempts;
  -- The same check proves the bounds: no scan either.
  execute format('alter table checkout_attempts attach partition %I for values from (minvalue) to (%L)', before_name, cutover);
end;
$$;

-- The non-default partitions and where each ends (the upper bound of its keys, as a time).
create function attempt_partitions() returns table (name text, ends_at timestamptz)
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
create function create_attempt_partitions(months_ahead integer) returns integer
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

select create_attempt_partitions(1);

-- The smallest and the largest key of a batch's codes. The batched functions bound their lookups by
-- them: PostgreSQL then opens only the partitions of those seconds, not every partition there is.
create function code_key_bounds(codes text[], out lo bytea, out hi bytea)
language sql stable parallel safe as $$
  select (select code_key(c) from unnest(codes) as c order by 1 limit 1),
         (select code_key(c) from unnest(codes) as c order by 1 desc limit 1)
$$;

-- checkout() as in migration 0004, its lookup bounded by the batch's keys.
create or replace function checkout(p_user_ids text[], p_item_ids bigint[], p_codes text[], p_ttl_seconds integer)
returns table (ord bigint, outcome text, sale_id bigint, code text, expires_at timestamptz)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set enable_material = off
as $$
declare
  lo bytea;
  hi bytea;
begin
  select b.lo, b.hi into lo, hi from code_key_bounds(p_codes) b;
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
  left join checkout_attempts earlier on earlier.code_key = d.code_key and earlier.code_key between lo and hi
  order by d.ord;
end;
$$;

-- purchase() as in migration 0005, its lookups bounded by the batch's keys.
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
  lo bytea;
  hi bytea;
begin
  select b.lo, b.hi into lo, hi from code_key_bounds(p_codes) b;
  -- The buyers' rows, created if new and locked, in (sale, user) order; `where false` locks a row that
  -- exists without writing it again.
  insert into sale_buyers as b (sale_id, user_id, bought)
  select distinct c.sale_id, c.user_id, 0
  from unnest(p_codes) as p(code)
  join checkout_attempts c on c.code_key = code_key(p.code) and c.code_key between lo and hi and c.outcome = 'issued'
  order by 1, 2
  on conflict on constraint sale_buyers_pkey do update set bought = b.bought where false;

  for request in
    select p.ord, p.code, c.user_id, c.item_id, c.sale_id, c.expires_at, s.per_user_limit
    from unnest(p_codes) with ordinality as p(code, ord)
    left join checkout_attempts c on c.code_key = code_key(p.code) and c.code_key between lo and hi and c.outcome = 'issued'
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
    join checkout_attempts c on c.code_key = code_key(p.code) and c.code_key between lo and hi and c.outcome = 'issued'
    where b.sale_id = c.sale_id and b.user_id = c.user_id and b.bought = 0;
  end if;
end;
$$;

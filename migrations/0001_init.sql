-- The whole sale lives here: each rule of the mission is a constraint or a statement in this file.

create table sales (
  id             bigint generated always as identity primary key,
  -- One sale per boundary: concurrent creators meet on this unique key.
  starts_at      timestamptz not null unique,
  size           integer not null check (size > 0),
  per_user_limit integer not null check (per_user_limit > 0),
  created_at     timestamptz not null default now()
);

create table items (
  id            bigint generated always as identity primary key,
  sale_id       bigint not null references sales (id),
  -- Drives the generated name and image; random per item, fixed for its life.
  seed          integer not null,
  buyer_id      text,
  purchase_code text unique,
  sold_at       timestamptz,
  -- Sold means all three are set, unsold means none is.
  check ((buyer_id is null) = (purchase_code is null) and (buyer_id is null) = (sold_at is null))
);
create index items_sale_id_idx on items (sale_id, id);
-- The available items of a sale, in id order: keyset pagination and sold counts stay cheap.
create index items_available_idx on items (sale_id, id) where buyer_id is null;
create index items_buyer_idx on items (buyer_id, sale_id) where buyer_id is not null;

-- Per (sale, user): the row that the per-user limit locks and counts. One row per buyer, never a hot row.
create table sale_buyers (
  sale_id bigint not null references sales (id),
  user_id text not null,
  -- 0 only inside the purchase that made the row to lock it; it is gone again by the commit.
  bought  integer not null check (bought >= 0),
  primary key (sale_id, user_id)
);

-- Every checkout request, whatever its outcome. An issued code is the row of its checkout.
create table checkout_attempts (
  id         bigint generated always as identity primary key,
  created_at timestamptz not null default now(),
  outcome    text not null check (outcome in ('issued', 'item_sold', 'item_unknown', 'bad_request', 'rate_limited')),
  user_id    text,
  item_id    bigint,
  sale_id    bigint references sales (id),
  code       text,
  -- The SHA-256 of the code the service drew for this request, issued or not. Codes are found by it,
  -- never by their text (index comparisons say nothing about how close a guess came), and it makes
  -- the checkout statement idempotent: sent again after a lost connection, it finds its own record.
  code_hash  bytea unique,
  expires_at timestamptz,
  -- The raw query of a refused request, cut short: what the client sent, for the record.
  detail     text,
  check ((outcome = 'issued') = (code is not null) and (code is null) = (expires_at is null)
         and (code_hash is null) = (outcome in ('bad_request', 'rate_limited')))
);

-- The start of the sale interval that holds `at`, counted from the Unix epoch in UTC.
create function sale_boundary(at timestamptz, interval_seconds integer) returns timestamptz
language sql immutable parallel safe
return to_timestamp(floor(extract(epoch from at) / interval_seconds) * interval_seconds);

-- Creates the sale of the current boundary (by this database's clock) with all its items, once:
-- any number of callers may race, the unique starts_at lets exactly one insert.
-- Returns the boundary's sale id, and when the next boundary comes.
create function ensure_current_sale(interval_seconds integer, sale_size integer, per_user_limit integer)
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

-- Records checkout attempts and decides each, in one statement for a whole batch of requests (the
-- service coalesces concurrent checkouts; a batch may be of one): the item must exist and be unsold.
-- A code never holds the item: the first valid purchase wins. Results come back in the order given.
-- Idempotent: a request sent again (same code) is not recorded twice and answers what was recorded.
create function checkout(p_user_ids text[], p_item_ids bigint[], p_codes text[], p_ttl_seconds integer)
returns table (ord bigint, outcome text, sale_id bigint, code text, expires_at timestamptz)
language sql as $$
  with decided as (
    select input.ord, input.user_id, input.item_id, i.sale_id, o.outcome,
           sha256(convert_to(input.code, 'UTF8')) as code_hash,
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
    insert into checkout_attempts (outcome, user_id, item_id, sale_id, code, code_hash, expires_at)
    select d.outcome, d.user_id, d.item_id, d.sale_id, d.code, d.code_hash, d.expires_at
    from decided d order by d.ord
    on conflict (code_hash) do nothing
  )
  -- The statement's snapshot shows only records of an earlier try of the same request: answer those.
  select d.ord, coalesce(earlier.outcome, d.outcome), coalesce(earlier.sale_id, d.sale_id),
         case when earlier.id is null then d.code else earlier.code end,
         case when earlier.id is null then d.expires_at else earlier.expires_at end
  from decided d
  left join checkout_attempts earlier on earlier.code_hash = d.code_hash
  order by d.ord
$$;

-- Sells each code's item to the code's user, or says why not, for a batch of codes in one transaction
-- (a batch may be of one). A refusal changes nothing. Outcomes: purchased, replayed (this code already
-- bought it), code_unknown, code_expired, item_sold (to another code), limit_reached; on limit_reached
-- also the codes that bought the user's items of that sale (they can never change).
-- Locks are taken in one global order: first the buyers' rows (sale, user), then the items by id. Two
-- purchases, batched or not, therefore never wait for each other in a circle: no deadlock.
create function purchase(p_codes text[])
returns table (ord bigint, outcome text, item_id bigint, sale_id bigint, user_id text, purchased_at timestamptz,
               per_user_limit integer, bought_codes text[])
language plpgsql as $$
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
  join checkout_attempts c on c.code_hash = sha256(convert_to(p.code, 'UTF8')) and c.outcome = 'issued'
  order by 1, 2
  on conflict on constraint sale_buyers_pkey do update set bought = b.bought where false;

  for request in
    select p.ord, p.code, c.user_id, c.item_id, c.sale_id, c.expires_at, s.per_user_limit
    from unnest(p_codes) with ordinality as p(code, ord)
    left join checkout_attempts c on c.code_hash = sha256(convert_to(p.code, 'UTF8')) and c.outcome = 'issued'
    left join sales s on s.id = c.sale_id
    order by c.item_id nulls first, p.ord
  loop
    ord := request.ord; item_id := request.item_id; sale_id := request.sale_id; user_id := request.user_id;
    per_user_limit := request.per_user_limit; purchased_at := null; bought_codes := null;
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
        select array_agg(i.purchase_code order by i.id) into bought_codes
        from items i where i.buyer_id = request.user_id and i.sale_id = request.sale_id;
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
    join checkout_attempts c on c.code_hash = sha256(convert_to(p.code, 'UTF8')) and c.outcome = 'issued'
    where b.sale_id = c.sale_id and b.user_id = c.user_id and b.bought = 0;
  end if;
end;
$$;

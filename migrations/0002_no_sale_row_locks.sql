-- Checkouts and purchases stop locking their sale's row, and purchase() stops listing the codes that
-- filled a user's limit (only a Redis shortcut, now gone, used them).

-- A foreign key check takes FOR KEY SHARE on the referenced row for every row inserted. Every checkout
-- and every new buyer referenced the same sales row, so concurrent transactions shared its lock and
-- turned it into a MultiXact that each of them rewrote: a hot row by another name (dropping the keys
-- measured +9-13% checkout and +5-17% purchase throughput, side by side). These sale ids are always copied, in the statement
-- that writes them, from a row that already references the sale (items.sale_id for an attempt,
-- the attempt's sale_id for a buyer), and sales are never deleted; items keep their foreign key.
alter table checkout_attempts drop constraint checkout_attempts_sale_id_fkey;
alter table sale_buyers drop constraint sale_buyers_sale_id_fkey;

-- Both batched functions find rows only through unique keys (a code's hash, an item's or a buyer's
-- primary key), yet the planner picked sequential scans of checkout_attempts for them while the table
-- was young and never analyzed (a fresh database, the first sale): each lookup then read the whole
-- table, and a first stampede took 41 s instead of seconds. The plans may not depend on statistics.
alter function checkout(text[], bigint[], text[], integer) set enable_seqscan = off;

-- The return type changes, so the function is dropped and created again (in this one transaction).
drop function purchase(text[]);

-- Sells each code's item to the code's user, or says why not, for a batch of codes in one transaction
-- (a batch may be of one). A refusal changes nothing. Outcomes: purchased, replayed (this code already
-- bought it), code_unknown, code_expired, item_sold (to another code), limit_reached.
-- Locks are taken in one global order: first the buyers' rows (sale, user), then the items by id. Two
-- purchases, batched or not, therefore never wait for each other in a circle: no deadlock.
create function purchase(p_codes text[])
returns table (ord bigint, outcome text, item_id bigint, sale_id bigint, user_id text, purchased_at timestamptz,
               per_user_limit integer)
language plpgsql set enable_seqscan = off as $$
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
    join checkout_attempts c on c.code_hash = sha256(convert_to(p.code, 'UTF8')) and c.outcome = 'issued'
    where b.sale_id = c.sale_id and b.user_id = c.user_id and b.bought = 0;
  end if;
end;
$$;

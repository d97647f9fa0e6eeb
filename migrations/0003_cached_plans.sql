-- The batched functions keep their plans: each call used to plan its statements again.

-- checkout() was a SQL function, and PostgreSQL plans a SQL function's statement anew at every call;
-- purchase()'s statements got custom plans for each call, because a batch's array is a different
-- constant every time. Planning cost more than the work: with cached generic plans, batches of 4
-- checkouts ran 2.3-2.5 times as many per second and batches of 4 purchases 1.4-1.6 times (pgbench,
-- 16 clients, side by side).
--
-- A generic plan is made once per connection, without the batch's size, and is kept while the tables
-- grow: made on a fresh database, a plan that reads a whole (then tiny) table for every request would
-- outlive it. So these functions may only join by nested loops over key lookups, and every lookup here
-- has a unique index: with sequential scans, hash and merge joins and materialized inner scans all
-- off, no plan depends on the tables' sizes or statistics.

-- Records checkout attempts and decides each, in one statement for a whole batch of requests (the
-- service coalesces concurrent checkouts; a batch may be of one): the item must exist and be unsold.
-- A code never holds the item: the first valid purchase wins. Results come back in the order given.
-- Idempotent: a request sent again (same code) is not recorded twice and answers what was recorded.
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
  order by d.ord;
end;
$$;

alter function purchase(text[])
  set plan_cache_mode = force_generic_plan
  set enable_hashjoin = off set enable_mergejoin = off set enable_material = off;

-- Partitioning checkout_attempts by month, step 3 of 3: the partitioned table takes the old one's name,
-- and the old table becomes its partition of everything before the cutover.
--
-- The partition key is code_key: every key begins with the second it was made in (migration 0004), so a
-- code names its partition. Whole months leave when ATTEMPTS_RETENTION_DAYS says so (detached and
-- dropped, never deleted row by row). Months, not days: PostgreSQL 15 locks every partition a cached
-- plan may touch at each execution, so each partition kept costs every checkout and purchase a little
-- (README, "Months of operation"). checkout() and purchase() are unchanged: they find a code by its key,
-- through the partitioned table's unique index.

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

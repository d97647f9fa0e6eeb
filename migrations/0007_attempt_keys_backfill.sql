-- Partitioning checkout_attempts by month, step 2 of 3, under locks that let checkouts go on: keys for
-- the refused attempts stored without one, the rule validated, and the partitioned table made beside the
-- old one, which step 3 turns into its partition of everything before the cutover.

update checkout_attempts set code_key = attempt_key_at(created_at) || sha256(int8send(id)) where code_key is null;
alter table checkout_attempts validate constraint checkout_attempts_check;

create sequence checkout_attempt_ids;

create table checkout_attempts_partitioned (
  id         bigint not null default nextval('checkout_attempt_ids'),
  created_at timestamptz not null default now(),
  outcome    text not null,
  user_id    text,
  item_id    bigint,
  sale_id    bigint,
  code       text,
  code_key   bytea not null default attempt_key(),
  expires_at timestamptz,
  -- What the client sent, for a refused attempt (the service keeps at most 200 characters of it).
  detail     text,
  constraint checkout_attempts_outcome_check check (outcome in ('issued', 'item_sold', 'item_unknown', 'bad_request', 'rate_limited')),
  constraint checkout_attempts_check check ((outcome = 'issued') = (code is not null) and (code is null) = (expires_at is null)),
  constraint attempts_code_key_unique unique (code_key)
) partition by range (code_key);
alter sequence checkout_attempt_ids owned by checkout_attempts_partitioned.id;
-- Keys outside every month: codes of a clock that is far off, and codes from before migration 0004.
create table checkout_attempts_other partition of checkout_attempts_partitioned default;

do $$
declare
  -- The first month boundary at least a day away: the old table keeps everything before it.
  cutover timestamptz := (date_trunc('month', (now() + interval '1 day') at time zone 'UTC') + interval '1 month') at time zone 'UTC';
  month timestamptz;
begin
  for month in select cutover + make_interval(months => n) from generate_series(0, 1) as n loop
    execute format('create table %I partition of checkout_attempts_partitioned for values from (%L) to (%L)',
                   'checkout_attempts_' || to_char(month at time zone 'UTC', 'YYYY_MM'),
                   attempt_key_at(month), attempt_key_at(((month at time zone 'UTC') + interval '1 month') at time zone 'UTC'));
  end loop;
  -- Codes from before migration 0004 began with random bytes: those that name a second past the
  -- cutover move to the default partition, where they are still found.
  with moved as (
    delete from checkout_attempts where code_key >= attempt_key_at(cutover)
    returning id, created_at, outcome, user_id, item_id, sale_id, code, code_key, expires_at, detail
  )
  insert into checkout_attempts_other select * from moved;
  -- Last, as it takes the exclusive lock until this step commits: no key at or past the cutover from
  -- now on (step 3 checks the rows so far).
  execute format('alter table checkout_attempts add constraint checkout_attempts_before_cutover '
                 'check (code_key is not null and code_key < %L) not valid', attempt_key_at(cutover));
end;
$$;

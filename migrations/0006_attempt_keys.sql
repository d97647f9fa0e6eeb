-- Partitioning checkout_attempts by month, step 1 of 3 (0006-0008; each file commits on its own, so
-- that no step holds checkouts back for long). See 0008 for the layout and why.
--
-- From here on every attempt gets a key, refused ones too (they had none): the partition key may not be
-- null. This step takes the table's exclusive lock for catalog changes only.

-- The first four bytes of every key made in the second of `at`: the bounds of a month's partition.
create function attempt_key_at(at timestamptz) returns bytea
language sql immutable parallel safe
return substring(int8send(floor(extract(epoch from at))::bigint) from 5 for 4);

-- The key of an attempt without a code: its second, then 128 random bits.
create function attempt_key() returns bytea
language sql volatile parallel safe
return attempt_key_at(now()) || uuid_send(gen_random_uuid());

-- The rule loses its "refused attempts have no key"; existing rows are checked in step 2.
alter table checkout_attempts
  alter column code_key set default attempt_key(),
  drop constraint checkout_attempts_check,
  add constraint checkout_attempts_check
    check ((outcome = 'issued') = (code is not null) and (code is null) = (expires_at is null)) not valid;

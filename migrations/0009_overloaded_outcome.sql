-- A checkout shed for overload (the queue was full, or its budget ran out) is an attempt too, recorded
-- with outcome 'overloaded'. The rule only widens, so rows so far keep to it; it is checked for them in
-- 0010, under a lock that lets checkouts go on (this step holds the exclusive lock for the catalog only).
alter table checkout_attempts
  drop constraint checkout_attempts_outcome_check,
  add constraint checkout_attempts_outcome_check
    check (outcome in ('issued', 'item_sold', 'item_unknown', 'bad_request', 'rate_limited', 'overloaded')) not valid;

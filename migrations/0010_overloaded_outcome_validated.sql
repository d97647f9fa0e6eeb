-- The widened outcome rule of 0009, checked for every row so far (a scan that lets checkouts go on).
alter table checkout_attempts validate constraint checkout_attempts_outcome_check;

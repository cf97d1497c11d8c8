-- The ledger tells settled batches from those a later run must take up again:
--   promoted, partially_promoted, rejected: settled, skipped by a re-run of the same bytes;
--   waiting: held back only because a referenced department or job did not exist yet;
--   failed: a transient database error outlasted the retries.
alter table audit.batches drop constraint if exists batches_status_check;
alter table audit.batches add constraint batches_status_check check (
    status in ('promoted', 'partially_promoted', 'rejected', 'waiting', 'failed')
);
alter table audit.batches add column if not exists attempts integer not null default 1;
create index if not exists batches_table_name on audit.batches (table_name);
create index if not exists rejected_rows_table_name on audit.rejected_rows (table_name);

-- Who runs, so that a second run can say whom it waits for, and when a dead run was noticed.
alter table audit.runs add column if not exists host text;
alter table audit.runs add column if not exists pid integer;
alter table audit.runs add column if not exists abandoned_noticed_at timestamptz;

-- The first release recorded a failed promotion (deadlock, lost connection, a value the cast
-- refused) as a rejection that no run would try again: make those batches retryable.
update audit.batches
set status = 'failed'
where status = 'rejected'
    and reasons @> '[{"expectation": "promotion"}]';

-- Batches held back only because a department or job was missing wait for it to arrive.
update audit.batches
set status = 'waiting'
where status in ('rejected', 'partially_promoted')
    and jsonb_array_length(reasons) > 0
    and not exists (
        select 1
        from jsonb_array_elements(reasons) as reason
        where reason ->> 'expectation' <> 'expect_column_values_to_be_in_set'
    );

-- The audit schema as the first release created it. Every statement is idempotent, so a
-- database set up before migrations were recorded is taken over as it is.
create table if not exists audit.runs (
    run_id text primary key,
    started_at timestamptz not null,
    finished_at timestamptz,
    input text not null,
    batch_size integer not null,
    policy text not null,
    status text not null,
    summary jsonb
);

create table if not exists audit.batches (
    batch_id text primary key,
    run_id text not null references audit.runs (run_id),
    table_name text not null,
    source text not null,
    first_line integer not null,
    last_line integer not null,
    rows_read integer not null,
    rows_promoted integer not null,
    rows_rejected integer not null,
    status text not null check (status in ('promoted', 'rejected', 'partially_promoted')),
    reasons jsonb not null default '[]',
    settled_at timestamptz not null default now()
);

create table if not exists audit.mart_builds (
    built_at timestamptz primary key default clock_timestamp(),
    rows jsonb not null
);

create table if not exists audit.api_requests (
    idempotency_key text primary key,
    body_sha256 text not null,
    status_code integer,
    response jsonb,
    received_at timestamptz not null default now()
);

create table if not exists audit.rejected_rows (
    batch_id text not null references audit.batches (batch_id),
    run_id text not null,
    table_name text not null,
    source text not null,
    line_number integer not null,
    raw_values jsonb not null,
    failures jsonb not null,
    primary key (batch_id, line_number)
);

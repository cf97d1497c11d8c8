-- The file ledger: each export file a run read, by URL (secrets hidden), with what identifies its
-- content (size, modification time or ETag, sha256) and what became of it:
--   loaded: every batch settled (promoted or held back with its rules);
--   partially_loaded: some batches wait for a department or job, or failed transiently;
--   malformed: not the table it claims to be (the reason names the line and field).
-- A file whose latest row says loaded, with the same size and version or sha256, is not read
-- again. The batch ledger stays the authority: a file read again settles only what changed.
create table if not exists audit.files (
    file_id bigserial primary key,
    url text not null,
    table_name text not null,
    size bigint not null,
    version text,
    sha256 text,
    run_id text not null,
    state text not null check (state in ('loaded', 'partially_loaded', 'malformed')),
    reason text,
    batches integer not null default 0,
    rows_read bigint not null default 0,
    recorded_at timestamptz not null default now()
);
create index if not exists files_url on audit.files (url, recorded_at desc);
create index if not exists files_run_id on audit.files (run_id);

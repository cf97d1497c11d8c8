"""`python -m loader bench`: the loader, its marts, backups and API timed next to what PostgreSQL's
own tools do with the same rows, in scratch databases it makes and drops.

suite.py runs the rounds; scratch.py owns the databases; measure.py runs one step in a process
of its own; references.py holds PostgreSQL's tools (psql, pgloader, pg_dump, pg_restore);
paths.py and api.py the project's paths; report.py prints the table and writes the JSON.
"""

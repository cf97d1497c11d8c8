"""The REST API: batch inserts through the loader's validation path, reports, audit, backups."""

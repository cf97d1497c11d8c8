"""AVRO backups of the core tables: create, list, verify, restore, schedule."""

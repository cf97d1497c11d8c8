"""Fault tests: real `python -m loader run` processes that overlap, are killed, or lose their
database, and what a user would notice afterwards (exit codes, messages, every row once)."""

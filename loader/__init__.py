"""CSV exports → PostgreSQL, every batch validated by Great Expectations, every reject logged."""

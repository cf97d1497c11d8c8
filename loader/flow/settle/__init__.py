"""Settling judged batches: the engine (one batch, one transaction), its SQL, lanes, the settle
line."""

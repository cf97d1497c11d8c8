"""Judging batches: the Gate protocol, the GX gate in this process or a forked one, the rules."""

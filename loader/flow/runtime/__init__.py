"""Process plumbing: memory, kill points for fault tests, the state folder. Configured by explicit
calls."""

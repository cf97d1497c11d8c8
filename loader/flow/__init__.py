"""A batch's path: source → judge → land → settle, and the drivers that run it (file_run,
api_run, cluster) over one pipeline."""

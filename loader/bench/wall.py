"""The loader as a user starts it: `python -m loader ...` as a process of its own, timed from
outside, interpreter start, imports and the forked gate included; its peak is the program's.

`loader_wall` runs `run --skip-marts` into a fresh database; `loader_rerun_wall` runs the same
command again over the same input and state (every file in the file ledger: nothing to read);
`cli_help` is `python -m loader --help`.
"""

from __future__ import annotations

import os
import sys

from loader.bench.measure import PROGRAMS, Work, run_program


def loader_command(job: dict) -> Work:
    """`python -m loader *job["arguments"]` with DATABASE_URL and LOADER_STATE_DIR from the job
    (when given); the work is the whole process, its exit status checked."""
    for variable, key in (("DATABASE_URL", "url"), ("LOADER_STATE_DIR", "state_dir")):
        if key in job:
            os.environ[variable] = job[key]
    # The measured process reads no other loader settings than the job's.
    for variable in [name for name in os.environ if name.startswith("LOADER_")]:
        if variable != "LOADER_STATE_DIR":
            del os.environ[variable]
    command = [sys.executable, "-m", "loader", *job["arguments"]]
    return Work(lambda: run_program(command), PROGRAMS)

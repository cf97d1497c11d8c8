"""A gate process judges without SciPy's stats and Altair in memory, and a module deferred
that something does use is still there when used.

Each case runs in a fresh interpreter: this test process has imported GX (and with it the
real modules) through other tests, and a gate forked from it would inherit them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNUSED_MODULES_LOADED = """
import json, sys
from pathlib import Path
from loader.flow.judge.gate_process import ForkedGate
from loader.flow.model import RawBatch
from loader.flow.source.csv_reader import to_arrow
from loader.settings import EXPECTATIONS_DIR
from loader.tables import HIRED_EMPLOYEES

def loaded():
    # a module each import executes, not the name a stand-in holds
    return [name for name in ("scipy.stats._stats_py", "altair.vegalite") if name in sys.modules]

good = ["7", "Ana Silva", "2021-03-01T10:00:00Z", "1", "1"]
rows = [good, ["8", None, *good[2:]]]
batch = RawBatch.from_lists(
    HIRED_EMPLOYEES, "test.csv", 1, "b1", [1, 2], [list(c) for c in zip(*rows)], [None, None]
)
gate = ForkedGate(EXPECTATIONS_DIR, Path(sys.argv[1]))
try:
    known = {"departments": [1], "jobs": [1]}
    judged = gate.submit(HIRED_EMPLOYEES, to_arrow(HIRED_EMPLOYEES, [batch], "run"), ["b1"], known)
    failing = sorted(judged.result(timeout=120).verdicts["b1"].failing_rows)
    in_gate = gate._submit(loaded).result(timeout=120)
finally:
    gate.close()
print(json.dumps({"failing": failing, "in_gate": in_gate, "in_run": loaded()}))
"""
USED_AFTER_DEFERRING = """
from loader.flow.judge.gx_import import defer_unused
defer_unused()
import great_expectations
from scipy import stats
import altair
print(stats.entropy([1, 1], [1, 1]), altair.Chart.__name__)
"""


def python(script: str, *arguments: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_gate_process_judges_without_scipy_stats_or_altair_in_memory(tmp_path):
    found = json.loads(python(UNUSED_MODULES_LOADED, str(tmp_path / "gx")))
    assert found["failing"] == [2], "the gate judged the batch: line 2 has no name"
    assert found["in_gate"] == [], "78 MiB of modules no suite uses, in the gate process"
    assert found["in_run"] == [], "the run's own process never imports GX"


def test_a_deferred_module_is_imported_when_something_uses_it():
    assert python(USED_AFTER_DEFERRING).split() == ["0.0", "Chart"]

"""Great Expectations imported without the modules of expectations no suite here uses.

`import great_expectations` imports every expectation GX ships, and two of them (the KL
divergence expectation and the KS-test metrics) import SciPy's `stats` and Altair at module
level: 78 MiB of a gate process's 151 MiB of Pss for GX and 0.7 s of its start (measured
2026-12-07, GX 1.x on Python 3.11), paid by every run, `watch` cycle, API server and cluster
worker for rules the suites do not contain (`rules.expectations_for`). `defer_unused` puts a
stand-in module under each name before GX is imported; the first attribute read on it imports
the real module, so an expectation that does use them still works, only its first use pays
the import. A stand-in rather than `importlib.util.LazyLoader`: on Python 3.11 `import altair`
reads the lazy module's `__spec__` and so executes it at once.

Every process that opens a gate does it here (`in_process_gate`), before its first GX import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loader.flow.judge.checkpoints import InProcessGate

UNUSED_BY_THE_SUITES = ("scipy.stats", "altair")


class DeferredModule(types.ModuleType):
    """A module's name in `sys.modules`, importing the module itself on its first use."""

    def __getattr__(self, attribute: str):
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:  # else imported meanwhile: kept
                sys.modules.pop(self.__name__, None)
            real = self._real = importlib.import_module(self.__name__)
        return getattr(real, attribute)


def defer_unused() -> None:
    """Stand-ins for `UNUSED_BY_THE_SUITES` not imported yet (and installed: a missing one
    stays missing, as GX expects)."""
    for name in UNUSED_BY_THE_SUITES:
        top = name.partition(".")[0]
        if name not in sys.modules and importlib.util.find_spec(top) is not None:
            sys.modules[name] = DeferredModule(name)


def in_process_gate(context_dir: Path, state_dir: Path) -> InProcessGate:
    """The gate of this process, GX imported with `defer_unused` first."""
    defer_unused()
    from loader.flow.judge.checkpoints import InProcessGate

    return InProcessGate(context_dir, state_dir)

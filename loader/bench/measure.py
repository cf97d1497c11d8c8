"""One measured step in a Python process of its own: the seconds of its work and the peak
resident memory of the process that did it.

A step is a function `prepare(job) -> Work` named "module:function". The child process imports
it and calls it (imports, servers starting, untimed), then times `Work.run()` alone and calls
`Work.finish()` (untimed); a step whose figure is not its own wall time (a latency percentile)
returns that figure from `run`. The peak is the high-water mark of resident memory (VmHWM) of the
step's own process, or, when the step's Python only drives programs (psql, pg_dump, the API
server), the highest of theirs, read from /proc while they run, or, when its work is spread
over processes it starts (a Dask LocalCluster's workers), its own plus each of theirs: at most
what the machine holds for it at once (their peaks need not fall together). Not `getrusage`:
Linux carries a parent's peak into a child's `ru_maxrss` across fork and exec, so a psql
started from a 300 MB Python would report 300 MB. A fresh interpreter per step keeps one step's
imports and memory out of the next one's peak. PostgreSQL's own processes are not counted for
any step.

`peak_pss_mb` is what the machine holds for the step at once: the highest sum, over the step's
processes alive at one moment (its own, unless it only drives programs, and every process it
started, theirs included: a run's gate process, a server's), of their proportional set
size, read from /proc/<pid>/smaps_rollup every PSS_WATCH_SECONDS (see there). Pss shares each
page among the processes that map it, so a forked child's untouched pages are not counted
twice, as an RSS sum would count them.
"""

from __future__ import annotations

import importlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROCESS = "process"  # the step's own process does the work
PROGRAMS = "programs"  # the programs it started do it: the step's Python only drives them
TREE = "tree"  # the step's process and those it starts (a LocalCluster's workers), summed
TAIL_LINES = 5
WATCH_SECONDS = 0.005
TREE_WATCH_SECONDS = 0.1  # workers live for the whole run: a look now and then is enough
# Reading smaps_rollup walks a process's page tables: 22 ms of kernel time for a 1M run's
# processes (measured 2026-12-07). Every 50 ms that was ~0.45 of a core taken from the run it
# measured (the loader step 10-30% slower than the same run unwatched); every 250 ms it is
# ~0.1, and a peak shorter than that may be missed (10M rows: 502 MB read every 250 ms against
# 508 every 50 ms, measured 2026-12-07).
PSS_WATCH_SECONDS = 0.25
program_peaks: list[float] = []  # MB, one per program this process ran (one step per process)


class StepFailed(RuntimeError):
    """A step's process failed; the message ends with the last lines it wrote."""


@dataclass
class Work:
    """What a prepared step does when timed, and how it cleans up after the clock stops."""

    run: Callable[[], float | None]
    peak_of: str = PROCESS
    finish: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mb: float
    peak_pss_mb: float | None = None  # None where /proc has no smaps_rollup


def measure(step: str, job: dict) -> Measurement:
    """Run `step` ("module:function") on `job` (JSON-able) in a fresh Python process."""
    with tempfile.TemporaryDirectory(prefix="loader-bench-step-") as folder:
        job_file, result_file = Path(folder) / "job.json", Path(folder) / "result.json"
        job_file.write_text(json.dumps(job, default=str))
        done = subprocess.run(
            [sys.executable, "-m", "loader.bench.measure", step, str(job_file), str(result_file)],
            capture_output=True,
            text=True,
            errors="replace",
        )
        if done.returncode != 0 or not result_file.exists():
            tail = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise StepFailed(
                f"step {step} failed (exit {done.returncode}): "
                + " | ".join(tail[-TAIL_LINES:] or ["no output"])
            )
        return Measurement(**json.loads(result_file.read_text()))


def high_water_mb(pid: int | str = "self") -> float | None:
    """VmHWM of a running process in MB, or None when it is gone (or /proc is absent)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def record_peak(pid: int) -> None:
    """Note the peak so far of a program this step started (call it before stopping it)."""
    peak = high_water_mb(pid)
    if peak is not None:
        program_peaks.append(peak)


def gnu_time() -> str | None:
    """The path of GNU time (Debian's `time` package), or None: BSD's has no --output."""
    path = shutil.which("time")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True, errors="replace")
    return path if "GNU" in version.stdout + version.stderr else None


GNU_TIME = gnu_time()


def run_program(arguments: list[str]) -> None:
    """Run a program to its end, noting its peak memory; RuntimeError if it fails.

    Through GNU time where installed: it forks the program from its own small process and
    reports the child's `ru_maxrss` (%M), exact however short the program. A program started
    straight from this Python would carry the Python's peak across exec into its own
    `ru_maxrss`, and sampling /proc misses a program that ends between two samples.
    """
    with tempfile.NamedTemporaryFile(prefix="loader-bench-rss-", suffix=".txt") as rss:
        timed = [GNU_TIME, "--format", "%M", "--output", rss.name, *arguments]
        process = subprocess.Popen(
            timed if GNU_TIME else arguments,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        peaks: list[float] = []
        watcher = threading.Thread(target=sample_peaks, args=(process, peaks), daemon=True)
        if not GNU_TIME:
            watcher.start()
        output, errors = process.communicate()
        if GNU_TIME:
            kilobytes = Path(rss.name).read_text().strip().splitlines()
            peaks.append(int(kilobytes[-1]) * 1024 / 1e6 if kilobytes else 0.0)
        else:
            watcher.join()
    program_peaks.append(max(peaks, default=0.0))
    if process.returncode != 0:
        tail = (errors or output).strip().splitlines()[-TAIL_LINES:]
        raise RuntimeError(f"{Path(arguments[0]).name} failed: {' | '.join(tail)}")


def sample_peaks(process: subprocess.Popen, peaks: list[float]) -> None:
    """Where GNU time is missing: the program's VmHWM read every few milliseconds."""
    while process.poll() is None:
        peak = high_water_mb(process.pid)
        if peak is not None:
            peaks.append(peak)
        time.sleep(WATCH_SECONDS)


@contextmanager
def descendants_watched() -> Iterator[None]:
    """Note the peak of every process started from this one while inside (and of theirs): a
    LocalCluster's workers, for a TREE step.

    Each one's VmHWM, read every TREE_WATCH_SECONDS while it lives: a high-water mark, so only
    growth in a process's last moments could be missed, and a cluster's workers sit idle from
    their last task until the cluster closes. Not the `ru_maxrss` of the reaped children: it is
    the largest one's (not their sum), and carries this process's peak across fork and exec.
    """
    peaks: dict[int, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_descendants, args=(peaks, stop), daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        program_peaks.extend(peaks.values())


def watch_descendants(peaks: dict[int, float], stop: threading.Event) -> None:
    import psutil  # distributed's own dependency, there wherever a cluster can start

    this = psutil.Process()
    while not stop.wait(TREE_WATCH_SECONDS):
        for process in this.children(recursive=True):
            peak = high_water_mb(process.pid)
            if peak is not None:
                peaks[process.pid] = peak


def pss_mb(pid: int) -> float | None:
    """A process's proportional set size in MB, or None when it is gone (or /proc lacks it)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def watch_pss(include_self: bool, peak: list[float], stop: threading.Event) -> None:
    """Keep in `peak[0]` the highest Pss sum of this process (if `include_self`) and all its
    descendants alive at one moment."""
    import psutil  # distributed's own dependency

    this = psutil.Process()
    while True:
        try:
            pids = [process.pid for process in this.children(recursive=True)]
        except psutil.Error:
            pids = []
        if include_self:
            pids.append(this.pid)
        sizes = [size for size in map(pss_mb, pids) if size is not None]
        if sizes:
            peak[0] = max(peak[0], sum(sizes))
        if stop.wait(PSS_WATCH_SECONDS):
            return


@contextmanager
def pss_watched(include_self: bool) -> Iterator[list[float]]:
    """The peak Pss sum of the step's processes while inside, in the list yielded (0 if none
    could be read)."""
    peak = [0.0]
    stop = threading.Event()
    watcher = threading.Thread(target=watch_pss, args=(include_self, peak, stop), daemon=True)
    watcher.start()
    try:
        yield peak
    finally:
        stop.set()
        watcher.join()


def peak_rss_mb(peak_of: str) -> float:
    if peak_of == PROGRAMS:
        return max(program_peaks, default=0.0)
    own = high_water_mb()
    if own is None:  # no /proc: getrusage, which may count a parent's memory too
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    return own + sum(program_peaks) if peak_of == TREE else own


def main(step: str, job_file: str, result_file: str) -> None:
    module, function = step.split(":")
    prepare = getattr(importlib.import_module(module), function)
    work = prepare(json.loads(Path(job_file).read_text()))
    with pss_watched(include_self=work.peak_of != PROGRAMS) as pss:
        started = time.perf_counter()
        try:
            figure = work.run()
            seconds = time.perf_counter() - started if figure is None else figure
        finally:
            work.finish()
    result = {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(work.peak_of),
        "peak_pss_mb": pss[0] or None,
    }
    Path(result_file).write_text(json.dumps(result))


if __name__ == "__main__":
    # Through the imported module, not this `__main__` copy of it: the steps record their
    # programs' peaks in `loader.bench.measure.program_peaks`.
    from loader.bench.measure import main as measure_main

    measure_main(*sys.argv[1:])

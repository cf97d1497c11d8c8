"""The bench's rounds: every step once per round, each on a fresh database of its own, the
round's databases and files dropped before the next round begins.

The rows come from the project's generator (`loader.sample.write_sample`, seed 7): N
hired_employees lines with its 2% of broken ones, and the departments and jobs they refer to.
The API sends the first lines of the same file, up to 20 requests of 1000 rows; the loader
loads those same lines from a file of their own (`loader_same_rows`). `watch_latency` uploads
the first 1000 lines as an export of their own.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loader.bench import arrival
from loader.bench.api import CLIENTS
from loader.bench.measure import Measurement, measure
from loader.bench.paths import core_rows, prepare_restore_target
from loader.bench.references import clean_copy, prepare_pgloader, prepare_reference
from loader.bench.report import LOADER_WORKERS, NAMES, WORKERS, Result, summarise, with_ratios
from loader.bench.scratch import Scratch, refuse_beside_data
from loader.db.connect import database_url
from loader.sample import write_sample
from loader.settings import MAX_BATCH_SIZE, Policy, Settings

SEED = 7
MAX_REQUESTS = 20
PARENTS = ("departments.csv", "jobs.csv")
HIRED = "hired_employees.csv"
ARRIVAL = "hired_employees_arrival.csv"


@dataclass(frozen=True)
class Plan:
    rows: int
    batch_size: int = MAX_BATCH_SIZE
    repeat: int = 3

    @property
    def rows_per_request(self) -> int:
        return min(MAX_BATCH_SIZE, self.rows)

    @property
    def requests(self) -> int:
        return max(1, min(MAX_REQUESTS, self.rows // MAX_BATCH_SIZE))

    @property
    def api_rows(self) -> int:
        return self.requests * self.rows_per_request

    def title(self) -> str:
        return (
            f"python -m loader bench: {self.rows:,} rows, batch size {self.batch_size}, "
            f"median of {self.repeat}; api: {self.requests} requests of "
            f"{self.rows_per_request} rows from {CLIENTS} clients"
        )


@dataclass(frozen=True)
class Inputs:
    """The files every round reads: the sample, its COPY-able copy, the parents alone, the
    API's lines as a file of their own, and the export that arrives in a watched bucket."""

    sample: Path
    clean_file: Path
    parents: Path
    same_rows: Path
    arrival: Path


def write_inputs(folder: Path, plan: Plan) -> Inputs:
    inputs = Inputs(
        folder / "sample",
        folder / "clean.csv",
        folder / "parents",
        folder / "same",
        folder / ARRIVAL,
    )
    write_sample(inputs.sample, plan.rows, SEED)
    clean_copy(inputs.sample / HIRED, inputs.clean_file)
    for target in (inputs.parents, inputs.same_rows):
        target.mkdir()
        for name in PARENTS:
            shutil.copy(inputs.sample / name, target / name)
    (inputs.parents / HIRED).write_bytes(b"")
    with (inputs.sample / HIRED).open("rb") as lines:
        first = [line for _, line in zip(range(plan.api_rows), lines, strict=False)]
    (inputs.same_rows / HIRED).write_bytes(b"".join(first))
    inputs.arrival.write_bytes(b"".join(first[:MAX_BATCH_SIZE]))
    return inputs


class Bench:
    """One bench: its scratch databases, its inputs, and each step's measurements so far."""

    def __init__(
        self, scratch: Scratch, inputs: Inputs, plan: Plan, folder: Path, say: Callable[[str], None]
    ):
        self.scratch = scratch
        self.inputs = inputs
        self.plan = plan
        self.folder = folder
        self.say = say
        self.measurements: dict[str, list[Measurement]] = defaultdict(list)
        self.rows = {name: plan.rows for name in NAMES}
        for name in ("api", "loader_same_rows"):
            self.rows[name] = plan.api_rows
        self.rows["api_latency_p95"] = plan.rows_per_request
        self.rows["watch_latency"] = min(plan.rows, MAX_BATCH_SIZE)
        self.rows["cli_help"] = 0
        self.round = 0
        self.pgloader = shutil.which("pgloader")

    def step(self, name: str, step: str, **job) -> None:
        measurement = measure(step, job)
        self.measurements[name].append(measurement)
        self.say(
            f"round {self.round}/{self.plan.repeat}: {name} {measurement.seconds:.2f} s, "
            f"peak {measurement.peak_rss_mb:,.0f} MB"
        )

    def run_round(self) -> None:
        self.round += 1
        folder = self.folder / f"round{self.round}"
        folder.mkdir()
        try:
            self.references(folder)
            self.load_and_copy(folder)
            self.on_workers(folder)
            self.api(folder)
            self.watch(folder)
            self.step("cli_help", "loader.bench.wall:loader_command", arguments=["--help"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def references(self, folder: Path) -> None:
        url = self.scratch.create(f"reference_{self.round}")
        prepare_reference(url, self.inputs.sample)
        self.step(
            "reference",
            "loader.bench.references:reference",
            url=url,
            clean_file=str(self.inputs.clean_file),
            work_dir=str(folder),
        )
        self.scratch.drop(url)
        if self.pgloader:
            url = self.scratch.create(f"pgloader_{self.round}")
            prepare_pgloader(url)
            self.step(
                "pgloader",
                "loader.bench.references:pgloader",
                url=url,
                clean_file=str(self.inputs.clean_file),
                work_dir=str(folder),
                batch_size=self.plan.batch_size,
            )
            self.scratch.drop(url)

    def load_files(
        self,
        name: str,
        folder: Path,
        input_dir: Path,
        workers: int | None = None,
        policy: Policy = Policy.REJECT_BATCH,
    ) -> str:
        """A fresh database loaded from `input_dir` by a file run without dbt, in the step's
        process or on a LocalCluster of `workers` processes; its URL."""
        url = self.scratch.create(f"{name}_{self.round}")
        self.step(
            name,
            "loader.bench.paths:load_files",
            url=url,
            state_dir=str(folder / f"state-{name}"),
            input_dir=str(input_dir),
            batch_size=self.plan.batch_size,
            workers=workers,
            policy=policy,
        )
        return url

    def load_as_a_user(self, folder: Path) -> None:
        """loader_wall: `python -m loader run --skip-marts` as a process, into a fresh database;
        loader_rerun_wall: the same command again (every file known to the file ledger)."""
        url = self.scratch.create(f"loader_wall_{self.round}")
        for name in ("loader_wall", "loader_rerun_wall"):
            self.step(
                name,
                "loader.bench.wall:loader_command",
                url=url,
                state_dir=str(folder / "state-loader-wall"),
                arguments=[
                    "run",
                    "--input",
                    str(self.inputs.sample),
                    "--batch-size",
                    str(self.plan.batch_size),
                    "--skip-marts",
                ],
            )
        self.scratch.drop(url)

    def load_and_copy(self, folder: Path) -> None:
        """loader, loader_quarantine (the other policy) and the loader as a user starts it;
        then on loader's database: loader_rerun (the same input again), dbt, backup and
        pg_dump, restore and pg_restore."""
        self.scratch.drop(
            self.load_files(
                "loader_quarantine", folder, self.inputs.sample, policy=Policy.QUARANTINE_ROWS
            )
        )
        self.load_as_a_user(folder)
        url = self.load_files("loader", folder, self.inputs.sample)
        self.step(
            "loader_rerun",
            "loader.bench.paths:load_files",
            url=url,
            state_dir=str(folder / "state-loader"),
            input_dir=str(self.inputs.sample),
            batch_size=self.plan.batch_size,
        )
        rows = core_rows(url)
        for name in ("dbt", "backup", "pg_dump", "restore", "pg_restore"):
            self.rows[name] = rows
        self.step("dbt", "loader.bench.paths:build_marts", url=url, state_dir=str(folder / "dbt"))
        backups, dump = folder / "backups", folder / "hired_employees.dump"
        self.step("backup", "loader.bench.paths:backup", url=url, folder=str(backups))
        self.step("pg_dump", "loader.bench.references:pg_dump", url=url, dump_file=str(dump))
        for name, step, job in (
            ("restore", "loader.bench.paths:restore", {"folder": str(backups), "rows": rows}),
            ("pg_restore", "loader.bench.references:pg_restore", {"dump_file": str(dump)}),
        ):
            target = self.scratch.create(f"{name}_{self.round}")
            prepare_restore_target(url, target, with_table=name == "restore")
            self.step(name, step, url=target, **job)
            self.scratch.drop(target)
        self.scratch.drop(url)

    def on_workers(self, folder: Path) -> None:
        """loader_workers_N: loader's file run again, on the LocalCluster `run --workers N`
        starts (its start inside the clock, as a user waits for it)."""
        self.scratch.drop(self.load_files(LOADER_WORKERS, folder, self.inputs.sample, WORKERS))

    def with_parents(self, name: str, state: Path) -> str:
        """A fresh database holding the parents as a file run leaves them (untimed)."""
        url = self.scratch.create(f"{name}_{self.round}")
        measure(
            "loader.bench.paths:load_files",
            {
                "url": url,
                "state_dir": str(state),
                "input_dir": str(self.inputs.parents),
                "batch_size": self.plan.batch_size,
            },
        )
        return url

    def api(self, folder: Path) -> None:
        """api on a database holding the parents, loader_same_rows on a fresh one, then
        api_latency_p95: the same bodies one at a time, on a fresh database with the parents."""
        for name, one_at_a_time in (("api", False), ("api_latency_p95", True)):
            state = folder / f"state-{name}"
            url = self.with_parents(name, state)
            self.step(
                name,
                "loader.bench.api:send_batches",
                url=url,
                state_dir=str(state),
                csv_file=str(self.inputs.same_rows / HIRED),
                rows_per_request=self.plan.rows_per_request,
                one_at_a_time=one_at_a_time,
            )
            self.scratch.drop(url)
            if name == "api":
                self.scratch.drop(
                    self.load_files("loader_same_rows", folder, self.inputs.same_rows)
                )

    def watch(self, folder: Path) -> None:
        """watch_latency, on a fresh database: the watch settles the parents, then the clock
        runs from one export's upload until its rows are settled."""
        if arrival.missing():
            return
        url = self.scratch.create(f"watch_{self.round}")
        self.step(
            "watch_latency",
            "loader.bench.arrival:upload_settled",
            url=url,
            state_dir=str(folder / "state-watch"),
            work_dir=str(folder / "watch"),
            parents=[str(self.inputs.sample / name) for name in PARENTS],
            export=str(self.inputs.arrival),
        )
        self.scratch.drop(url)

    def results(self) -> list[Result]:
        notes = {} if self.pgloader else {"pgloader": "not installed (`command -v pgloader`)"}
        if arrival.missing():
            needs = " and ".join(arrival.missing())
            notes["watch_latency"] = f"needs {needs} (pip install -e '.[dev]')"
        return with_ratios(
            [
                summarise(name, self.rows[name], self.measurements[name], notes.get(name, ""))
                for name in NAMES
            ]
        )


def run_bench(settings: Settings, plan: Plan, say: Callable[[str], None]) -> list[Result]:
    """Every step `plan.repeat` times on the server in use; raises BenchRefused (before
    anything is made) when its database holds loader rows."""
    server = database_url(settings)
    refuse_beside_data(server)
    folder = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    try:
        say(f"writing {plan.rows:,} rows with the sample generator (seed {SEED})")
        inputs = write_inputs(folder, plan)
        with Scratch(server) as scratch:
            say(f"working in databases {scratch.prefix}_*, dropped at the end")
            bench = Bench(scratch, inputs, plan, folder, say)
            for _ in range(plan.repeat):
                bench.run_round()
            return bench.results()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

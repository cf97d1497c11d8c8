"""One typed settings object, read from the environment (and an optional `.env` file).

Nothing else in the project reads `os.environ`: every knob a user can turn is a field here,
listed with its variable in `.env.example`.
"""

from __future__ import annotations

import codecs
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DATA_DIR = Path(__file__).parent / "sample_data"
EXPECTATIONS_DIR = PROJECT_DIR / "expectations"
MAX_BATCH_SIZE = 1000  # rows in a batch, from a file or an API request: 1 to this


class Policy(StrEnum):
    """What a failing row holds back: its whole batch, or only itself."""

    REJECT_BATCH = "reject_batch"
    QUARANTINE_ROWS = "quarantine_rows"


class LogFormat(StrEnum):
    """How the CLI and the server write their messages: for people, or one JSON object a line."""

    HUMAN = "human"
    JSON = "json"


class Settings(BaseSettings):
    """Configuration of a run, the embedded server, the API and backups."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        default=None,
        alias="DATABASE_URL",
        description="PostgreSQL to use; absent: the embedded server under the state folder.",
    )
    state_dir: Path = Field(default=Path(".loader"), alias="LOADER_STATE_DIR")
    input_dir: str = Field(
        default=str(SAMPLE_DATA_DIR),
        alias="LOADER_INPUT_DIR",
        description="A local folder or any URL fsspec opens (s3://bucket/prefix/, gs://, az://).",
    )
    docs_keep: int = Field(
        default=100,
        ge=1,
        alias="LOADER_DOCS_KEEP",
        description="Runs whose GX validations, data docs pages, log folders and dlt load "
        "packages the state folder keeps; the ledger in audit.* keeps every run.",
    )
    encoding: str = Field(
        default="utf-8",
        alias="LOADER_ENCODING",
        description="The exports' text encoding (e.g. cp1252, latin-1 for older systems).",
    )
    batch_size: int = Field(
        default=MAX_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE, alias="LOADER_BATCH_SIZE"
    )
    policy: Policy = Field(default=Policy.REJECT_BATCH, alias="LOADER_POLICY")
    chunk_rows: int = Field(
        default=75_000,
        ge=1,
        alias="LOADER_CHUNK_ROWS",
        description="Rows validated in one GX pass (whole batches): each pass costs 0.15-0.48 "
        "s whatever its size and its rows 1-3 µs each on the two machines of "
        "docs/BENCHMARKS.md (2026-12-07), its frames about 0.6 KB a row in the gate process; on "
        "1M rows the run's and its gate's Pss peaked at 495-502 MB with 50,000 or 75,000 and "
        "at 500-524 MB with 100,000, which took 2-3 s less than 50,000.",
    )
    land_rows: int = Field(
        default=100_000,
        ge=1,
        alias="LOADER_LAND_ROWS",
        description="Judged rows landed in raw by one dlt run (whole chunks): each run costs "
        "about 0.3 s whatever its size, Arrow rows waiting to land about 100 bytes each.",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        alias="LOADER_WORKERS",
        description="Run on a Dask LocalCluster of this many single-threaded worker processes.",
    )
    scheduler: str | None = Field(
        default=None,
        alias="LOADER_SCHEDULER",
        description="Run on the Dask cluster of this scheduler (tcp://HOST:8786); its workers "
        "must read the input and state folders at the same paths.",
    )
    scheduler_timeout_seconds: float = Field(
        default=30,
        gt=0,
        alias="LOADER_SCHEDULER_TIMEOUT_SECONDS",
        description="How long a run tries to reach its Dask scheduler before it exits 9.",
    )
    settle_connections: int = Field(
        default=2,
        ge=1,
        alias="LOADER_SETTLE_CONNECTIONS",
        description="Connections a run settles each land of batches on at once (batches "
        "that may share an id stay on one, in file order).",
    )
    task_rows: int = Field(
        default=200_000,
        ge=1,
        alias="LOADER_TASK_ROWS",
        description="Data rows per Dask task (rounded down to whole batches, one at least).",
    )
    build_marts: bool = Field(
        default=True,
        alias="LOADER_BUILD_MARTS",
        description="End each run with an in-process `dbt build` of the marts.",
    )
    embedded_port: int | None = Field(
        default=None,
        alias="LOADER_EMBEDDED_PORT",
        description="TCP port of the embedded server on 127.0.0.1; "
        "absent: the first free from 54329.",
    )
    api_tokens: str = Field(default="", alias="LOADER_API_TOKENS")
    api_request_seconds: float = Field(
        default=120,
        gt=0,
        alias="LOADER_API_REQUEST_SECONDS",
        description="The API answers 504 after this long; a batch insert goes on and keeps "
        "its Idempotency-Key.",
    )
    api_auth_failures: int = Field(
        default=10,
        ge=1,
        alias="LOADER_API_AUTH_FAILURES",
        description="Failed authentications from one client address, within the window, "
        "after which it gets 429.",
    )
    api_auth_window_seconds: float = Field(default=60, gt=0, alias="LOADER_API_AUTH_WINDOW_SECONDS")
    api_pool_min: int = Field(default=1, ge=0, alias="LOADER_API_POOL_MIN")
    api_pool_max: int = Field(
        default=10,
        ge=1,
        alias="LOADER_API_POOL_MAX",
        description="Database connections the API's own queries share (settlements open "
        "their own).",
    )
    api_pool_timeout_seconds: float = Field(
        default=5,
        gt=0,
        alias="LOADER_API_POOL_TIMEOUT_SECONDS",
        description="How long a request waits for a pooled connection before a 503.",
    )
    backup_dir: str | None = Field(
        default=None,
        alias="BACKUP_DIR",
        description="A local folder or any URL fsspec opens (s3://backups/nightly).",
    )
    log_format: LogFormat = Field(
        default=LogFormat.HUMAN,
        alias="LOADER_LOG_FORMAT",
        description="human (default) or json: one JSON object a line on stderr, for log shippers.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        alias="LOADER_METRICS_PORT",
        description="`serve` and `watch`: serve Prometheus metrics at /metrics on this port "
        "(absent: not served).",
    )
    pushgateway_url: str | None = Field(
        default=None,
        alias="LOADER_PUSHGATEWAY_URL",
        description="Runs and backups push their metrics to this Prometheus Pushgateway.",
    )
    metrics_file: Path | None = Field(
        default=None,
        alias="LOADER_METRICS_FILE",
        description="Runs and backups write their metrics to this file (node_exporter's "
        "textfile collector), replaced atomically.",
    )
    metrics_timeout_seconds: float = Field(
        default=5,
        gt=0,
        alias="LOADER_METRICS_TIMEOUT_SECONDS",
        description="How long a push to the Pushgateway may take before it is given up (one "
        "warning; the run's outcome is unchanged).",
    )
    lineage_timeout_seconds: float = Field(
        default=5,
        gt=0,
        alias="LOADER_LINEAGE_TIMEOUT_SECONDS",
        description="How long sending one OpenLineage event may take before it is given up, "
        "with the rest of its run's events (one warning; the run's outcome is unchanged).",
    )
    marts_max_age_seconds: float = Field(
        default=900,
        gt=0,
        alias="LOADER_MARTS_MAX_AGE_SECONDS",
        description="/readyz: the marts are stale when rows were promoted after their last "
        "build and that build is older than this.",
    )
    kill_at: str | None = Field(
        default=None,
        alias="LOADER_KILL_AT",
        pattern=r"^(after_verdict|after_raw_load|before_commit|after_commit)(:[1-9][0-9]*)?$",
        description="Fault tests only: SIGKILL this process at a named point (see kill_points).",
    )

    @field_validator("input_dir", "backup_dir", mode="before")
    @classmethod
    def _input_as_text(cls, value):
        return str(value) if isinstance(value, Path) else value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.api_pool_min > self.api_pool_max:
            raise ValueError("LOADER_API_POOL_MIN must not exceed LOADER_API_POOL_MAX")
        return self

    @model_validator(mode="after")
    def _one_cluster(self) -> Settings:
        if self.workers is not None and self.scheduler is not None:
            raise ValueError("LOADER_WORKERS and LOADER_SCHEDULER exclude each other")
        return self

    @property
    def state_path(self) -> Path:
        return self.state_dir.resolve()

    @property
    def logs_dir(self) -> Path:
        return self.state_path / "logs"

    @property
    def pgdata_dir(self) -> Path:
        return self.state_path / "pgdata"

    @property
    def gx_state_dir(self) -> Path:
        return self.state_path / "gx"

    @property
    def data_docs_dir(self) -> Path:
        return self.gx_state_dir / "data_docs"

    @property
    def dlt_dir(self) -> Path:
        return self.state_path / "dlt"

    @property
    def backups_at(self) -> str:
        """Where backups go: BACKUP_DIR (a folder or a URL), else the state folder's."""
        if self.backup_dir and "://" in self.backup_dir:
            return self.backup_dir
        return str(Path(self.backup_dir or self.state_path / "backups").resolve())

    @property
    def backups_staging(self) -> Path:
        """Where backups for a URL are made and fetched to, locally."""
        return self.state_path / "backup-staging"

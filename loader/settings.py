"""One typed settings object, read from the environment (and an optional `.env` file).

Nothing else in the project reads `os.environ`: every knob a user can turn is a field here,
listed with its variable in `.env.example`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DATA_DIR = Path(__file__).parent / "sample_data"
EXPECTATIONS_DIR = PROJECT_DIR / "expectations"
MAX_BATCH_SIZE = 1000

Policy = Literal["reject_batch", "quarantine_rows"]


class Settings(BaseSettings):
    """Configuration of a run, the embedded server, the API and backups."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        default=None,
        alias="DATABASE_URL",
        description="PostgreSQL to use; absent: the embedded server under the state folder.",
    )
    state_dir: Path = Field(default=Path(".loader"), alias="LOADER_STATE_DIR")
    input_dir: Path = Field(default=SAMPLE_DATA_DIR, alias="LOADER_INPUT_DIR")
    batch_size: int = Field(
        default=MAX_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE, alias="LOADER_BATCH_SIZE"
    )
    policy: Policy = Field(default="reject_batch", alias="LOADER_POLICY")
    chunk_rows: int = Field(
        default=200_000,
        ge=1,
        alias="LOADER_CHUNK_ROWS",
        description="Rows validated in one GX pass (whole batches); bounds memory.",
    )
    build_marts: bool = Field(
        default=True,
        alias="LOADER_BUILD_MARTS",
        description="End each run with an in-process `dbt build` of the marts.",
    )
    embedded_port: int | None = Field(
        default=None,
        alias="LOADER_EMBEDDED_PORT",
        description="TCP port of the embedded server on 127.0.0.1; absent: the first free from 54329.",
    )
    api_tokens: str = Field(default="", alias="LOADER_API_TOKENS")
    backup_dir: Path | None = Field(default=None, alias="BACKUP_DIR")

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
    def backup_path(self) -> Path:
        return (self.backup_dir or self.state_path / "backups").resolve()

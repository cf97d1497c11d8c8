"""The embedded PostgreSQL server: a real PostgreSQL from the `pgserver` wheel, kept under the
state folder so that a fresh machine needs nothing but `pip install`.

pgserver's own `get_server()` listens on a unix socket only, which dlt's credentials refuse and
BI tools cannot reach; so we reuse its binaries and its root-user handling but start the server
ourselves on 127.0.0.1 with a TCP port recorded in the state folder. The server outlives the
process that started it (dbt, the API and BI tools use it) until `python -m loader db stop`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import stat
import subprocess
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # pgserver's lock-file lookup

# pgserver looks its lock file up when imported: the filter above must come first.
import pgserver  # noqa: E402
from pgserver import utils as pgserver_utils  # noqa: E402
from pgserver._commands import POSTGRES_BIN_PATH  # noqa: E402

logging.getLogger("pgserver").setLevel(logging.CRITICAL)  # it logs every command it runs

DATABASE_NAME = "loader"
FIRST_PORT = 54329
SYSTEM_USER = "pgserver"  # PostgreSQL refuses to run as root; pgserver creates this user


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started or stopped."""


class EmbeddedServer:
    """A PostgreSQL cluster in `pgdata`, listening on 127.0.0.1:<port>."""

    def __init__(self, pgdata: Path, port: int | None = None):
        self.pgdata = pgdata
        self._requested_port = port
        self._state_file = pgdata.parent / "embedded.json"

    @property
    def port(self) -> int:
        if self._state_file.exists():
            return int(json.loads(self._state_file.read_text())["port"])
        return self._requested_port or _free_port(FIRST_PORT)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE_NAME}"

    def is_running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        try:
            self._pg_ctl(["status"])
        except subprocess.CalledProcessError:
            return False
        return True

    def start(self) -> str:
        """Initialise the cluster if needed, start it unless it runs, and return its URL."""
        if self.is_running():
            return self.url
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if fresh:
            self._initialise()
        log = self.pgdata / "server.log"
        try:
            self._pg_ctl(["-w", "-t", "60", "-l", str(log), "start"])
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise EmbeddedServerError(
                f"the embedded PostgreSQL in {self.pgdata} did not start: {' | '.join(tail)}"
            ) from error
        if fresh:
            subprocess.run(
                [
                    str(POSTGRES_BIN_PATH / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    DATABASE_NAME,
                ],
                check=True,
                capture_output=True,
            )
        return self.url

    def stop(self) -> bool:
        """Stop the server; return False when it was not running."""
        if not self.is_running():
            return False
        self._pg_ctl(["-w", "-m", "fast", "stop"])
        return True

    def _initialise(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        port = self._requested_port or _free_port(FIRST_PORT)
        self._grant_system_user()
        pgserver.initdb(
            ["--auth=trust", "--encoding=utf8", "--locale=C.UTF-8", "-U", "postgres"],
            pgdata=self.pgdata,
            user=self._system_user(),
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
                "timezone = 'UTC'\n"
            )
        self._state_file.write_text(json.dumps({"port": port}))

    def _pg_ctl(self, args: list[str]) -> str:
        return pgserver.pg_ctl(args, pgdata=self.pgdata, user=self._system_user(), timeout=90)

    def _system_user(self) -> str | None:
        return SYSTEM_USER if _running_as_root() else None

    def _grant_system_user(self) -> None:
        if not _running_as_root():
            return
        entry = pgserver_utils.ensure_user_exists(SYSTEM_USER)
        pgserver_utils.ensure_prefix_permissions(self.pgdata)
        readable = stat.S_IRGRP | stat.S_IROTH
        runnable = stat.S_IXGRP | stat.S_IXOTH
        pgserver_utils.ensure_folder_permissions(POSTGRES_BIN_PATH, runnable | readable)
        pgserver_utils.ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)


def _running_as_root() -> bool:
    return platform.system() != "Windows" and os.geteuid() == 0


def _free_port(start: int) -> int:
    """The first port PostgreSQL can listen on: bound as it binds (SO_REUSEADDR), so that a
    port held by an outgoing connection's local end, which nothing answers on, is not taken
    for free (PostgreSQL then failed with "could not create any TCP/IP sockets")."""
    for port in range(start, start + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise EmbeddedServerError(f"no free TCP port on 127.0.0.1 between {start} and {start + 199}")

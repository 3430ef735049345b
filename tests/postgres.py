"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary folder from the Debian
`postgresql` binaries (scripts/setup.sh installs them without creating or starting any cluster),
a server on a free loopback port, torn down afterwards. The suite never uses a server that was
running before it (scripts/test.sh runs it where none is reachable).

PostgreSQL refuses to run as root: under root the cluster belongs to the `postgres` system user
(`runuser`), as Debian's own clusters do.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.peers import free_port

BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
SERVICE_USER = "postgres"


def find_bindir() -> Path:
    """The newest PostgreSQL server's bin folder (initdb, pg_ctl)."""
    if not BINARIES:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql: run "
            "scripts/setup.sh (it installs Debian's postgresql without starting a cluster)"
        )
    return BINARIES[-1]


class PostgresCluster:
    """`with PostgresCluster() as pg: pg.url("dbname")`: trust authentication on 127.0.0.1."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0
        self.user = SERVICE_USER if self.as_root else getpass.getuser()

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of `database` as the superuser."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> Self:
        if self.as_root:
            shutil.chown(self.root, user=self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start (or start again) the server on its port."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = self.root / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start")

    def stop_server(self) -> None:
        """Stop the server at once (connections cut), keeping its data for `start_server`."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

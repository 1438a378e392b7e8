"""A throwaway PostgreSQL server for tests and benchmarks: Debian's ``postgresql`` binaries (``.ci/run``
installs them), a free loopback port, data and socket in a temporary directory, trust auth, fsync off.

``postgres_server()`` starts one and stops it on exit; ``PostgresServer.create_database()`` gives each
user a fresh database. Used by ``test_postgres_instance.py`` and ``bench/universe.py``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_USER = "atlas"


def pg_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: PATH first, then Debian's versioned directories."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


def unavailable_reason() -> str | None:
    """Why no server can be started here (None: it can)."""
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        return "dagster_postgres is not installed (pip install -e '.[postgres]' or '.[test]')"
    if pg_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs Debian's postgresql"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    run_as: str | None  # the unprivileged user the server runs as when the tests run as root
    _databases = itertools.count()

    def command(self, *args: str) -> list[str]:
        argv = [str(self.bin_dir / args[0]), *args[1:]]
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv

    def run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr or done.stdout}\n{tail}")

    def url(self, db: str) -> str:
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        import sqlalchemy as sa

        name = f"atlas_test_{next(self._databases)}"
        engine = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return name


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1:<free port>, stopped and removed on exit."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    run_as = None
    root = Path(tempfile.mkdtemp(prefix="atlas-pg-"))  # short: the socket path must fit 107 bytes
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and no 'postgres' system user to run PostgreSQL as") from None
        run_as = account.pw_name
        os.chown(root, account.pw_uid, account.pw_gid)
    server = PostgresServer(pg_bin_dir(), root, _free_port(), run_as)  # type: ignore[arg-type]
    data = root / "data"
    options = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = False
    try:
        server.run("initdb", "-D", str(data), "-U", PG_USER, "--auth=trust", "--no-sync", "-E", "UTF8")
        server.run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "-t", "30", "start")
        started = True
        yield server
    finally:
        if started or (data / "postmaster.pid").exists():
            server.run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)

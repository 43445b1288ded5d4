"""A real PostgreSQL server for tests and benchmarks, started in a temporary folder on a free loopback port.

Uses Debian's server binaries (apt ``postgresql``: ``/usr/lib/postgresql/<version>/bin``), the way
:mod:`tests.support.broker` starts Mosquitto. The server refuses to run as root, so when the tests run as root it is
initialised and started as the ``postgres`` user the package creates (else ``nobody``), in a folder of the
system temporary directory that user owns (pytest's own temporary folders are private to root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.broker import free_port


def server_bin_dir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``/``postgres`` (newest installed version), or None if not installed."""
    found = shutil.which("initdb")
    if found and Path(found).with_name("postgres").exists():
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def postgres_available() -> bool:
    """Whether the PostgreSQL server binaries are installed (apt-get install -y postgresql)."""
    return server_bin_dir() is not None


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as (None: run as ourselves, when we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


class PgServer:
    """One PostgreSQL cluster (``initdb``) and its server, reachable at ``127.0.0.1:port`` with trust auth.

    Args:
        durable: Keep PostgreSQL's crash safety (``fsync``, ``synchronous_commit``), as a real server has; for
            ingest benchmarks. Tests turn it off: faster, and a test cluster need not survive a power cut.
    """

    user = "postgres"

    def __init__(self, durable: bool = False) -> None:
        bindir = server_bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bindir = bindir
        self.durable = durable
        self.host = "127.0.0.1"
        self.port = free_port()
        self._account = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "server.log"
        self.sock.mkdir()
        if self._account is not None:
            for p in (self.root, self.sock):
                os.chown(p, self._account.pw_uid, self._account.pw_gid)
        self._started = False

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {}
        if self._account is not None:
            kwargs = {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root, **kwargs)

    def start(self) -> PgServer:
        """initdb (first time) and start the server; return once it accepts connections."""
        if not self.data.exists():
            r = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                          "-E", "UTF8", "--locale=C", "--no-sync")
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed: {r.stderr.strip()[-2000:]}")
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses={self.host}"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        r = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                      "-o", opts, "start")
        if r.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {log[-2000:]}")
        self._started = True
        return self

    def url(self, dbname: str = "postgres") -> str:
        """The connection URL of one database of this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pid(self) -> int:
        """The postmaster's process id (its CPU time covers only the postmaster; backends are children)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        if self._started:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            self._started = False
        # The files belong to the server's user; root may delete them anyway.
        shutil.rmtree(self.root, ignore_errors=True)


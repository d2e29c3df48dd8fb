"""A throwaway PostgreSQL cluster for benchmarks and tests.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback
port with a private socket directory, and, on ``stop()``, ``pg_ctl stop -m
fast`` and remove the directory. Durability is switched off (``fsync=off``):
the data is thrown away anyway. Autovacuum is off, so that query plans do not
change under a running test. PostgreSQL refuses to run as root, so when
this process is root the server runs as the ``postgres`` OS user (through
``runuser``) and the directory is handed to that user.

Standard library only, so that both ``bench/`` and ``tests/`` can use it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SEARCH_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl) cannot be found."""


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's layout."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    candidates = sorted(glob.glob(SEARCH_GLOB), key=_version_key, reverse=True)
    for candidate in candidates:
        d = Path(candidate)
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def _version_key(path: str) -> tuple[int, str]:
    version = Path(path).parent.name
    return (int(version), version) if version.isdigit() else (-1, version)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway cluster; ``url`` points at its ``postgres`` database."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None
    host: str = "127.0.0.1"
    user: str = "postgres"
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                _run(self, [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                            "-m", "fast", "-w", "-t", "30"], check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _run(cluster: Cluster, argv: list[str], *, check: bool = True) -> str:
    if cluster.run_as is not None:
        argv = ["runuser", "-u", cluster.run_as, "--", *argv]
    proc = subprocess.run(argv, cwd=cluster.root, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S, check=False)
    if check and proc.returncode != 0:
        log = cluster.log_file.read_text(errors="replace") if cluster.log_file.exists() else ""
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}\n{log[-4000:]}")
    return proc.stdout


def start(*, attempts: int = 3) -> Cluster:
    """Create and start a cluster; raise ``PostgresUnavailable`` without the binaries."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) are not on PATH nor under "
            f"{SEARCH_GLOB}; install the postgresql package")
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        try:
            owner = pwd.getpwnam(run_as)
        except KeyError as exc:
            raise PostgresUnavailable("running as root but there is no `postgres` OS user "
                                      "to run the server as") from exc
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root but `runuser` is missing")
    root = Path(tempfile.mkdtemp(prefix="pg-throwaway-"))
    cluster = Cluster(bin_dir=bin_dir, root=root, port=0, run_as=run_as)
    try:
        cluster.socket_dir.mkdir()
        if run_as is not None:
            for path in (root, cluster.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        _run(cluster, [str(bin_dir / "initdb"), "-D", str(cluster.data_dir), "-A", "trust",
                       "-U", cluster.user, "-E", "UTF8", "--locale=C", "--no-sync"])
        last_error: Exception | None = None
        for _ in range(attempts):  # the free port can be taken between probe and bind
            cluster.port = free_port(cluster.host)
            # autovacuum off: statistics (hence query plans) change only when a test or
            # benchmark runs ANALYZE itself, never at a random moment.
            options = (f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       f"-c autovacuum=off -c listen_addresses={cluster.host} "
                       f"-p {cluster.port} -k {cluster.socket_dir}")
            try:
                _run(cluster, [str(bin_dir / "pg_ctl"), "start", "-D", str(cluster.data_dir),
                               "-l", str(cluster.log_file), "-w", "-t", str(START_TIMEOUT_S),
                               "-o", options])
                return cluster
            except RuntimeError as exc:
                last_error = exc
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")
    except BaseException:
        cluster.stop()
        raise


@contextmanager
def running() -> Iterator[Cluster]:
    cluster = start()
    try:
        yield cluster
    finally:
        cluster.stop()

"""Controllers started together on an empty database, with no ``HOSTNAME``: the
migrations run once (under the migration lock), every process gets an identity of
its own, and exactly one leads at a time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from db.models import LeaderLeaseRow

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def leader_gauge(port: int) -> float | None:
    try:
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body = r.read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith("gsc_controller_leader "):
            return float(line.split()[1])
    return None


@pytest.mark.parametrize("empty_database", ["sqlite", "postgresql"], indirect=True)
def test_controllers_started_together_migrate_once_and_elect_one_leader(
        empty_database: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HOSTNAME"}
    env.update({"DATABASE_URL": empty_database, "GSC_BACKFILL_HOURS": "0",
                "GSC_CLUSTER": "embedded", "PYTHONPATH": str(ROOT)})
    ports = [free_port() for _ in range(3)]
    logs = [open(tmp_path / f"controller-{i}.log", "w+b") for i in range(3)]  # noqa: SIM115
    procs = [subprocess.Popen(
        [sys.executable, "-m", "app.controller", "--interval", "0.5", "--lease-ttl", "3",
         "--metrics-port", str(port)], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT) for port, log in zip(ports, logs, strict=True)]
    try:
        deadline = time.monotonic() + 90
        gauges: list[float | None] = [None, None, None]
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a controller exited"
            gauges = [leader_gauge(port) for port in ports]
            if all(g is not None for g in gauges) and sum(gauges) == 1:  # type: ignore[arg-type]
                break
            time.sleep(0.5)
        assert sum(g or 0 for g in gauges) == 1, f"leader gauges {gauges}"
        # Stays one: sample the gauges a few more times.
        for _ in range(6):
            time.sleep(0.5)
            assert sum(leader_gauge(port) or 0 for port in ports) <= 1
        engine = create_engine(empty_database, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
                holders = conn.execute(select(func.count()).select_from(LeaderLeaseRow)).scalar()
                holder = conn.execute(select(LeaderLeaseRow.holder)).scalar()
        finally:
            engine.dispose()
        assert len(versions) == 1 and holders == 1
        assert holder is not None and holder.startswith("controller@")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read().decode(errors="replace"))
            log.close()
    assert all("Traceback" not in out for out in outputs), outputs

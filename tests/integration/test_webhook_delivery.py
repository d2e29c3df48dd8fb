"""Webhook delivery against a real HTTP server on loopback, through the controller loop.

The receiver (``http.server`` in a thread on 127.0.0.1) answers from a script:
a status code, or ``DROP`` (the connection is closed without a reply); before
it starts, its port refuses connections. The controller is the real one
(``app.bootstrap.build_controller`` over a SQLite file and the twin) with a
manual clock, so backoff is exercised by moving the clock, never by sleeping.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from app.bootstrap import build_controller
from core.clock import ManualClock
from core.controller import ControllerLoop
from core.controller.notify import NotifyStep
from core.notify import verify
from core.notify_settings import NotifySettings
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from db import outbox
from db.engine import make_engine, session_factory, upgrade
from db.models import NotificationRow

SECRET = "integration-signing-secret-0123"
TOKEN = "T0AAA/B0BBB/tok3nInThePathXYZ"  # what a Slack webhook URL hides in its path
T0 = 1_800_000_000.0
DROP = -1


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case: HTTP header names ignore case
    body: bytes
    answered: int  # the status sent back, or DROP

    def header(self, name: str) -> str:
        return self.headers[name.lower()]


class Receiver:
    """A webhook endpoint on a loopback port; ``start`` it later to refuse connections
    until then."""

    def __init__(self, script: list[int], *, then: int = 200) -> None:
        self.script = list(script)
        self.then = then
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        with socket.socket() as probe:  # a free port, closed again: refused until start()
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/{TOKEN}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.then
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append(Received(self.path, headers, data, status))
                if status == DROP:
                    self.close_connection = True
                    return
                # An unhelpful server that echoes the path (and so the token) in its error.
                reply = b"ok" if status < 300 else f"no route to {self.path}".encode()
                self.send_response(status)
                if 300 <= status < 400:  # a redirect elsewhere: must not be followed
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def delivered(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.answered < 300]


@dataclass
class Rig:
    loop: ControllerLoop
    clock: ManualClock
    factory: object
    step: NotifyStep

    def at(self, t: float) -> None:
        """Move the clock to ``T0 + t`` and run one controller iteration."""
        self.clock.advance(T0 + t - self.clock.now())
        self.loop.step()

    def rows(self) -> list[NotificationRow]:
        with self.factory() as s:  # type: ignore[operator]
            return list(s.scalars(select(NotificationRow).order_by(NotificationRow.id)))


@pytest.fixture()
def receiver_factory() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


def rig(tmp_path: Path, settings: Settings, receiver: Receiver, **notify: object) -> Rig:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    factory = session_factory(engine)
    cfg = NotifySettings(webhook_url=receiver.url, secret=SECRET, timeout_s=2,
                         console_url="http://console.test:8501", interval_s=1,
                         **notify)  # type: ignore[arg-type]
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(startup_delay_s=0))
    loop = build_controller(factory=factory, cluster=twin, clock=clock,
                            settings=dataclasses.replace(settings, notify=cfg),
                            identity="ctrl")
    step = loop.steps[-1]
    assert isinstance(step, NotifyStep) and step.leader_only
    return Rig(loop=loop, clock=clock, factory=factory, step=step)


def queue_failure(r: Rig, plan: int) -> None:
    with r.factory.begin() as s:  # type: ignore[attr-defined]
        outbox.notify_rollout_failed(s, plan_id=plan, reason=f"plan {plan}: validation failed",
                                     now=datetime.fromtimestamp(r.clock.now(), UTC))


def no_secret_in(text: str) -> bool:
    return SECRET not in text and "tok3nInThePath" not in text


def test_a_refusing_then_failing_endpoint_gets_the_message_once_when_it_recovers(
        tmp_path: Path, settings: Settings, receiver_factory: list[Receiver],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver([503, DROP])
    receiver_factory.append(receiver)
    r = rig(tmp_path, settings, receiver, backoff_s=[5, 15, 60], max_attempts=6)
    queue_failure(r, 7)

    r.at(0)  # attempt 1: nothing listens yet → refused; due again at +5
    [row] = r.rows()
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.last_error is not None and "unreachable" in row.last_error
    assert f"http://127.0.0.1:{receiver.port}" in row.last_error and no_secret_in(row.last_error)

    receiver.start()
    r.at(4)  # backing off: not due yet
    assert receiver.requests == []
    r.at(5)  # attempt 2: 503; due again at +20
    r.at(19)
    assert [q.answered for q in receiver.requests] == [503]
    r.at(20)  # attempt 3: the connection is dropped; due again at +80
    r.at(79)
    assert [q.answered for q in receiver.requests] == [503, DROP]
    r.at(80)  # attempt 4: delivered
    for t in (81, 500, 5000):
        r.at(t)  # nothing more is sent
    assert [q.answered for q in receiver.requests] == [503, DROP, 200]
    [row] = r.rows()
    assert (row.state, row.attempts, row.last_error) == ("sent", 4, None)
    assert row.sent_at == datetime.fromtimestamp(T0 + 80, UTC)

    [got] = receiver.delivered()
    assert got.path == f"/services/{TOKEN}"
    assert got.header("Content-Type").startswith("application/json")
    assert got.header("X-GSC-Timestamp") == str(int(T0 + 80))
    assert got.header("X-GSC-Event") == "rollout-failed"
    assert verify(got.body, secret=SECRET, timestamp=got.header("X-GSC-Timestamp"),
                  signature=got.header("X-GSC-Signature"))
    assert not verify(got.body, secret="another-secret-of-16+", timestamp=int(T0 + 80),
                      signature=got.header("X-GSC-Signature"))
    # Every attempt carried the same delivery id, so a receiver can deduplicate.
    assert {q.header("X-GSC-Delivery") for q in receiver.requests} == {str(row.id)}
    text = got.body.decode()
    assert "Rollout 7 failed" in text and "http://console.test:8501/rollouts" in text
    assert no_secret_in(text)
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "webhook delivery" in logged and no_secret_in(logged)


def test_messages_queued_while_the_endpoint_is_down_all_arrive_once(
        tmp_path: Path, settings: Settings, receiver_factory: list[Receiver]) -> None:
    receiver = Receiver([500, 500, 500, 502])
    receiver_factory.append(receiver)
    receiver.start()
    r = rig(tmp_path, settings, receiver, backoff_s=[5, 10], max_attempts=8)
    for plan in range(1, 6):
        queue_failure(r, plan)
    t = 0.0
    while any(row.state == "pending" for row in r.rows()):
        r.at(t)
        t += 1
        assert t < 400, "the outbox did not drain"
    assert all(row.state == "sent" for row in r.rows())
    delivered = receiver.delivered()
    assert sorted(q.header("X-GSC-Delivery") for q in delivered) == \
        sorted(str(row.id) for row in r.rows())
    assert len(receiver.requests) == 5 + 4  # one success each, plus the four failures
    for q in delivered:
        assert verify(q.body, secret=SECRET, timestamp=q.header("X-GSC-Timestamp"),
                      signature=q.header("X-GSC-Signature"))


def test_an_endpoint_that_never_recovers_leaves_the_message_dead_with_a_redacted_error(
        tmp_path: Path, settings: Settings, receiver_factory: list[Receiver],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver([], then=500)
    receiver_factory.append(receiver)
    receiver.start()
    r = rig(tmp_path, settings, receiver, backoff_s=[5, 15], max_attempts=3)
    queue_failure(r, 9)
    for t in (0, 5, 20, 35, 1000, 10_000):
        r.at(t)
    assert [q.answered for q in receiver.requests] == [500, 500, 500]
    [row] = r.rows()
    assert (row.state, row.attempts) == ("dead", 3)
    assert row.last_error is not None
    assert row.last_error.startswith(f"http://127.0.0.1:{receiver.port} answered HTTP 500")
    assert row.last_error.endswith("no route to ***")  # the echoed path is masked
    assert no_secret_in(row.last_error)
    with r.factory() as s:  # type: ignore[operator]
        [entry] = outbox.list_outbox(s, limit=5)
    assert (entry.state, entry.attempts, entry.title) == ("dead", 3, "Rollout 9 failed")
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "is dead after 3 attempts" in logged and no_secret_in(logged)


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(
        tmp_path: Path, settings: Settings, receiver_factory: list[Receiver]) -> None:
    receiver = Receiver([307])
    receiver_factory.append(receiver)
    receiver.start()
    r = rig(tmp_path, settings, receiver, backoff_s=[5], max_attempts=4)
    queue_failure(r, 3)
    r.at(0)
    assert [(q.path, q.answered) for q in receiver.requests] == [(f"/services/{TOKEN}", 307)]
    [row] = r.rows()
    assert row.state == "pending" and "answered HTTP 307" in (row.last_error or "")
    r.at(5)
    assert [q.answered for q in receiver.requests] == [307, 200]
    assert r.rows()[0].state == "sent"

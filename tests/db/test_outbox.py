"""The notification outbox on SQLite and PostgreSQL: enqueue with the event, once per event;
claim for one controller at a time; mark sent or failed, dead after the last attempt."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from core import notify
from core.controller.notify import OutboxPruneStep
from core.notify_settings import NotifySettings
from core.ports import AlertTransition
from core.states import NotificationKind, NotificationState
from db import outbox
from db.engine import make_engine, session_factory
from db.models import AuditEventRow, NotificationRow
from db.stores import SqlMetricSink
from tests.db.conftest import Store

T0 = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)


def failed(plan: str) -> notify.Notification:
    return notify.rollout_failed(plan_id=plan, reason=f"plan {plan} failed validation")


def rows(store: Store) -> list[NotificationRow]:
    with store.factory() as s:
        return list(s.scalars(select(NotificationRow).order_by(NotificationRow.id)))


def test_a_message_commits_with_its_event_and_is_queued_once(store: Store) -> None:
    with store.factory.begin() as s:
        s.add(AuditEventRow(at=T0, actor="controller", action="rollout.failed",
                            object_type="rollout", object_id="1", reason="x", details={}))
        assert outbox.enqueue(s, failed("1"), dedupe_key="rollout-failed:1", now=T0)
        assert not outbox.enqueue(s, failed("1"), dedupe_key="rollout-failed:1", now=T0)
    with pytest.raises(RuntimeError), store.factory.begin() as s:  # the event rolls back…
        s.add(AuditEventRow(at=T0, actor="controller", action="rollout.failed",
                            object_type="rollout", object_id="2", reason="x", details={}))
        outbox.enqueue(s, failed("2"), dedupe_key="rollout-failed:2", now=T0)
        raise RuntimeError("the transition failed")
    with store.factory.begin() as s:  # …and so does its message; a repeat is still refused
        assert not outbox.enqueue(s, failed("1"), dedupe_key="rollout-failed:1", now=T0)
        assert s.scalar(select(func.count()).select_from(AuditEventRow)) == 1
    [row] = rows(store)
    assert (row.kind, row.state, row.attempts, row.next_attempt_at) == \
        ("rollout-failed", "pending", 0, T0)
    assert notify.Notification.from_json(row.payload) == failed("1")


def test_a_claim_holds_the_row_and_fences_a_late_report(store: Store) -> None:
    with store.factory.begin() as s:
        outbox.enqueue(s, failed("1"), dedupe_key="a", now=T0)
    with store.factory.begin() as s:
        [first] = outbox.due(s, now=T0, limit=10, lease_s=60)
        assert first.attempt == 1 and first.payload["object_id"] == "1"
        assert outbox.due(s, now=T0 + timedelta(seconds=59), limit=10, lease_s=60) == []
    with store.factory.begin() as s:  # the lease ran out: another controller takes it
        [second] = outbox.due(s, now=T0 + timedelta(seconds=61), limit=10, lease_s=60)
        assert second.attempt == 2
    with store.factory.begin() as s:
        assert not outbox.mark_sent(s, first.id, attempt=1, now=T0)  # moved on: ignored
        assert outbox.mark_failed(s, first.id, attempt=1, error="late", next_at=T0,
                                  max_attempts=5) is None
        assert outbox.mark_sent(s, second.id, attempt=2, now=T0 + timedelta(seconds=62))
        assert outbox.due(s, now=T0 + timedelta(days=1), limit=10) == []
    [row] = rows(store)
    assert (row.state, row.attempts, row.sent_at) == ("sent", 2, T0 + timedelta(seconds=62))


def test_failures_back_off_then_the_row_is_dead_with_a_short_redacted_error(
        store: Store) -> None:
    with store.factory.begin() as s:
        outbox.enqueue(s, failed("1"), dedupe_key="a", now=T0)
    now = T0
    for attempt in (1, 2, 3):
        with store.factory.begin() as s:
            [item] = outbox.due(s, now=now, limit=1)
            assert item.attempt == attempt
            state = outbox.mark_failed(
                s, item.id, attempt=attempt, max_attempts=3, next_at=now + timedelta(minutes=5),
                error="POST https://user:pa55word@hooks.example.test/x failed " + "z" * 900)
        assert state == (NotificationState.DEAD if attempt == 3 else NotificationState.PENDING)
        with store.factory() as s:
            assert outbox.due(s, now=now + timedelta(minutes=4), limit=1) == []
        now += timedelta(minutes=5)
    [row] = rows(store)
    assert row.state == "dead" and row.attempts == 3
    assert row.last_error is not None and len(row.last_error) <= outbox.ERROR_MAX
    assert "pa55word" not in row.last_error and "https://***@hooks.example.test" in row.last_error
    with store.factory() as s:
        assert outbox.due(s, now=now + timedelta(days=1), limit=1) == []
        [entry] = outbox.list_outbox(s, limit=10)
    assert (entry.state, entry.kind, entry.object_id, entry.attempts) == \
        ("dead", "rollout-failed", "1", 3)


def test_messages_pending_too_long_expire_but_fresh_ones_do_not(store: Store) -> None:
    with store.factory.begin() as s:
        outbox.enqueue(s, failed("old"), dedupe_key="old", now=T0)
        outbox.enqueue(s, failed("new"), dedupe_key="new", now=T0 + timedelta(hours=30))
    box = outbox.SqlNotificationOutbox(store.factory)
    now = (T0 + timedelta(hours=30)).timestamp()
    claimed = box.claim_due(now=now, limit=10, lease_s=30, expire_before=now - 86_400)
    assert [c.payload["object_id"] for c in claimed] == ["new"]
    by_id = {r.payload["object_id"]: r for r in rows(store)}
    assert by_id["old"].state == "dead" and "expired" in (by_id["old"].last_error or "")


def test_two_controllers_never_claim_the_same_message(store: Store) -> None:
    with store.factory.begin() as s:
        for i in range(40):
            outbox.enqueue(s, failed(str(i)), dedupe_key=f"k{i}", now=T0)
    engines = [make_engine(store.url) for _ in range(2)]
    claimed: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def drain(i: int) -> None:
        factory = session_factory(engines[i])
        try:
            barrier.wait(timeout=30)
            while True:
                with factory.begin() as s:
                    got = outbox.due(s, now=T0, limit=3, lease_s=300)
                if not got:
                    return
                claimed[i] += [g.id for g in got]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for engine in engines:
        engine.dispose()
    assert not errors
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == [r.id for r in rows(store)]
    assert all(r.attempts == 1 for r in rows(store))


def test_a_critical_alert_that_starts_firing_queues_one_message_with_its_sample(
        store: Store) -> None:
    sink = SqlMetricSink(store.factory)
    at = T0.timestamp()
    labels = {"namespace": "default", "model_name": "llama-2-13b"}
    firing = AlertTransition(name="LowSuccessRate", severity="critical", state="firing",
                             labels=labels, summary="success rate 0.90 < 0.95", at=at)
    sink.record_sample(points=[], alerts=[
        firing,
        AlertTransition(name="HighQPS", severity="warning", state="firing", labels={},
                        summary="QPS 250", at=at),
        AlertTransition(name="QPSDroppedToZero", severity="critical", state="resolved",
                        labels={}, summary="", at=at),
    ], cost_lines=[])
    sink.record_sample(points=[], alerts=[firing], cost_lines=[])  # the same event again
    [row] = rows(store)
    n = notify.Notification.from_json(row.payload)
    assert n.kind is NotificationKind.CRITICAL_ALERT and n.page == "overview"
    assert n.title == "Critical alert firing: LowSuccessRate"
    assert ("model_name", "llama-2-13b") in n.fields


def test_the_producer_helpers_queue_each_event_once_with_its_page(store: Store) -> None:
    with store.factory.begin() as s:
        assert outbox.notify_approval_waiting(s, object_type="rollout", object_id=4,
                                              summary="canary on h100-0", now=T0)
        assert outbox.notify_approval_waiting(s, object_type="rollout", object_id=4,
                                              summary="promote to all", stage="promote",
                                              now=T0)
        assert not outbox.notify_approval_waiting(s, object_type="rollout", object_id=4,
                                                  summary="again", now=T0)
        assert outbox.notify_approval_waiting(s, object_type="weights", object_id=7,
                                              summary="-3 % cost per 1k", now=T0)
        assert outbox.notify_rollout_failed(s, plan_id=4, reason="validation failed", now=T0)
        assert outbox.notify_rolled_back(s, plan_id=4, reason="rolled back", now=T0)
        assert outbox.notify_breaker_opened(s, opened_at=T0, failures=3, reason="3 in a row",
                                            cooldown_until=T0 + timedelta(hours=1), now=T0)
        assert not outbox.notify_breaker_opened(s, opened_at=T0, failures=3, reason="x",
                                                now=T0)
    got = [(r.kind, r.payload["page"], r.dedupe_key) for r in rows(store)]
    assert got == [
        ("approval-waiting", "rollouts", "approval-waiting:rollout:4:start"),
        ("approval-waiting", "rollouts", "approval-waiting:rollout:4:promote"),
        ("approval-waiting", "weights", "approval-waiting:weights:7:start"),
        ("rollout-failed", "rollouts", "rollout-failed:4"),
        ("rolled-back", "rollouts", "rolled-back:4"),
        ("breaker-opened", "rollouts", "breaker-opened:2026-12-01T18:00:00+00:00"),
    ]


def test_prune_deletes_only_old_finished_messages(store: Store) -> None:
    with store.factory.begin() as s:
        for name in ("old-sent", "old-dead", "old-pending", "new-sent"):
            at = T0 if name.startswith("old") else T0 + timedelta(days=40)
            outbox.enqueue(s, failed(name), dedupe_key=name, now=at)
    with store.factory.begin() as s:
        for item in outbox.due(s, now=T0 + timedelta(days=40), limit=10):
            name = item.payload["object_id"]
            if name.endswith("sent"):
                outbox.mark_sent(s, item.id, attempt=item.attempt, now=T0)
            elif name.endswith("dead"):
                outbox.mark_failed(s, item.id, attempt=item.attempt, error="x", next_at=T0,
                                   max_attempts=1)
    box = outbox.SqlNotificationOutbox(store.factory)
    assert box.prune(before=(T0 + timedelta(days=30)).timestamp(), limit=100) == 2
    assert sorted(r.payload["object_id"] for r in rows(store)) == ["new-sent", "old-pending"]


def test_without_a_webhook_the_leader_deletes_old_messages_pending_or_not(
        store: Store) -> None:
    with store.factory.begin() as s:
        for name, days in (("old-pending", 0), ("recent-pending", 25)):
            outbox.enqueue(s, failed(name), dedupe_key=name, now=T0 + timedelta(days=days))
    box = outbox.SqlNotificationOutbox(store.factory)
    step = OutboxPruneStep(box, NotifySettings(keep_days=30))
    now = (T0 + timedelta(days=31)).timestamp()
    assert step.due(now)
    step.run(now=now, leading=True)
    assert step.last_pruned == 1
    assert [r.payload["object_id"] for r in rows(store)] == ["recent-pending"]
    assert not step.due(now + 60)  # hourly
    assert step.due(now + 3600)
    # With a webhook the notify step's prune keeps what is still to be sent.
    assert box.prune(before=now + 86_400 * 30, limit=10) == 0


def test_simulated_history_queues_no_alert_messages(store: Store) -> None:
    sink = SqlMetricSink(store.factory, notify_alerts=False)  # the twin's backfill
    sink.record_sample(points=[], alerts=[AlertTransition(
        name="QPSDroppedToZero", severity="critical", state="firing", labels={},
        summary="no traffic", at=T0.timestamp())], cost_lines=[])
    assert rows(store) == []

"""The notify step: the leader delivers due webhook messages from the store's outbox.

Every ``[notify] interval_s`` the leader claims due messages one at a time
(``NotificationOutbox.claim_due``: a short claim lease, one attempt counted),
builds the Slack-compatible body (``core.notify.slack_payload``) and hands it
to the ``WebhookSender``. A 2xx reply marks the message sent; anything else
marks the attempt failed, due again after ``next_attempt_delay`` (``backoff_s``),
or dead once ``max_attempts`` are spent.

Invariants:
- nothing is lost while the endpoint is down: a message leaves the outbox only
  as sent, or as dead after its attempts (or ``max_age_s``) ran out, and a dead
  one stays listed with its redacted last error;
- the first failure ends the pass (the endpoint is likely down: the other
  messages keep their attempts for their own turn), and no new delivery starts
  once one ``timeout_s`` has passed, so a slow endpoint cannot hold the loop
  (and its lease) for more than about two timeouts;
- all time comes from the loop's clock (``now``); ``timer`` only bounds a pass;
- the body never holds a secret: the sender owns the URL and the secret;
- sent and dead messages are kept ``keep_days`` (the outbox is a record too),
  then pruned, at most ``PRUNE_ROWS`` an hour.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import SchedulerError, ValidationError
from core.notify import Notification, next_attempt_delay, slack_payload
from core.notify_settings import NotifySettings
from core.ports import DueNotification, NotificationOutbox, WebhookSender
from core.states import NotificationState

log = logging.getLogger(__name__)
PRUNE_ROWS = 1000  # finished messages deleted per prune (one short transaction)


@dataclass(frozen=True, slots=True)
class NotifyPass:
    """What one pass did."""

    at: float
    sent: int = 0
    failed: int = 0  # attempts that failed and will be retried
    dead: int = 0  # messages given up in this pass (out of attempts, or unreadable)
    lost: int = 0  # reports ignored: another controller holds the claim now


def body(n: Notification, *, console_url: str) -> bytes:
    """The bytes that are signed and sent (compact, stable key order)."""
    return json.dumps(slack_payload(n, console_url=console_url), ensure_ascii=False,
                      sort_keys=True, separators=(",", ":")).encode("utf-8")


class Notifier:
    """One delivery pass over the outbox (see the module docstring)."""

    def __init__(self, *, outbox: NotificationOutbox, sender: WebhookSender,
                 settings: NotifySettings, timer: Callable[[], float] | None = None,
                 batch: int = 20) -> None:
        self.outbox = outbox
        self.sender = sender
        self.settings = settings
        self.timer = timer
        self.batch = batch

    @property
    def lease_s(self) -> float:
        """How long a claim holds a message: past any attempt's timeout, with room."""
        return 2 * self.settings.timeout_s + 30

    def run_pass(self, *, now: float) -> NotifyPass:
        cfg = self.settings
        deadline = None if self.timer is None else self.timer() + cfg.timeout_s
        sent = failed = dead = lost = 0
        while sent + failed + dead + lost < self.batch:
            claimed = self.outbox.claim_due(now=now, limit=1, lease_s=self.lease_s,
                                            expire_before=now - cfg.max_age_s)
            if not claimed:
                break
            outcome, send_failed = self._deliver(claimed[0], now=now)
            if outcome is None:
                lost += 1
            elif outcome == NotificationState.SENT:
                sent += 1
            elif outcome == NotificationState.DEAD:
                dead += 1
            else:
                failed += 1
            if send_failed:
                break  # the endpoint is failing: the others wait for their own turn
            if deadline is not None and self.timer is not None and self.timer() >= deadline:
                break
        return NotifyPass(at=now, sent=sent, failed=failed, dead=dead, lost=lost)

    def _deliver(self, item: DueNotification, *, now: float) -> tuple[str | None, bool]:
        """Send one claimed message and report it: the row's new state (None when the
        claim was lost) and whether the send failed."""
        cfg = self.settings
        try:
            n = Notification.from_json(item.payload)
        except ValidationError as exc:  # written by a newer or broken producer: give up
            log.error("notification %d is unreadable (%s); marked dead", item.id, exc)
            return self.outbox.mark_failed(notification_id=item.id, attempt=item.attempt,
                                           error=f"unreadable payload: {exc}", next_at=now,
                                           max_attempts=item.attempt), False
        data = body(n, console_url=cfg.console_url)
        try:
            self.sender.send(data, timestamp=int(now), delivery_id=str(item.id),
                             event=n.kind.value)
        except SchedulerError as exc:  # TransientError from the adapter (or Permanent)
            delay = next_attempt_delay(item.attempt, cfg.backoff_s)
            state = self.outbox.mark_failed(notification_id=item.id, attempt=item.attempt,
                                            error=str(exc), next_at=now + delay,
                                            max_attempts=cfg.max_attempts)
            if state == NotificationState.DEAD:
                log.error("notification %d (%s) is dead after %d attempts: %s", item.id,
                          n.kind.value, item.attempt, exc)
            elif state is not None:
                log.info("notification %d (%s) attempt %d failed; retry in %g s", item.id,
                         n.kind.value, item.attempt, delay)
            return state, True
        if not self.outbox.mark_sent(notification_id=item.id, attempt=item.attempt, now=now):
            log.warning("notification %d was sent but its claim had moved on (the other "
                        "controller may send it again)", item.id)
            return None, False
        return NotificationState.SENT, False


class NotifyStep:
    """The leader's delivery pass every ``interval_s`` (not inside another step's
    heartbeat: a send may take up to ``timeout_s``)."""

    name = "notify"
    leader_only = True
    runs_in_heartbeat = False

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.last_pass: NotifyPass | None = None
        self._next: float | None = None
        self._prune_at: float | None = None

    def due(self, now: float) -> bool:
        return self._next is None or now >= self._next

    def run(self, *, now: float, leading: bool) -> None:
        # Set first: a pass that fails (the store is down) is retried an interval later.
        settings = self.notifier.settings
        self._next = now + settings.interval_s
        self.last_pass = self.notifier.run_pass(now=now)
        if self._prune_at is None or now >= self._prune_at:  # finished messages, hourly
            self._prune_at = now + 3600
            self.notifier.outbox.prune(before=now - settings.keep_days * 86_400,
                                       limit=PRUNE_ROWS)


class OutboxPruneStep:
    """Without a webhook (``[notify] webhook_url`` unset) nothing delivers the outbox, so
    its messages would pile up pending for ever: the leader deletes every message older
    than ``keep_days``, pending or not, once an hour, ``PRUNE_ROWS`` at a time (the
    Notifications panel still shows what the last ``keep_days`` would have sent)."""

    name = "outbox-prune"
    leader_only = True
    runs_in_heartbeat = False

    def __init__(self, outbox: NotificationOutbox, settings: NotifySettings) -> None:
        self.outbox = outbox
        self.settings = settings
        self._next: float | None = None
        self.last_pruned = 0

    def due(self, now: float) -> bool:
        return self._next is None or now >= self._next

    def run(self, *, now: float, leading: bool) -> None:
        self._next = now + 3600
        self.last_pruned = self.outbox.prune(before=now - self.settings.keep_days * 86_400,
                                             limit=PRUNE_ROWS, include_pending=True)


def notify_step(*, outbox: NotificationOutbox, sender: WebhookSender,
                settings: NotifySettings, timer: Callable[[], float] | None = None,
                ) -> NotifyStep:
    """The step as ``app.bootstrap.build_controller`` wires it."""
    return NotifyStep(Notifier(outbox=outbox, sender=sender, settings=settings, timer=timer))

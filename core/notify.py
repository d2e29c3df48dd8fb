"""Webhook notifications: typed events, their Slack-compatible JSON, the signature, the backoff.

Why: SPEC §4.5 asks for a message when an approval is waiting, a rollout fails
or rolls back, the circuit breaker opens or a critical alert fires, each with a
link to the page that acts on it. Producers build a ``Notification`` (one
constructor per kind below) inside the transaction that records the event; the
store keeps it in a durable outbox (``db.outbox``) and the controller's notify
step (``core.controller.notify``) delivers it through the webhook adapter
(``core.adapters.webhook``), retrying with ``next_attempt_delay``.

Invariants:
- a ``Notification`` never holds a secret: its texts and field values pass
  through ``core.redact.redact_text`` when it is made (and again when the
  payload is built), so a URL with credentials in an error message shows as
  ``https://***@host``; the webhook secret and URL are never inputs here;
- making a notification never fails on its contents' size: long texts are cut
  and fields beyond Slack's ten are dropped (only a wrong kind or page, a bug,
  is refused);
- ``slack_payload`` is deterministic (same notification, same bytes) and stays
  within Slack's block limits (header 150 characters, section text 3000, at
  most 10 fields of 2000), so a long reason is cut, never refused by Slack;
- ``sign`` is HMAC-SHA256 over ``b"<timestamp>." + body``: the timestamp is
  signed with the body, so a captured request cannot be replayed later with a
  fresh timestamp;
- pure: no I/O, no clock (the caller passes the timestamp).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import ValidationError
from core.redact import redact_text, redact_url
from core.states import NotificationKind

# The console pages a notification can link to (their Streamlit url paths).
PAGES = ("rollouts", "weights", "overview")
SIGNATURE_PREFIX = "sha256="
# Headers of a delivery (core.adapters.webhook sends them).
HEADER_TIMESTAMP = "X-GSC-Timestamp"
HEADER_SIGNATURE = "X-GSC-Signature"
HEADER_EVENT = "X-GSC-Event"
HEADER_DELIVERY = "X-GSC-Delivery"
# Slack's block limits.
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_FIELDS_MAX = 10
_OBJECT_MAX = 128
_PAGE_LABELS = {"rollouts": "Rollouts", "weights": "Weights", "overview": "Overview"}


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _clean(value: str, limit: int) -> str:
    """Redacted and cut; redacted first, so a cut never leaves half a credential behind."""
    return _cut(redact_text(value).strip(), limit)


@dataclass(frozen=True, slots=True)
class Notification:
    """One message: what happened (``kind``, ``title``, ``text``), to which object, the
    page that acts on it, and a few labelled figures (``fields``)."""

    kind: NotificationKind
    title: str
    text: str
    object_type: str
    object_id: str
    page: str
    fields: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        try:
            kind = NotificationKind(self.kind)
        except ValueError:
            raise ValidationError("notification.kind", f"must be one of "
                                  f"{', '.join(k.value for k in NotificationKind)}") from None
        object.__setattr__(self, "kind", kind)
        if self.page not in PAGES:
            raise ValidationError("notification.page", f"must be one of {', '.join(PAGES)}")
        for name, limit in (("title", _HEADER_MAX), ("text", _SECTION_MAX),
                            ("object_type", _OBJECT_MAX), ("object_id", _OBJECT_MAX)):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValidationError(f"notification.{name}", "must be text")
            object.__setattr__(self, name, _clean(value, limit))
        if not self.title:
            raise ValidationError("notification.title", "must not be empty")
        pairs = []
        for i, pair in enumerate(self.fields):
            if not (isinstance(pair, tuple | list) and len(pair) == 2
                    and all(isinstance(v, str) for v in pair)):
                raise ValidationError(f"notification.fields[{i}]", "must be a (label, value) "
                                                                   "pair of texts")
            pairs.append((_clean(pair[0], 100), _clean(pair[1], _FIELD_MAX - 110)))
        # Slack shows at most 10 fields; the rest are dropped rather than the message.
        object.__setattr__(self, "fields", tuple(pairs[:_FIELDS_MAX]))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "title": self.title, "text": self.text,
                "object_type": self.object_type, "object_id": self.object_id,
                "page": self.page, "fields": [list(p) for p in self.fields]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Notification:
        """From ``to_json``'s mapping; a missing or mistyped key is refused, naming it."""
        if not isinstance(data, Mapping):
            raise ValidationError("notification", "must be an object")
        for key in ("kind", "title", "text", "object_type", "object_id", "page"):
            if not isinstance(data.get(key), str):
                raise ValidationError(f"notification.{key}", "is missing or not text")
        raw_fields = data.get("fields", [])
        if not isinstance(raw_fields, list):
            raise ValidationError("notification.fields", "must be a list of pairs")
        return cls(kind=data["kind"], title=data["title"], text=data["text"],
                   object_type=data["object_type"], object_id=data["object_id"],
                   page=data["page"], fields=tuple(tuple(p) if isinstance(p, list) else p
                                                   for p in raw_fields))


def _mrkdwn(value: str) -> str:
    """Text safe inside Slack mrkdwn: ``&``, ``<`` and ``>`` escaped (no stray links)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def page_url(console_url: str, page: str) -> str:
    return f"{redact_url(console_url).rstrip('/')}/{page}"


def slack_payload(n: Notification, *, console_url: str) -> dict[str, Any]:
    """Slack-compatible JSON: a ``text`` fallback plus ``blocks`` (header, section,
    fields, a button linking to the page that acts on it)."""
    link = page_url(console_url, n.page)
    label = _PAGE_LABELS.get(n.page, n.page)
    title, text = _clean(n.title, _HEADER_MAX), _clean(n.text, _SECTION_MAX - 200)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": False}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(
            f"{_mrkdwn(text)}\n<{link}|Open the {label} page>", _SECTION_MAX)}},
    ]
    if n.fields:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{_mrkdwn(k)}*\n{_mrkdwn(v)}"} for k, v in n.fields]})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": _mrkdwn(f"{n.kind.value} · {n.object_type} {n.object_id}")}]})
    blocks.append({"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": f"Open {label}"},
         "url": link, "action_id": f"gsc-open-{n.page}"}]})
    return {"text": _cut(f"{title}: {text} ({link})", _SECTION_MAX), "blocks": blocks}


def sign(body: bytes, *, secret: str, timestamp: int) -> str:
    """The ``X-GSC-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of
    ``b"<timestamp>." + body`` under ``secret``."""
    if not secret:
        raise ValidationError("notify.secret", "is empty: nothing to sign with")
    mac = hmac.new(secret.encode(), f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(body: bytes, *, secret: str, timestamp: int | str, signature: str) -> bool:
    """Whether ``signature`` is ``sign(body, …)`` (constant-time comparison); what a
    receiver does, and what the tests do."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(sign(body, secret=secret, timestamp=ts).encode(),
                               str(signature).encode())


def next_attempt_delay(attempt: int, backoff_s: Sequence[float]) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 = the first): the
    ``attempt``-th entry of ``backoff_s``, its last entry beyond it."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValidationError("attempt", "must be a whole number ≥ 1")
    if not backoff_s:
        raise ValidationError("notify.backoff_s", "must hold at least one delay")
    delay = float(backoff_s[min(attempt, len(backoff_s)) - 1])
    if not math.isfinite(delay) or delay < 0:
        raise ValidationError("notify.backoff_s", "delays must be finite numbers ≥ 0")
    return delay


def retry_horizon_s(max_attempts: int, backoff_s: Sequence[float]) -> float:
    """How long after the first attempt the last one happens (the sum of the waits)."""
    return sum(next_attempt_delay(i, backoff_s) for i in range(1, max_attempts))


# One constructor per kind: the same wording and links wherever the event comes from.
# They take any values for fields (shown as text), so a producer never fails its event's
# transaction over a number where text was expected.

def _pairs(fields: Sequence[tuple[object, object]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in fields)


def approval_waiting(*, object_type: str, object_id: str, summary: str,
                     fields: Sequence[tuple[object, object]] = ()) -> Notification:
    """A rollout plan (``object_type="rollout"``) or a weight version (``"weights"``)
    waits for an approver."""
    page = "weights" if object_type in ("weights", "weight_version") else "rollouts"
    what = "Weight version" if page == "weights" else "Rollout plan"
    return Notification(kind=NotificationKind.APPROVAL_WAITING,
                        title=f"{what} {object_id} is waiting for approval", text=summary,
                        object_type=object_type, object_id=object_id, page=page,
                        fields=_pairs(fields))


def rollout_failed(*, plan_id: str, reason: str,
                   fields: Sequence[tuple[object, object]] = ()) -> Notification:
    return Notification(kind=NotificationKind.ROLLOUT_FAILED,
                        title=f"Rollout {plan_id} failed", text=reason,
                        object_type="rollout", object_id=plan_id, page="rollouts",
                        fields=_pairs(fields))


def rolled_back(*, plan_id: str, reason: str,
                fields: Sequence[tuple[object, object]] = ()) -> Notification:
    return Notification(kind=NotificationKind.ROLLED_BACK,
                        title=f"Rollout {plan_id} was rolled back", text=reason,
                        object_type="rollout", object_id=plan_id, page="rollouts",
                        fields=_pairs(fields))


def breaker_opened(*, failures: int, reason: str, cooldown_until: str = "",
                   fields: Sequence[tuple[object, object]] = ()) -> Notification:
    extra = [("Failed updates in a row", str(failures))]
    if cooldown_until:
        extra.append(("Half-open after", cooldown_until))
    return Notification(kind=NotificationKind.BREAKER_OPENED,
                        title="Circuit breaker opened: no MPS updates",
                        text=reason, object_type="breaker", object_id="rollouts",
                        page="rollouts", fields=(*extra, *_pairs(fields)))


def critical_alert(*, name: str, summary: str, labels: Mapping[str, str],
                   started_at: str) -> Notification:
    shown = [(k, str(v)) for k, v in sorted(labels.items())][:_FIELDS_MAX - 1]
    return Notification(kind=NotificationKind.CRITICAL_ALERT,
                        title=f"Critical alert firing: {name}", text=summary or name,
                        object_type="alert", object_id=name, page="overview",
                        fields=(("Since", started_at), *shown))

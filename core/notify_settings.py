"""Where webhook notifications go and how delivery retries (settings section ``[notify]``).

Why: the webhook URL and its signing secret are credentials (a Slack incoming
webhook URL carries its token in the path), so they are read, checked and
then only handed to the delivery adapter; everything else (the outbox, the
step, the pages) sees ``enabled`` and the retry policy. Both may come from
the environment instead of the file: ``GSC_NOTIFY_WEBHOOK_URL`` and
``GSC_NOTIFY_SECRET`` (``ENV_KEYS``, mapped by ``core.adapters.settings_source``).

Invariants (checked here, so a bad file is refused at start-up naming the key):
- ``webhook_url`` is empty (notifications off) or an http(s) URL with a host;
  ``console_url`` is an http(s) URL without credentials (it is put in messages);
- ``secret`` is empty (no signature header) or at least ``MIN_SECRET_CHARS``
  characters; neither it nor the webhook URL appears in ``repr``;
- ``backoff_s`` is a non-empty list of delays > 0; ``max_age_s`` outlasts every
  retry (``core.notify.retry_horizon_s``), so a notification is never expired
  while it still has attempts left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from core.errors import ValidationError
from core.notify import retry_horizon_s
from core.redact import has_credentials
from core.validate import dataclass_from_table, integer, kind_of, number, text

SECTION = "notify"
MIN_SECRET_CHARS = 16
# Environment variable → [notify] key.
ENV_KEYS: Mapping[str, str] = MappingProxyType({
    "GSC_NOTIFY_WEBHOOK_URL": "webhook_url",
    "GSC_NOTIFY_SECRET": "secret",
})


def env_mapping(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``[notify]`` keys the documented environment variables set."""
    return {key: env[var] for var, key in ENV_KEYS.items() if var in env}


def _name(key: str) -> str:
    env = next((var for var, k in ENV_KEYS.items() if k == key), None)
    return f"{env} ({SECTION}.{key})" if env else f"{SECTION}.{key}"


def _http_url(key: str, value: Any) -> str:
    url = text(_name(key), value, max_length=2000)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The value itself is not quoted: it may be a credential.
        raise ValidationError(_name(key), "must be an http:// or https:// URL with a host")
    return url


@dataclass(frozen=True)
class NotifySettings:
    """The ``[notify]`` table; times in seconds."""

    webhook_url: str = field(default="", repr=False)  # empty: notifications are not sent
    secret: str = field(default="", repr=False)       # empty: no X-GSC-Signature header
    console_url: str = "http://127.0.0.1:8501"
    timeout_s: float = 5.0
    max_attempts: int = 12
    backoff_s: tuple[float, ...] = (5.0, 15.0, 60.0, 300.0, 900.0)
    max_response_bytes: int = 65_536
    # The notify step looks for due messages this often.
    interval_s: float = 5.0
    # A message still pending this long after it was queued is given up (dead), e.g. one
    # queued while notifications were off: an old alert is noise, not news.
    max_age_s: float = 86_400.0
    # Sent and dead messages are deleted this long after they were queued.
    keep_days: float = 30.0

    def __post_init__(self) -> None:
        url = text(_name("webhook_url"), self.webhook_url, max_length=2000)
        object.__setattr__(self, "webhook_url", _http_url("webhook_url", url) if url else "")
        secret = self.secret
        if not isinstance(secret, str):
            raise ValidationError(_name("secret"), f"must be text, not {kind_of(secret)}")
        if secret and len(secret) < MIN_SECRET_CHARS:
            raise ValidationError(_name("secret"), f"must be empty (no signature) or at "
                                                   f"least {MIN_SECRET_CHARS} characters")
        console = _http_url("console_url", self.console_url)
        if has_credentials(console):
            raise ValidationError(_name("console_url"), "must not carry credentials: it is "
                                                        "put in every message")
        object.__setattr__(self, "console_url", console.rstrip("/"))

        def num(key: str, lo: float, hi: float) -> float:
            value = number(f"{SECTION}.{key}", getattr(self, key))
            if not lo <= value <= hi:
                raise ValidationError(f"{SECTION}.{key}", f"must be within {lo:g}..{hi:g}")
            object.__setattr__(self, key, value)
            return value

        num("timeout_s", 0.1, 60)
        num("interval_s", 0.1, 3600)
        num("keep_days", 1, 3650)
        for key, lo, hi in (("max_attempts", 1, 100), ("max_response_bytes", 0, 1 << 20)):
            value = integer(f"{SECTION}.{key}", getattr(self, key))
            if not lo <= value <= hi:
                raise ValidationError(f"{SECTION}.{key}", f"must be within {lo}..{hi}")
            object.__setattr__(self, key, value)
        raw = self.backoff_s
        if not isinstance(raw, list | tuple) or not raw:
            raise ValidationError(f"{SECTION}.backoff_s", "must be a non-empty list of "
                                                          "seconds, e.g. [5, 15, 60, 300, 900]")
        delays = []
        for i, item in enumerate(raw):
            delay = number(f"{SECTION}.backoff_s[{i}]", item)
            if not 0 < delay <= 86_400:
                raise ValidationError(f"{SECTION}.backoff_s[{i}]", "must be within 0..86400 "
                                                                   "(and above 0)")
            delays.append(delay)
        object.__setattr__(self, "backoff_s", tuple(delays))
        horizon = retry_horizon_s(self.max_attempts, self.backoff_s)
        if num("max_age_s", 60, 90 * 86_400) <= horizon:
            raise ValidationError(f"{SECTION}.max_age_s", f"must outlast every retry "
                                  f"(more than {horizon:g} s with these backoff_s and "
                                  "max_attempts)")

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)

    @property
    def signed(self) -> bool:
        return bool(self.secret)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> NotifySettings:
        """From the ``[notify]`` table; unknown keys are refused, naming the key."""
        return dataclass_from_table(cls, raw, section=SECTION)

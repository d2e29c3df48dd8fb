"""The webhook adapter: POST one notification body, signed, to the configured URL.

Why: the only code that holds the webhook URL and the signing secret at run
time. The notify step (``core.controller.notify``) hands it a body; it adds the
headers (``Content-Type``, ``X-GSC-Timestamp``, ``X-GSC-Event``,
``X-GSC-Delivery`` and, with a secret, ``X-GSC-Signature``: see
``core.notify.sign``), sends it with ``urllib.request`` and says how it went.

Invariants:
- a 2xx reply is a delivery; anything else (another status, a redirect, a
  refused connection, a timeout, a reply cut short) raises ``TransientError``
  so the outbox retries it with backoff;
- redirects are never followed: a POST is not replayed to another host;
- at most ``max_response_bytes`` of a reply are read, within ``timeout_s``;
- neither the secret nor the full URL appears in a log line or an error
  message: a Slack webhook URL carries its token in the path, so only
  ``scheme://host[:port]`` (``where``) is shown, and any echo of the URL or its
  path in a reply's text is masked.
"""

from __future__ import annotations

import http.client
import logging
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from core.adapters.errors import innermost_reason
from core.errors import TransientError
from core.notify import (
    HEADER_DELIVERY,
    HEADER_EVENT,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    sign,
)
from core.notify_settings import NotifySettings
from core.redact import MASK, redact_text

log = logging.getLogger(__name__)
USER_AGENT = "gpu-scheduler-console-webhook/1"
_SNIPPET_CHARS = 120


def where(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may be shown of a webhook URL."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


class HttpWebhookSender:
    """``core.ports.WebhookSender`` over ``urllib.request``."""

    def __init__(self, *, url: str, secret: str, timeout_s: float,
                 max_response_bytes: int) -> None:
        self._url = url
        self._secret = secret
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.where = where(url)
        self._path = urlsplit(url).path
        self._opener = urllib.request.build_opener(_NoRedirect)

    @classmethod
    def from_settings(cls, settings: NotifySettings) -> HttpWebhookSender:
        return cls(url=settings.webhook_url, secret=settings.secret,
                   timeout_s=settings.timeout_s,
                   max_response_bytes=settings.max_response_bytes)

    def __repr__(self) -> str:  # never the URL's path or the secret
        return f"HttpWebhookSender({self.where}, signed={bool(self._secret)})"

    def headers(self, body: bytes, *, timestamp: int, delivery_id: str,
                event: str) -> dict[str, str]:
        out = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
               HEADER_TIMESTAMP: str(int(timestamp)), HEADER_EVENT: event,
               HEADER_DELIVERY: delivery_id}
        if self._secret:
            out[HEADER_SIGNATURE] = sign(body, secret=self._secret, timestamp=timestamp)
        return out

    def _scrub(self, text: str) -> str:
        """``text`` with the URL, its path and the secret masked, then redacted."""
        for secret in (self._url, self._path if len(self._path) > 1 else "", self._secret):
            if secret:
                text = text.replace(secret, MASK)
        return redact_text(text)

    def _snippet(self, data: bytes) -> str:
        text = " ".join(data[:_SNIPPET_CHARS * 4].decode("utf-8", "replace").split())
        text = self._scrub(text)
        return text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS - 1] + "…"

    def send(self, body: bytes, *, timestamp: int, delivery_id: str, event: str) -> int:
        request = urllib.request.Request(
            self._url, data=body, method="POST",
            headers=self.headers(body, timestamp=timestamp, delivery_id=delivery_id,
                                 event=event))
        try:
            with self._opener.open(request, timeout=self.timeout_s) as reply:
                reply.read(self.max_response_bytes)
                status = int(reply.status)
        except urllib.error.HTTPError as exc:
            try:
                snippet = self._snippet(exc.read(self.max_response_bytes) or b"")
            except (OSError, http.client.HTTPException):
                snippet = ""
            finally:
                exc.close()
            message = f"{self.where} answered HTTP {exc.code}" + (f": {snippet}"
                                                                  if snippet else "")
            log.warning("webhook delivery %s failed: %s", delivery_id, message)
            # Not chained: an HTTPError carries the full URL (``exc.url``) into tracebacks.
            raise TransientError(message) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            message = f"{self.where} unreachable: {self._scrub(innermost_reason(exc))}"
            log.warning("webhook delivery %s failed: %s", delivery_id, message)
            raise TransientError(message) from None
        if not 200 <= status < 300:  # 1xx or an odd status the opener let through
            message = f"{self.where} answered HTTP {status}"
            log.warning("webhook delivery %s failed: %s", delivery_id, message)
            raise TransientError(message)
        log.info("webhook delivery %s (%s) sent to %s: HTTP %d", delivery_id, event,
                 self.where, status)
        return status

"""Credentials out of URLs before they are shown or logged.

Why: operators put credentials in connection URLs (``PROMETHEUS_URL=
https://user:token@prometheus``, ``DATABASE_URL=postgresql://gsc:secret@db/gsc``),
and those URLs appear in the sidebar, in error messages and in logs. Every
place that displays a URL goes through ``redact_url`` (one URL) or
``redact_text`` (free text that may hold URLs, e.g. an exception's message).

Invariants:
- the user-info part (``user``, ``user:password``, ``token``) is replaced by
  ``***`` whole: a user name can itself be a token;
- values of query parameters that carry secrets (``password``, ``token``,
  ``secret``, ``api_key``, ``access_token``, …) become ``***``;
- when in doubt, more is hidden, never less: the user-info ends at the LAST
  ``@`` before the query (or anywhere, when no ``/`` precedes the ``?``), so a
  password holding an unencoded ``/``, ``?`` or ``@`` is still hidden whole (a
  URL whose path holds an ``@`` then shows less of itself than it could);
- text without credentials comes back unchanged; pure (no I/O).
"""

from __future__ import annotations

import re

MASK = "***"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", re.DOTALL)
# A URL inside free text: a scheme, then everything up to whitespace or a quote/bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|pass|secret|token|access_token|id_token|api_key"
    r"|apikey|key|auth|authorization|credentials?|sig|signature)=)[^&;#]*")


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***``.

    ``http://user:pass@host:9090/x`` → ``http://***@host:9090/x``;
    ``https://host/api?token=abc`` → ``https://host/api?token=***``; a URL
    without credentials (``sqlite:///var/x.db``) comes back unchanged.
    """
    match = _SCHEME.match(url)
    if match is None:
        return _SECRET_PARAM.sub(rf"\1{MASK}", url)
    scheme, rest = match.groups()
    head, question, _ = rest.partition("?")
    if "@" in head:
        at = head.rfind("@")
    elif question and "/" not in head:  # no path before the "?": it is in the user-info
        at = rest.rfind("@")
    else:  # an "@" after the path's "?" belongs to the query
        at = -1
    if at >= 0:
        rest = MASK + rest[at:]
    return scheme + _SECRET_PARAM.sub(rf"\1{MASK}", rest)


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (``redact_url``)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries credentials that ``redact_url`` would hide."""
    return redact_url(url) != url

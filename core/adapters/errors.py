"""Helpers the adapters share when turning client errors into the project's own."""

from __future__ import annotations


def innermost_reason(exc: BaseException, *, limit: int = 200) -> str:
    """The innermost OS-level reason of a client error ("Connection refused"), else its text.

    Client libraries wrap socket errors several layers deep (urllib3 → requests or
    the Kubernetes client); operators want the one line that says what happened.
    """
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        todo.extend((getattr(e, "reason", None), e.__cause__, e.__context__, *e.args))
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."

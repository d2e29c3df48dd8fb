"""Start the console: ``python -m app.serve [--host H] [--port P]`` (what ``make run`` does).

With no sign-in configured (``[auth] mode = "none"``) every visitor is the local
approver, so the console serves on a loopback address only; any other address is
refused before Streamlit starts, with how to configure sign-in. Settings are read
(and refused with the key's name) before anything listens.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from app import prestart
from app.malloc import limit_arenas
from core.adapters.settings_source import load_settings
from core.errors import ValidationError

ROOT = Path(__file__).resolve().parents[1]
HOW_TO_SIGN_IN = (
    "Configure sign-in first: local accounts ([auth] mode = \"local\" with "
    "[auth.accounts.<name>] role and password_hash from `python -m app.auth hash`) or OIDC "
    "([auth] mode = \"oidc\", the provider in .streamlit/secrets.toml); see the README, "
    "section Sign-in. Or serve on 127.0.0.1.")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, *, sign_in_configured: bool) -> str | None:
    """Why the console may not listen on ``host``; ``None`` when it may."""
    if sign_in_configured or is_loopback(host):
        return None
    return (f"refusing to serve on {host!r}: no sign-in is configured, so every visitor "
            f"would be the local approver. {HOW_TO_SIGN_IN}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    args, rest = parser.parse_known_args(argv)
    try:
        settings = load_settings()
    except ValidationError as exc:
        print(f"gsc: the settings are not valid: {exc}", file=sys.stderr)
        return 2
    problem = bind_problem(args.host, sign_in_configured=settings.auth.sign_in_configured)
    if problem:
        print(f"gsc: {problem}", file=sys.stderr)
        return 2
    limit_arenas(settings.runtime.malloc_arena_max)  # before any thread starts
    # The runtime starts with the process (store, twin, controller, history backfill), in
    # a thread while Streamlit starts listening; the first page load takes it (app.prestart).
    prestart.start(settings)
    from streamlit.web import cli as streamlit_cli

    streamlit_cli.main(
        args=["run", str(ROOT / "app" / "streamlit_app.py"),
              "--server.address", args.host, "--server.port", str(args.port),
              "--server.headless", "true", "--browser.gatherUsageStats", "false", *rest],
        prog_name="streamlit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

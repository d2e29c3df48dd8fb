"""Command line: ``python -m db.migrate [upgrade|downgrade|check|revision -m MSG]``.

``check`` upgrades a throwaway SQLite file to head and runs ``alembic check``:
it fails when the models and the migrations disagree (run by ``make test``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.util.exc import CommandError

from core.adapters.settings_source import load_settings
from db.engine import alembic_config, database_url, make_engine, redacted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["upgrade", "downgrade", "check", "revision"])
    parser.add_argument("-m", "--message", default="change")
    parser.add_argument("--revision", default=None)
    args = parser.parse_args(argv)
    if args.action in ("check", "revision"):
        with tempfile.TemporaryDirectory() as tmp:
            engine = make_engine(f"sqlite:///{Path(tmp) / 'check.db'}")
            cfg = alembic_config(engine)
            command.upgrade(cfg, "head")
            try:
                if args.action == "check":
                    command.check(cfg)
                    print("migrations match the models")
                else:
                    command.revision(cfg, message=args.message, autogenerate=True)
            except CommandError as exc:
                print(f"migrations and models disagree: {exc}", file=sys.stderr)
                return 1
            finally:
                engine.dispose()
        return 0
    url = database_url(load_settings().runtime.database_url)
    engine = make_engine(url)
    cfg = alembic_config(engine)
    if args.action == "upgrade":
        command.upgrade(cfg, args.revision or "head")
    else:
        command.downgrade(cfg, args.revision or "-1")
    print(f"{args.action} done on {redacted(url)}")
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

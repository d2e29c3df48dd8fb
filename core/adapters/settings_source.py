"""Reads settings: packaged defaults, then one operator file, then the environment.

``GSC_SETTINGS_FILE`` names the operator's file (``.toml``, ``.yaml`` or
``.yml``). Individual keys can be overridden with ``GSC__SECTION__KEY=value``
environment variables (double underscores separate levels), e.g.
``GSC__PLACEMENT__MAX_UTILIZATION=0.85``. The documented variables of the
``[runtime]`` section (``DATABASE_URL``, ``GSC_CLUSTER``, ``PROMETHEUS_URL``,
``GSC_KUBE_*``, …; see ``core.runtime_settings.ENV_KEYS``) are mapped onto it, and
``GSC_NOTIFY_WEBHOOK_URL`` / ``GSC_NOTIFY_SECRET`` onto ``[notify]``.
This is the only module that reads the process environment.

Environment variable names are upper case, settings keys are not all lower
case (GPU types: ``[catalog.H100]``, ``[fleet] H100 = 4``). Each level of a
``GSC__`` path is therefore matched case-insensitively against the keys the
defaults and the operator's file already hold, and takes their spelling
(``GSC__FLEET__H100`` sets ``fleet.H100``); a key they do not hold keeps the
variable's spelling in a table keyed by GPU types and is lower-cased
elsewhere, so the parser refuses it under the name a file would use. A value
is read as a TOML value (``0.15``, ``true``, ``["A100"]``) or else as text.
An error in a key a variable set says which variable set it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from core.errors import ValidationError
from core.notify_settings import env_mapping as notify_env_mapping
from core.runtime_settings import env_mapping
from core.settings import Settings, deep_merge, parse_settings

ENV_FILE = "GSC_SETTINGS_FILE"
ENV_PREFIX = "GSC__"


def default_mapping() -> dict[str, Any]:
    text = resources.files("core").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(ENV_FILE, f"cannot read {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ValidationError(ENV_FILE, f"{path.name}: use a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ValidationError(ENV_FILE, f"{path.name} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ValidationError(ENV_FILE, f"{path.name} must hold a table of settings")
    return data


def env_overrides(env: Mapping[str, str], known: Mapping[str, Any] | None = None,
                  ) -> dict[str, Any]:
    """The ``GSC__SECTION__KEY`` variables of ``env`` as a nested settings mapping.

    ``known`` is the settings mapping the overrides go over (the packaged
    defaults when not given): its keys give each level its spelling.
    """
    return _nest(_env_paths(env, known))


def _env_paths(env: Mapping[str, str], known: Mapping[str, Any] | None,
               ) -> dict[tuple[str, ...], tuple[Any, str]]:
    """Each override's path (spelled as in ``known``) → (value, variable name)."""
    known = default_mapping() if known is None else known
    out: dict[tuple[str, ...], tuple[Any, str]] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = [p for p in var[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        path = _spelled(parts, known)
        if path in out:
            raise ValidationError(".".join(path), f"is set by both {out[path][1]} and {var}")
        out[path] = (_scalar(env[var]), var)
    return out


def _nest(paths: Mapping[tuple[str, ...], tuple[Any, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, (value, _) in paths.items():
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return out


def _spelled(parts: list[str], known: Mapping[str, Any]) -> tuple[str, ...]:
    """``parts`` of a variable's path, each spelled as the key it matches in ``known``."""
    out: list[str] = []
    table: Any = known
    for part in parts:
        keys = [k for k in table if isinstance(k, str)] if isinstance(table, Mapping) else []
        if out == ["fleet"] and isinstance(known.get("catalog"), Mapping):
            keys += [k for k in known["catalog"] if isinstance(k, str)]  # counts per GPU type
        match = next((k for k in keys if k.lower() == part.lower()), None)
        if match is not None:
            out.append(match)
            table = table.get(match) if isinstance(table, Mapping) else None
            continue
        # A new key: a table keyed by GPU types keeps the variable's spelling.
        out.append(part if any(k != k.lower() for k in keys) else part.lower())
        siblings = [v for v in table.values() if isinstance(v, Mapping)] \
            if isinstance(table, Mapping) else []
        # A new entry of a table of tables (a new GPU type) is spelled like its siblings.
        table = {k: v for sibling in siblings for k, v in sibling.items()} \
            if siblings and len(siblings) == len(table) else None
    return tuple(out)


def _scalar(value: str) -> Any:
    """A TOML value (number, boolean, date, quoted text, list, inline table) or the text."""
    try:
        parsed = tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError:
        return value
    return parsed["v"] if set(parsed) == {"v"} else value


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    merged = default_mapping()
    file_path = path or (Path(env[ENV_FILE]) if env.get(ENV_FILE) else None)
    if file_path is not None:
        merged = deep_merge(merged, read_file(file_path))
    overrides = _env_paths(env, merged)
    merged = deep_merge(merged, _nest(overrides))
    # The documented variables (DATABASE_URL, GSC_CLUSTER, …) win over the file.
    merged = deep_merge(merged, {"runtime": env_mapping(env)})
    # GSC_NOTIFY_WEBHOOK_URL and GSC_NOTIFY_SECRET: credentials, best kept out of files.
    merged = deep_merge(merged, {"notify": notify_env_mapping(env)})
    try:
        return parse_settings(merged)
    except ValidationError as exc:
        setters = [var for path, (_, var) in overrides.items()
                   if _related(".".join(path), exc.field)]
        if not setters:
            raise
        raise ValidationError(exc.field, f"{exc.message} (set by {', '.join(setters)})"
                              ) from None


def _related(path: str, field: str) -> bool:
    """Whether the key at ``path`` is, holds or lies in the settings field ``field``."""
    return path == field or path.startswith(field + ".") or field.startswith(path + ".")

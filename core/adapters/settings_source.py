"""Reads settings: packaged defaults, then one operator file, then the environment.

``GSC_SETTINGS_FILE`` names the operator's file (``.toml``, ``.yaml`` or
``.yml``). Individual keys can be overridden with ``GSC__SECTION__KEY=value``
environment variables (double underscores separate levels), e.g.
``GSC__PLACEMENT__MAX_UTILIZATION=0.85``. The documented variables of the
``[runtime]`` section (``DATABASE_URL``, ``GSC_CLUSTER``, ``PROMETHEUS_URL``,
``GSC_KUBE_*``, …; see ``core.runtime_settings.ENV_KEYS``) are mapped onto it.
This is the only module that reads the process environment.
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


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _scalar(value)
    return out


def _scalar(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    merged = default_mapping()
    file_path = path or (Path(env[ENV_FILE]) if env.get(ENV_FILE) else None)
    if file_path is not None:
        merged = deep_merge(merged, read_file(file_path))
    merged = deep_merge(merged, env_overrides(env))
    # The documented variables (DATABASE_URL, GSC_CLUSTER, …) win over the file.
    merged = deep_merge(merged, {"runtime": env_mapping(env)})
    return parse_settings(merged)

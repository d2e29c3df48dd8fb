"""The NVIDIA device plugin's config ``v1``: which keys it reads, and how its decoder reads them.

The lint (``core.mps.lint``) must give the real plugin's verdict on a config,
not a guess. The plugin parses its config file with ``sigs.k8s.io/yaml``
(YAML is turned into JSON first), then ``encoding/json`` into its Go types,
some of which bring their own ``UnmarshalJSON``. This module holds the field
table written from those Go types (their JSON tags) and a model of that
decoder; ``decode`` says, for any parsed config, what the plugin keeps (under
its canonical key), what it drops without a word, and which values make it
refuse to start. The start-up validation that runs after decoding (version,
``validateFlags``, the renaming/device reset) is applied by the lint.

Invariants kept here:
- pure and total: ``decode`` never raises, whatever it is given, and returns
  its issues in a stable order (keys in the order written, depth first);
- ``Decoded.value`` holds canonical keys of ``SCHEMA`` only;
- no I/O and no environment: the plugin's ``RESOURCE_PREFIX`` variable is
  taken as unset (prefix ``nvidia.com``), and flags given on the plugin's
  command line or environment (which override the file: config.go
  ``NewConfig``, flags.go ``updateFromCLIFlag``) are not seen.

Where the rules come from (github.com/NVIDIA/k8s-device-plugin; read, not
copied). PINNED_RELEASE is the release line; the stored copies could not be
read at one tag, so each file is named with the commit that was read:
- api/config/v1/config.go @03973a97: ``Config`` {version, flags, resources,
  sharing, imex}; ``parseConfigFrom`` (empty version → v1, any other →
  "unknown version"); ``DisableResourceNamingInConfig``.
- api/config/v1/sharing.go @03973a97: ``Sharing`` {timeSlicing, mps (pointer)},
  ``SharingStrategy`` (MPS wins over time-slicing), ``ReplicatedResources``.
- api/config/v1/replicas.go, MPS-era (NVIDIA's stored copies, 9b89da8b and
  19d7d8f0, predate MPS; read at elezar/k8s-device-plugin@2adabdfe, a fork by
  the plugin's maintainer, identical in these functions to the fork
  linskybing/k8s-device-plugin@b689a353): ``ReplicatedResources`` and
  ``ReplicatedResource`` decode through ``map[string]json.RawMessage`` with
  exact key look-ups; resources required and non-empty, name and replicas
  required, ``replicas < 2`` refused, devices default "all";
  ``ReplicatedDevices.UnmarshalJSON`` ("all", a count > 0, or a list of GPU
  indices, MIG indices and UUIDs); ``renameByDefault`` sets
  ``rename = name + ".shared"``; ``disableResoureRenaming``.
- api/config/v1/resources.go @0e1a6ff6: ``Resource`` (pattern and name
  required, exact keys), ``NewResourceName`` (adds the "nvidia.com/" prefix,
  at most 63 characters, a DNS subdomain after the prefix).
- api/config/v1/flags.go: NVIDIA's stored copies (4f261c04, 01421a20) predate
  MPS; the field list is the MPS-era file found in the index without its
  repository (flag names match consts.go @05ff6e80); it has
  ``plugin.cdiFeatureFlags``, added by NVIDIA/k8s-device-plugin#1495 (Nov
  2025, cherry-picked to release-0.18).
- api/config/v1/imex.go @93953b04, duration.go @10da3b4f, strategy.go
  @864cddc7, consts.go @05ff6e80; stored versions.mk @0495ac65 says v0.19.1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

PINNED_RELEASE = "v0.19 line (MPS-era api/config/v1; stored versions.mk: v0.19.1)"
SOURCE_REPO = "NVIDIA/k8s-device-plugin"

RESOURCE_PREFIX = "nvidia.com"  # consts.go ResourceNamePrefix; RESOURCE_PREFIX env unset
SHARED_SUFFIX = ".shared"  # consts.go DefaultSharedResourceNameSuffix
MAX_RESOURCE_NAME = 63  # consts.go MaxResourceNameLength


class Match(StrEnum):
    """How a Go type finds its keys."""

    FOLD = "fold"  # encoding/json into a struct: exact name, else case-insensitively
    EXACT = "exact"  # own UnmarshalJSON reading a map[string]json.RawMessage by exact key


class Leaf(StrEnum):
    """The value kinds of the schema's leaves, each checked as the plugin decodes it."""

    STRING = "string"  # string or *string: sigs.k8s.io/yaml turns a YAML scalar into text
    BOOL = "bool"  # bool or *bool: a JSON true/false (null leaves it unset)
    DURATION = "duration"  # Duration: a number (ns) or a Go duration text
    STRATEGIES = "strategies"  # deviceListStrategyFlag: one text or a list of texts
    INTS = "ints"  # []int
    PATTERN = "pattern"  # ResourcePattern inside Resource's own decoder: a JSON string
    RESOURCE_NAME = "resource-name"  # ResourceName.UnmarshalJSON → NewResourceName
    REPLICAS = "replicas"  # int, and ReplicatedResource refuses < 2
    DEVICES = "devices"  # ReplicatedDevices.UnmarshalJSON


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Node


@dataclass(frozen=True, slots=True)
class Struct:
    go_type: str
    fields: Mapping[str, Node]
    match: Match = Match.FOLD
    pointers: frozenset[str] = frozenset()  # fields declared as pointers: null leaves them nil
    required: tuple[str, ...] = ()  # keys its own decoder refuses to do without
    non_empty: tuple[str, ...] = ()  # list keys its own decoder refuses when empty
    defaults: Mapping[str, Any] = field(default_factory=dict)  # filled when the key is missing


Node = Struct | ListOf | Leaf

_REPLICATED_RESOURCE = Struct(
    "ReplicatedResource", match=Match.EXACT, required=("name", "replicas"),
    defaults={"devices": "all"},
    fields={"name": Leaf.RESOURCE_NAME, "rename": Leaf.RESOURCE_NAME,
            "devices": Leaf.DEVICES, "replicas": Leaf.REPLICAS})
_REPLICATED_RESOURCES = Struct(
    "ReplicatedResources", match=Match.EXACT, required=("resources",), non_empty=("resources",),
    fields={"renameByDefault": Leaf.BOOL, "failRequestsGreaterThanOne": Leaf.BOOL,
            "resources": ListOf(_REPLICATED_RESOURCE)})
_RESOURCE = Struct("Resource", match=Match.EXACT, required=("pattern", "name"),
                   fields={"pattern": Leaf.PATTERN, "name": Leaf.RESOURCE_NAME})
_PLUGIN_FLAGS = Struct("PluginCommandLineFlags", fields={
    "passDeviceSpecs": Leaf.BOOL, "deviceListStrategy": Leaf.STRATEGIES,
    "deviceIDStrategy": Leaf.STRING, "cdiAnnotationPrefix": Leaf.STRING,
    "nvidiaCTKPath": Leaf.STRING, "containerDriverRoot": Leaf.STRING,
    "kubeletSocket": Leaf.STRING, "cdiFeatureFlags": Leaf.STRING})
_GFD_FLAGS = Struct("GFDCommandLineFlags", fields={
    "oneshot": Leaf.BOOL, "noTimestamp": Leaf.BOOL, "sleepInterval": Leaf.DURATION,
    "outputFile": Leaf.STRING, "machineTypeFile": Leaf.STRING})
# Flags embeds CommandLineFlags without a tag, so its fields sit directly under "flags".
_FLAGS = Struct("Flags", pointers=frozenset({"plugin", "gfd"}), fields={
    "migStrategy": Leaf.STRING, "failOnInitError": Leaf.BOOL, "mpsRoot": Leaf.STRING,
    "nvidiaDriverRoot": Leaf.STRING, "nvidiaDevRoot": Leaf.STRING,
    "gdrcopyEnabled": Leaf.BOOL, "gdsEnabled": Leaf.BOOL, "mofedEnabled": Leaf.BOOL,
    "useNodeFeatureAPI": Leaf.BOOL, "deviceDiscoveryStrategy": Leaf.STRING,
    "plugin": _PLUGIN_FLAGS, "gfd": _GFD_FLAGS})

SCHEMA = Struct("Config", fields={
    "version": Leaf.STRING,
    "flags": _FLAGS,
    "resources": Struct("Resources", fields={"gpus": ListOf(_RESOURCE),
                                             "mig": ListOf(_RESOURCE)}),
    "sharing": Struct("Sharing", pointers=frozenset({"mps"}),
                      fields={"timeSlicing": _REPLICATED_RESOURCES,
                              "mps": _REPLICATED_RESOURCES}),
    "imex": Struct("Imex", fields={"channelIDs": Leaf.INTS, "required": Leaf.BOOL}),
})


def key_paths(node: Node = SCHEMA, prefix: str = "") -> frozenset[str]:
    """Every key path of the schema, ``[]`` standing for "any list item"."""
    out: set[str] = set()
    if isinstance(node, Struct):
        for name, child in node.fields.items():
            path = f"{prefix}.{name}" if prefix else name
            out.add(path)
            out |= key_paths(child, path)
    elif isinstance(node, ListOf):
        out.add(f"{prefix}[]")
        out |= key_paths(node.item, f"{prefix}[]")
    return frozenset(out)


class IssueKind(StrEnum):
    DROPPED = "dropped"  # a key no field takes: the plugin drops it without a word
    SHADOWED = "shadowed"  # another spelling of the same field wins; this one is dropped
    REFUSED = "refused"  # the decoder returns an error: the plugin does not start


class Cause(StrEnum):
    NONE = ""
    TYPE = "type"  # a value of the wrong JSON type
    VALUE = "value"  # the right type, a value the decoder refuses
    MISSING = "missing"  # a key its own decoder requires
    EMPTY = "empty"  # a list its own decoder requires to be non-empty


@dataclass(frozen=True, slots=True)
class Issue:
    kind: IssueKind
    path: str  # as written, with list indices: sharing.mps.resources[0].Replicas
    field: str  # canonical key pattern, "[]" for list items: sharing.mps.resources[].replicas
    detail: str  # what the plugin does or says, in words
    cause: Cause = Cause.NONE
    # Dropped: the field the key would be with the right case; shadowed: the path that wins.
    hint: str | None = None


class _Refused:
    """Stands in ``Decoded.value`` for a value the decoder refused (falsy, like "unset")."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "REFUSED"


REFUSED: Any = _Refused()


@dataclass(frozen=True, slots=True)
class Decoded:
    """What the plugin's ``Config`` holds after parsing, and what parsing said."""

    # Canonical keys; a key written as null is kept as None, a refused value is REFUSED.
    value: Mapping[str, Any]
    issues: tuple[Issue, ...]
    written: Mapping[str, str]  # canonical path with indices → the key path as written

    def refused(self) -> bool:
        return any(i.kind is IssueKind.REFUSED for i in self.issues)


def decode(config: Any) -> Decoded:
    """Model of ``parseConfigFrom`` up to ``yaml.Unmarshal``: see the module docstring."""
    walk = _Walk()
    if config is None:  # an empty file: accepted, all defaults
        return Decoded(value={}, issues=(), written={})
    value = walk.struct(SCHEMA, config, shown="", canon="", pattern="", null_ok=True)
    return Decoded(value=value if isinstance(value, dict) else {}, issues=tuple(walk.issues),
                   written=dict(walk.written))


def go_fold(text: str) -> str:
    """Key text folded as encoding/json compares struct field names (simple case folding).

    ``str.lower`` covers ASCII and the Kelvin sign; Go also folds the long s.
    """
    return text.lower().replace("\u017f", "s")


def go_key_text(key: Any) -> str:
    """A YAML key as sigs.k8s.io/yaml writes it into JSON (booleans as true/false)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key)


def normalize_resource_name(raw: str) -> tuple[str, str | None]:
    """``(full name, error)`` as ``NewResourceName`` gives it (resources.go)."""
    name = raw if raw.startswith(RESOURCE_PREFIX + "/") else f"{RESOURCE_PREFIX}/{raw}"
    if len(name) > MAX_RESOURCE_NAME:
        return name, (f"fully-qualified resource name must be {MAX_RESOURCE_NAME} characters "
                      f"or less: {name}")
    _, _, short = name.partition("/")
    if len(short) > 253 or not _DNS_SUBDOMAIN.fullmatch(short):
        return name, f"incorrect format for resource name '{name}': not a DNS subdomain"
    return name, None


def device_ref_ok(ref: str) -> bool:
    """A GPU index, MIG index ("gpu:mig") or GPU/MIG UUID (replicas.go ReplicatedDeviceRef)."""
    if _is_uint(ref):
        return True
    gpu, sep, mig = ref.partition(":")
    if sep and _is_uint(gpu) and _is_uint(mig):
        return True
    if ref.startswith("GPU-"):
        return _is_uuid(ref[4:])
    if ref.startswith("MIG-"):
        rest = ref[4:]
        if _is_uuid(rest):
            return True
        parts = rest.split("/", 2)
        return (len(parts) == 3 and parts[0].startswith("GPU-") and _is_uuid(parts[0][4:])
                and _is_uint(parts[1]) and _is_uint(parts[2]))
    return False


def json_int(value: Any) -> int | None:
    """The value as an integer the way it reaches Go's JSON decoder, else None.

    sigs.k8s.io/yaml re-encodes a YAML float with a whole value (``2.0``) as
    ``2``, which then decodes into an int.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


# --- the walk ------------------------------------------------------------------------------

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_UINT = re.compile(r"[0-9]+")
_HEX_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                       r"[0-9a-fA-F]{12}")
_GO_DURATION = re.compile(r"[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)")


def _is_uint(text: str) -> bool:
    return bool(_UINT.fullmatch(text)) and int(text) < 2**64


def _is_uuid(text: str) -> bool:
    # The four forms github.com/google/uuid Parse accepts.
    if len(text) == 32:
        return bool(re.fullmatch(r"[0-9a-fA-F]{32}", text))
    if len(text) == 38 and text[0] == "{" and text[-1] == "}":
        text = text[1:-1]
    elif len(text) == 45 and text[:9].lower() == "urn:uuid:":
        text = text[9:]
    return bool(_HEX_UUID.fullmatch(text))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Walk:
    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.written: dict[str, str] = {}

    def refuse(self, shown: str, pattern: str, detail: str, cause: Cause) -> None:
        self.issues.append(Issue(IssueKind.REFUSED, shown, pattern, detail, cause))

    def value(self, node: Node, raw: Any, *, shown: str, canon: str, pattern: str,
              null_ok: bool) -> Any:
        if isinstance(node, Struct):
            return self.struct(node, raw, shown=shown, canon=canon, pattern=pattern,
                               null_ok=null_ok)
        if isinstance(node, ListOf):
            return self.list_of(node, raw, shown=shown, canon=canon, pattern=pattern)
        return self.leaf(node, raw, shown=shown, pattern=pattern)

    def struct(self, node: Struct, raw: Any, *, shown: str, canon: str, pattern: str,
               null_ok: bool) -> Any:
        if raw is None:
            # null: a pointer is left nil and a plain struct untouched, but a type with
            # its own UnmarshalJSON is called with null and finds none of its keys.
            if null_ok or node.match is Match.FOLD:
                return None
            raw = {}
        if not isinstance(raw, Mapping):
            self.refuse(shown, pattern, f"expects a mapping ({node.go_type}), got "
                        f"{_json_type(raw)}", Cause.TYPE)
            return REFUSED
        chosen = self._choose_keys(node, raw, shown=shown, pattern=pattern)
        out: dict[str, Any] = {}
        for name, (key_text, value) in chosen.items():
            key_shown, key_canon = _join(shown, key_text), _join(canon, name)
            self.written[key_canon] = key_shown
            out[name] = self.value(node.fields[name], value, shown=key_shown, canon=key_canon,
                                   pattern=_join(pattern, name),
                                   null_ok=name in node.pointers)
        for name in node.required:
            if name not in chosen:
                self.refuse(_join(shown, name), _join(pattern, name),
                            f"'{name}' is required ({node.go_type} decoder)", Cause.MISSING)
        for name in node.non_empty:
            if name in chosen and not out.get(name) and not self._refused_at(
                    _join(pattern, name)):
                self.refuse(self.written[_join(canon, name)], _join(pattern, name),
                            f"'{name}' is empty ({node.go_type} decoder: "
                            "\"no resources specified\")", Cause.EMPTY)
        for name, default in node.defaults.items():
            out.setdefault(name, default)
        return out

    def _refused_at(self, pattern: str) -> bool:
        return any(i.kind is IssueKind.REFUSED and i.field == pattern for i in self.issues)

    def _choose_keys(self, node: Struct, raw: Mapping[Any, Any], *, shown: str,
                     pattern: str) -> dict[str, tuple[str, Any]]:
        """Field name → (key as written, value) for the key the decoder ends up using."""
        folded = {go_fold(name): name for name in node.fields}
        candidates: dict[str, list[tuple[str, Any]]] = {}
        for key, value in raw.items():
            text = go_key_text(key)
            name = text if text in node.fields else None
            hint = folded.get(go_fold(text))
            if name is None and node.match is Match.FOLD:
                name = hint
            if name is None:
                self.issues.append(Issue(
                    IssueKind.DROPPED, _join(shown, text), _join(pattern, text),
                    f"{node.go_type} has no field '{text}'", hint=hint))
                continue
            candidates.setdefault(name, []).append((text, value))
        chosen: dict[str, tuple[str, Any]] = {}
        for name, found in candidates.items():
            # sigs.k8s.io/yaml re-encodes the mapping with its keys sorted, and
            # encoding/json lets the last key that matches a field win.
            winner = max(found, key=lambda kv: kv[0])
            chosen[name] = winner
            for text, _ in found:
                if text != winner[0]:
                    self.issues.append(Issue(
                        IssueKind.SHADOWED, _join(shown, text), _join(pattern, name),
                        f"'{_join(shown, winner[0])}' sets the same field and wins",
                        hint=_join(shown, winner[0])))
        return chosen

    def list_of(self, node: ListOf, raw: Any, *, shown: str, canon: str,
                pattern: str) -> Any:
        if raw is None:
            return None
        if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
            self.refuse(shown, pattern, f"expects a list, got {_json_type(raw)}", Cause.TYPE)
            return REFUSED
        return [self.value(node.item, item, shown=f"{shown}[{i}]", canon=f"{canon}[{i}]",
                           pattern=f"{pattern}[]", null_ok=False)
                for i, item in enumerate(raw)]

    def leaf(self, kind: Leaf, raw: Any, *, shown: str, pattern: str) -> Any:
        value, problem = _LEAF_CHECKS[kind](raw)
        if problem is None:
            return value
        detail, cause = problem
        self.refuse(shown, pattern, detail, cause)
        return REFUSED


_Check = tuple[Any, tuple[str, Cause] | None]


def _check_string(raw: Any) -> _Check:
    if raw is None or isinstance(raw, str):
        return raw, None
    if isinstance(raw, bool):
        return ("true" if raw else "false"), None
    if isinstance(raw, int | float):
        return str(raw), None
    return raw, (f"expects text, got {_json_type(raw)}", Cause.TYPE)


def _check_bool(raw: Any) -> _Check:
    if raw is None or isinstance(raw, bool):
        return raw, None
    return raw, (f"expects true or false, got {_json_type(raw)} {raw!r}", Cause.TYPE)


def _check_duration(raw: Any) -> _Check:
    if raw is None or (isinstance(raw, int | float) and not isinstance(raw, bool)):
        return raw, None
    if isinstance(raw, str) and _GO_DURATION.fullmatch(raw):
        return raw, None
    return raw, (f"invalid duration {raw!r}", Cause.VALUE)


def _check_strategies(raw: Any) -> _Check:
    if raw is None:
        return None, None
    if isinstance(raw, str):
        return [raw], None
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return list(raw), None
    return raw, (f"invalid deviceListStrategy: {raw!r}", Cause.TYPE)


def _check_ints(raw: Any) -> _Check:
    if raw is None:
        return None, None
    if isinstance(raw, list) and all(json_int(v) is not None for v in raw):
        return [json_int(v) for v in raw], None
    return raw, (f"expects a list of whole numbers, got {raw!r}", Cause.TYPE)


def _check_pattern(raw: Any) -> _Check:
    if raw is None or isinstance(raw, str):
        return raw or "", None
    return raw, (f"expects text, got {_json_type(raw)}", Cause.TYPE)


def _check_resource_name(raw: Any) -> _Check:
    if raw is None:
        raw = ""  # json null leaves the text empty, which NewResourceName refuses
    if not isinstance(raw, str):
        return raw, (f"expects a resource name (text), got {_json_type(raw)}", Cause.TYPE)
    name, error = normalize_resource_name(raw)
    return name, (None if error is None else (error, Cause.VALUE))


def _check_replicas(raw: Any) -> _Check:
    if raw is None:
        raw = 0  # json null leaves the int at 0
    number = json_int(raw)
    if number is None:
        return raw, (f"expects a whole number, got {_json_type(raw)} {raw!r}", Cause.TYPE)
    if number < 2:
        return number, ("number of replicas must be >= 2", Cause.VALUE)
    return number, None


def _check_devices(raw: Any) -> _Check:
    if isinstance(raw, str) or raw is None:  # null reads as the empty text
        if raw == "all":
            return "all", None
        return raw, (f"devices set as '{raw or ''}' but the only valid string input is 'all'",
                     Cause.VALUE)
    count = json_int(raw)
    if count is not None:
        if count <= 0:
            return raw, (f"devices set as '{count}' but a count of devices must be > 0",
                         Cause.VALUE)
        return count, None
    if isinstance(raw, list):
        refs: list[str] = []
        for item in raw:
            index = json_int(item)
            if index is not None and index >= 0:
                refs.append(str(index))
            elif isinstance(item, str) and device_ref_ok(item):
                refs.append(item)
            else:
                return raw, (f"unsupported device in devices list: {item!r}", Cause.VALUE)
        return refs, None
    return raw, (f"unrecognized type for devices spec: {raw!r}", Cause.TYPE)


_LEAF_CHECKS = {
    Leaf.STRING: _check_string, Leaf.BOOL: _check_bool, Leaf.DURATION: _check_duration,
    Leaf.STRATEGIES: _check_strategies, Leaf.INTS: _check_ints, Leaf.PATTERN: _check_pattern,
    Leaf.RESOURCE_NAME: _check_resource_name, Leaf.REPLICAS: _check_replicas,
    Leaf.DEVICES: _check_devices,
}

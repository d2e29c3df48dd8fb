"""Batch uploads of placement requests (YAML or CSV), validated all-or-nothing.

Why: an upload is the one input an operator hands the console in bulk, so it
is where a hostile or careless file does the most harm (the 436-byte YAML
alias bomb of issue 11 took 38 s and 3.35 GB). The invariants:

- **Bounded before parsed.** A file over ``UploadLimits.max_bytes`` is refused
  before it is decoded; YAML is composed by a guarded loader that refuses
  anchors and aliases (naming the line), more than ``max_yaml_nodes`` nodes,
  nesting deeper than ``MAX_YAML_DEPTH`` and scalars longer than
  ``MAX_SCALAR_CHARS``, all before a single Python object is constructed; a
  file with more than ``max_rows`` requests is refused. Work and memory are
  therefore linear in the byte budget.
- **All or nothing.** Every row is validated before anything is returned: one
  bad row refuses the whole batch, so nothing half is ever enqueued.
- **One row numbering.** ``row N`` always means the N-th request of the file,
  counted from 1 (in a CSV the first line under the header is row 1), and
  every row error says so (``ROW_NUMBERING``).
- A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from core.errors import ValidationError
from core.model import MAX_LABELS, REQUEST_FIELDS, PlacementRequest
from core.validate import integer, show

MIB = 1024 * 1024
ROW_NUMBERING = "rows are the requests counted from 1; a CSV's header line is not a row"
# {requests: [{labels: {key: value}}]} nests 5 deep; a little room, nothing more.
MAX_YAML_DEPTH = 8
# Longer than any value a request can hold (a label key is at most 317 characters).
MAX_SCALAR_CHARS = 4096
# YAML nodes one request can need: its mapping, each field's key and value, and a
# key and value per label.
NODES_PER_ROW = 1 + 2 * (len(REQUEST_FIELDS) + MAX_LABELS)
_LABEL_PREFIX = "label."
_BOM = "\ufeff"


@dataclass(frozen=True)
class UploadLimits:
    """The ``[uploads]`` settings: how big a batch upload may be."""

    max_bytes: int = MIB
    max_rows: int = 1000

    def __post_init__(self) -> None:
        size = integer("uploads.max_bytes", self.max_bytes)
        if not 1 <= size <= 64 * MIB:
            raise ValidationError("uploads.max_bytes", f"must be within 1..{64 * MIB} bytes")
        rows = integer("uploads.max_rows", self.max_rows)
        if not 1 <= rows <= 100_000:
            raise ValidationError("uploads.max_rows", "must be within 1..100000")
        object.__setattr__(self, "max_bytes", size)
        object.__setattr__(self, "max_rows", rows)

    @property
    def max_yaml_nodes(self) -> int:
        """The node budget of a YAML upload (a top-level mapping and list, and the rows)."""
        return 3 + self.max_rows * NODES_PER_ROW

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> UploadLimits:
        """From the ``[uploads]`` table; unknown keys are refused, naming the key."""
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise ValidationError(f"uploads.{key}", "unknown setting; expected one of "
                                                        f"{', '.join(sorted(known))}")
        return cls(**dict(raw))


def _cut(name: str) -> str:
    return name if len(name) <= 40 else name[:40] + "…"


class _Refused(yaml.YAMLError):
    """The guarded composer's refusal; carries the operator's message."""


class _GuardedComposer(Composer):
    """A composer that refuses anchors, aliases and oversized documents while composing.

    Composition (events to nodes) happens before construction (nodes to
    Python objects), so nothing is built from a document this refuses.
    """

    node_budget = 0

    def _init_guard(self) -> None:
        Composer.__init__(self)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"uses an alias (*{_cut(event.anchor)}) at line {line}: "
                           "anchors and aliases are not accepted in uploads, write each "
                           "value out")
        if getattr(event, "anchor", None) is not None:
            raise _Refused(f"defines an anchor (&{_cut(event.anchor)}) at line {line}: "
                           "anchors and aliases are not accepted in uploads, write each "
                           "value out")
        self._nodes += 1
        if self._nodes > self.node_budget:
            raise _Refused(f"holds more than {self.node_budget} YAML values (at line {line}); "
                           "split the batch")
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise _Refused(f"holds a value longer than {MAX_SCALAR_CHARS} characters at "
                           f"line {line}")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(f"nests deeper than {MAX_YAML_DEPTH} levels at line {line}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PyLoader(Reader, Scanner, Parser, _GuardedComposer, SafeConstructor, Resolver):
    """PyYAML's pure-Python parser under the guarded composer."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        self._init_guard()
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


_Loader: type[_GuardedComposer] = _PyLoader
if getattr(yaml, "__with_libyaml__", False):
    from yaml.cyaml import CParser

    class _CLoader(_GuardedComposer, CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """libyaml's parser (events in C, about 5x faster) under the guarded composer."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            self._init_guard()
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _Loader = _CLoader


def load_yaml(text: str, *, node_budget: int, loader_class: type | None = None) -> Any:
    """One YAML document, safely: no anchors or aliases, at most ``node_budget`` nodes.

    Raises ``ValidationError("file", …)`` naming the line where it can.
    ``loader_class`` picks the parser (tests run both; libyaml's when present).
    """
    loader = (loader_class or _Loader)(text)
    loader.node_budget = node_budget
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise ValidationError("file", str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValidationError("file", f"is not valid YAML{where}") from None
    except (ValueError, OverflowError, TypeError, RecursionError):
        # A scalar the constructor cannot build (a date like 2024-13-45).
        raise ValidationError("file", "is not valid YAML: a value cannot be read") from None
    finally:
        loader.dispose()


def _decoded(data: bytes | str, limits: UploadLimits) -> str:
    """The upload as text, its size checked first and a byte-order mark dropped."""
    at_least = ""
    if isinstance(data, str):
        size = len(data)  # characters ≤ UTF-8 bytes ≤ 4 × characters
        if size <= limits.max_bytes < 4 * size:
            size = len(data.encode("utf-8"))
        elif size > limits.max_bytes:
            at_least = " at least"
    elif isinstance(data, bytes | bytearray):
        size = len(data)
    else:
        raise ValidationError("file", "must be text or bytes")
    if size > limits.max_bytes:
        raise ValidationError("file", f"is larger than {limits.max_bytes:,} bytes, the most "
                                      f"an upload may hold (setting uploads.max_bytes; this one "
                                      f"has{at_least} {size:,}): split the batch")
    if isinstance(data, str):
        return data.removeprefix(_BOM)
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError("file", f"is not UTF-8 text (byte {exc.start}): save it as "
                                      "UTF-8 and upload again") from None


def _rows_from_yaml(text: str, limits: UploadLimits) -> list[Any]:
    data = load_yaml(text, node_budget=limits.max_yaml_nodes)
    if isinstance(data, Mapping):
        extra = [k for k in data if k != "requests"]
        if extra:
            raise ValidationError("file", f"a YAML mapping may hold only 'requests', not "
                                          f"{show(extra[0])}")
        data = data.get("requests")
    if not isinstance(data, list):
        raise ValidationError("file", "YAML must be a list of requests (or {requests: [...]})")
    return data


def _check_header(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValidationError("header", "has an empty column name")
        if name in seen:
            raise ValidationError("header", f"names the column {show(name)} twice")
        seen.add(name)
        if name in REQUEST_FIELDS and name != "labels":
            continue
        if name.startswith(_LABEL_PREFIX) and len(name) > len(_LABEL_PREFIX):
            continue
        raise ValidationError("header", f"unknown column {show(name)}; expected "
                                        f"{', '.join(f for f in REQUEST_FIELDS if f != 'labels')}"
                                        f" or {_LABEL_PREFIX}<key>")


def _rows_from_csv(text: str, limits: UploadLimits) -> list[Any]:
    reader = csv.DictReader(io.StringIO(text))
    rows: list[Any] = []
    try:
        if not reader.fieldnames:
            raise ValidationError("file", "CSV has no header row")
        _check_header(list(reader.fieldnames))
        for row in reader:
            n = len(rows) + 1
            if n > limits.max_rows:
                raise _too_many_rows(limits)
            if None in row:
                raise ValidationError(f"row {n}", f"has more cells than the header "
                                                  f"({ROW_NUMBERING})")
            labels = {}
            for key in [k for k in row if k.startswith(_LABEL_PREFIX)]:
                if row[key]:
                    labels[key[len(_LABEL_PREFIX):]] = row[key]
                del row[key]
            clean: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
            if labels:
                clean["labels"] = labels
            rows.append(clean)
    except csv.Error as exc:
        raise ValidationError(f"row {len(rows) + 1}", f"cannot be read as CSV: {exc} "
                                                      f"({ROW_NUMBERING})") from None
    return rows


def _too_many_rows(limits: UploadLimits) -> ValidationError:
    return ValidationError("file", f"holds more than {limits.max_rows:,} requests, the most "
                                   "an upload may hold (setting uploads.max_rows): split the "
                                   "batch")


def parse_batch(data: bytes | str, *, kind: str, max_gpu_memory_gb: float | None = None,
                limits: UploadLimits | None = None) -> list[PlacementRequest]:
    """Requests from a YAML or CSV upload; raises ``ValidationError`` naming row and field.

    ``data`` is the file as uploaded (bytes) or already decoded; ``limits``
    bound its size and rows (``UploadLimits()`` when not given). Errors of one
    request name it as ``row N: <field>`` (see ``ROW_NUMBERING``).
    """
    limits = limits or UploadLimits()
    if kind not in ("yaml", "csv"):
        raise ValidationError("file", "must be .yaml, .yml or .csv")
    text = _decoded(data, limits)
    rows = _rows_from_yaml(text, limits) if kind == "yaml" else _rows_from_csv(text, limits)
    if not rows:
        raise ValidationError("file", "holds no requests")
    if len(rows) > limits.max_rows:
        raise _too_many_rows(limits)
    out = []
    for n, raw in enumerate(rows, start=1):
        try:
            out.append(PlacementRequest.parse(raw, max_gpu_memory_gb=max_gpu_memory_gb))
        except ValidationError as exc:
            raise ValidationError(f"row {n}: {exc.field}",
                                  f"{exc.message} ({ROW_NUMBERING})") from None
    first_row: dict[str, int] = {}
    for n, request in enumerate(out, start=1):
        if not request.request_id:
            continue
        if request.request_id in first_row:
            raise ValidationError(f"row {n}: request_id",
                                  f"{show(request.request_id)} appears more than once in the "
                                  f"batch (first in row {first_row[request.request_id]}; "
                                  f"{ROW_NUMBERING})")
        first_row[request.request_id] = n
    return out

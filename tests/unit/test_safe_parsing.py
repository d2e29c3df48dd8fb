"""Safe parsing of uploads and requests (issue 11, item 3): hostile input costs nothing."""

from __future__ import annotations

import itertools
import time
import tracemalloc
from typing import Any

import pytest
import yaml

from core import batch
from core.adapters.settings_source import load_settings
from core.batch import ROW_NUMBERING, UploadLimits, load_yaml, parse_batch
from core.errors import ValidationError
from core.model import MAX_LABELS, PlacementRequest

GOOD = {"model_name": "llama-7b", "model_memory_gb": 8, "priority": "HIGH",
        "latency_sla_ms": 100}
HEADER = "model_name,model_memory_gb,priority,latency_sla_ms"


def alias_bomb() -> str:
    """Nested aliases, 9 levels of 9: 9**9 (387 million) leaves behind one request field."""
    names = "abcdefghi"
    text = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
    for prev, cur in itertools.pairwise(names):
        text += f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    text += ("requests:\n- {model_name: bomb, model_memory_gb: *i, priority: LOW, "
             "latency_sla_ms: *i}\n")
    return text


def leaves(node: Any, memo: dict[int, int] | None = None) -> int:
    """Leaves of a structure with shared parts, counted without expanding it."""
    memo = {} if memo is None else memo
    if not isinstance(node, list | dict):
        return 1
    if id(node) not in memo:
        children = node.values() if isinstance(node, dict) else node
        memo[id(node)] = sum(leaves(c, memo) for c in children)
    return memo[id(node)]


def csv_rows(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


# --- the alias bomb -----------------------------------------------------------------------


def test_the_alias_bomb_is_a_bomb() -> None:
    # The test input is what the issue describes: a few hundred bytes, hundreds of millions
    # of values once expanded (plain safe_load shares the nodes, so this stays cheap).
    text = alias_bomb()
    assert len(text.encode()) <= 436
    assert leaves(yaml.safe_load(text)["i"]) == 9 ** 9


def test_the_alias_bomb_upload_is_refused_before_construction_with_memory_flat() -> None:
    text = alias_bomb()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ValidationError) as err:
            parse_batch(text.encode(), kind="yaml", max_gpu_memory_gb=80)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert err.value.field == "file"
    assert "anchor (&a) at line 1" in err.value.message
    assert "anchors and aliases are not accepted" in err.value.message
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"
    print(f"alias bomb refused in {elapsed * 1000:.1f} ms, tracemalloc peak {peak} bytes")


@pytest.mark.parametrize("loader", [batch._PyLoader, getattr(batch, "_CLoader", batch._PyLoader)])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- &base {a: 1}\n- *base\n", "anchor (&base) at line 1"),
        ("- {a: 1}\n- *nowhere\n", "alias (*nowhere) at line 2"),
        ("x: 1\ny:\n  <<: *base\n", "alias (*base) at line 3"),
        ("- !!str &tagged x\n", "anchor (&tagged) at line 1"),
    ],
)
def test_anchors_and_aliases_are_refused_naming_the_line(loader: type, text: str,
                                                         expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_yaml(text, node_budget=100, loader_class=loader)
    assert expected in err.value.message


@pytest.mark.parametrize("loader", [batch._PyLoader, getattr(batch, "_CLoader", batch._PyLoader)])
def test_both_loaders_read_plain_yaml_alike(loader: type) -> None:
    text = "requests:\n- {model_name: a, labels: {team: x}, sla: 1.5, on: true}\n"
    assert load_yaml(text, node_budget=100, loader_class=loader) == yaml.safe_load(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[" + ",".join(["1"] * 200) + "]\n", "more than 100 YAML values"),
        ("[" * 12 + "]" * 12 + "\n", "nests deeper than 8 levels"),
        ("a: " + "9" * 5000 + "\n", "longer than 4096 characters"),
        ("a: 2024-13-45\n", "a value cannot be read"),
        ("a: [unclosed\n", "is not valid YAML at line"),
    ],
)
def test_yaml_beyond_the_budget_or_unreadable_is_refused_as_a_validation_error(
        text: str, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_yaml(text, node_budget=100)
    assert err.value.field == "file" and expected in err.value.message


def test_the_node_budget_follows_the_row_limit() -> None:
    limits = UploadLimits(max_rows=2)
    row = ("- {model_name: a, model_memory_gb: 1, priority: LOW, latency_sla_ms: 1, labels: {"
           + ", ".join(f"k{i}: v" for i in range(MAX_LABELS)) + "}}\n")
    assert len(parse_batch(row.replace("a,", "a, request_id: r1,") +
                           row.replace("a,", "a, request_id: r2,"),
                           kind="yaml", limits=limits)) == 2
    flood = "- [" + ",".join(["1"] * limits.max_yaml_nodes) + "]\n"
    with pytest.raises(ValidationError, match="YAML values"):
        parse_batch(flood, kind="yaml", limits=limits)


# --- size and row limits ------------------------------------------------------------------


def test_uploads_over_the_byte_limit_are_refused_before_parsing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("an oversized upload was parsed")

    monkeypatch.setattr(batch, "load_yaml", never)
    monkeypatch.setattr(batch.csv, "DictReader", never)
    limits = UploadLimits(max_bytes=1000)
    for kind in ("yaml", "csv"):
        for data in (b"x" * 1001, "é" * 501):  # bytes, and text of 1002 UTF-8 bytes
            with pytest.raises(ValidationError) as err:
                parse_batch(data, kind=kind, limits=limits)
            assert err.value.field == "file"
            assert "larger than 1,000 bytes" in err.value.message
            assert "uploads.max_bytes" in err.value.message


def test_uploads_over_the_row_limit_are_refused_and_at_the_limit_accepted() -> None:
    limits = UploadLimits(max_rows=3)
    rows = [f"m{i},1,LOW,100" for i in range(4)]
    assert len(parse_batch(csv_rows(*rows[:3]), kind="csv", limits=limits)) == 3
    with pytest.raises(ValidationError) as err:
        parse_batch(csv_rows(*rows), kind="csv", limits=limits)
    assert err.value.field == "file" and "more than 3 requests" in err.value.message
    yaml_rows = "".join(f"- {{model_name: m{i}, model_memory_gb: 1, priority: LOW, "
                        f"latency_sla_ms: 1}}\n" for i in range(4))
    with pytest.raises(ValidationError, match=r"uploads\.max_rows"):
        parse_batch(yaml_rows, kind="yaml", limits=limits)


def test_upload_limits_come_from_the_uploads_settings() -> None:
    defaults = load_settings(env={}).uploads
    assert (defaults.max_bytes, defaults.max_rows) == (1024 * 1024, 1000)
    tuned = load_settings(env={"GSC__UPLOADS__MAX_ROWS": "2", "GSC__UPLOADS__MAX_BYTES": "4096"})
    assert tuned.uploads == UploadLimits(max_bytes=4096, max_rows=2)
    with pytest.raises(ValidationError, match="more than 2 requests"):
        parse_batch(csv_rows("a,1,LOW,1", "b,1,LOW,1", "c,1,LOW,1"), kind="csv",
                    limits=tuned.uploads)
    for env, field in [({"GSC__UPLOADS__MAX_ROWS": "0"}, "uploads.max_rows"),
                       ({"GSC__UPLOADS__MAX_BYTES": "1.5"}, "uploads.max_bytes"),
                       ({"GSC__UPLOADS__MAX_FILES": "3"}, "uploads.max_files")]:
        with pytest.raises(ValidationError) as err:
            load_settings(env=env)
        assert err.value.field == field


# --- encoding and row numbering -----------------------------------------------------------


def test_a_utf8_byte_order_mark_is_accepted() -> None:
    bom = b"\xef\xbb\xbf"
    csv_text = csv_rows("mistral-7b,8,MEDIUM,300")
    assert parse_batch(bom + csv_text.encode(), kind="csv")[0].model_name == "mistral-7b"
    assert parse_batch("\ufeff" + csv_text, kind="csv")[0].model_name == "mistral-7b"
    yaml_text = "- {model_name: phi-2, model_memory_gb: 2, priority: LOW, latency_sla_ms: 9}\n"
    assert parse_batch(bom + yaml_text.encode(), kind="yaml")[0].model_name == "phi-2"


def test_text_that_is_not_utf8_is_refused_naming_the_byte() -> None:
    with pytest.raises(ValidationError) as err:
        parse_batch(HEADER.encode() + b"\nm\xff,1,LOW,1\n", kind="csv")
    assert err.value.field == "file" and "not UTF-8 text (byte" in err.value.message


@pytest.mark.parametrize(
    ("text", "kind", "field"),
    [
        (csv_rows("a,1,LOW,1", "b,1,LOW,1", "c,1,SOMETIMES,1"), "csv", "row 3: priority"),
        (csv_rows("a,1,LOW,1", "b,1,LOW,1,extra"), "csv", "row 2"),
        # A cell beyond the csv module's field limit (128 Ki characters).
        (csv_rows("a,1,LOW,1", "b," + "1" * 200_000 + ",LOW,1"), "csv", "row 2"),
        ("- {model_name: a, model_memory_gb: 1, priority: LOW, latency_sla_ms: 1}\n"
         "- {model_name: b, model_memory_gb: 1, priority: LOW, latency_sla_ms: -1}\n",
         "yaml", "row 2: latency_sla_ms"),
        # A quoted cell spanning lines: row 2 is still the second request, not a file line.
        (csv_rows('a,1,LOW,"1"', '"b\nc",1,LOW,1'), "csv", "row 2: model_name"),
    ],
)
def test_every_row_error_counts_requests_from_one_and_says_so(text: str, kind: str,
                                                              field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_batch(text, kind=kind)
    assert err.value.field == field
    assert ROW_NUMBERING in err.value.message


def test_a_duplicate_request_id_names_both_rows() -> None:
    text = csv_rows().replace(HEADER, HEADER + ",request_id") + \
        "a,1,LOW,1,x\nb,1,LOW,1,y\nc,1,LOW,1,x\n"
    with pytest.raises(ValidationError) as err:
        parse_batch(text, kind="csv")
    assert err.value.field == "row 3: request_id"
    assert "first in row 1" in err.value.message and ROW_NUMBERING in err.value.message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (HEADER + ",expected_qsp", "unknown column 'expected_qsp'"),
        (HEADER + ",priority", "names the column 'priority' twice"),
        (HEADER + ",labels", "unknown column 'labels'"),
        (HEADER + ",", "empty column name"),
    ],
)
def test_a_bad_csv_header_is_refused_naming_the_column(header: str, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_batch(header + "\na,1,LOW,1\n", kind="csv")
    assert err.value.field == "header" and expected in err.value.message


def test_a_yaml_mapping_holds_only_requests() -> None:
    with pytest.raises(ValidationError, match="only 'requests'"):
        parse_batch("requests: []\nextra: 1\n", kind="yaml")


# --- sizes that cannot be a slice, or can never fit ---------------------------------------


def test_sizes_below_one_mib_are_refused() -> None:
    for gb in (1e-10, 0.0009, "0.0005"):
        with pytest.raises(ValidationError) as err:
            PlacementRequest.parse({**GOOD, "model_memory_gb": gb})
        assert err.value.field == "model_memory_gb" and "below 1 MiB" in err.value.message
    assert PlacementRequest.parse({**GOOD, "model_memory_gb": 1 / 1024}).memory_mib == 1
    with pytest.raises(ValidationError, match="below 1 MiB"):
        PlacementRequest(model_name="m", model_memory_gb=1e-10, priority=GOOD_PRIORITY,
                         latency_sla_ms=1)


GOOD_PRIORITY = PlacementRequest.parse(GOOD).priority


def test_a_batch_with_a_request_larger_than_every_gpu_is_refused_whole() -> None:
    max_gb = load_settings(env={}).catalog.max_memory_gb
    with pytest.raises(ValidationError) as err:
        parse_batch(csv_rows("a,8,LOW,1", "b,81,LOW,1"), kind="csv", max_gpu_memory_gb=max_gb)
    assert err.value.field == "row 2: model_memory_gb"
    assert "larger than the largest GPU (80 GB)" in err.value.message


# --- values type-checked before anything is computed from them -----------------------------


class Hostile:
    """A value no parser may print, convert or format."""

    def __repr__(self) -> str:
        raise AssertionError("repr() of an untrusted value")

    __str__ = __format__ = __float__ = __int__ = __index__ = __repr__  # type: ignore[assignment]


class HostileList(list):  # type: ignore[type-arg]
    def __repr__(self) -> str:
        raise AssertionError("repr() of an untrusted list")

    __str__ = __repr__


class HostileDict(dict):  # type: ignore[type-arg]
    def __repr__(self) -> str:
        raise AssertionError("repr() of an untrusted mapping")

    __str__ = __repr__


SCALAR_FIELDS = ("model_name", "model_memory_gb", "priority", "latency_sla_ms",
                 "expected_qps", "batch_size", "namespace", "request_id")


@pytest.mark.parametrize("name", SCALAR_FIELDS)
@pytest.mark.parametrize("value", [HostileList([1, 2]), HostileDict(a=1), Hostile(),
                                   [[[0] * 1000] * 1000] * 1000])
def test_a_container_where_a_scalar_belongs_is_refused_without_printing_it(
        name: str, value: Any) -> None:
    with pytest.raises(ValidationError) as err:
        PlacementRequest.parse({**GOOD, name: value})
    assert err.value.field == name
    assert len(err.value.message) < 120


def test_hostile_labels_are_refused_naming_the_label() -> None:
    cases: list[tuple[Any, str, str]] = [
        (HostileList(), "labels", "must be a mapping"),
        ({"team": HostileDict(a=1)}, "labels.team", "must be text, not a mapping"),
        ({"team": Hostile()}, "labels.team", "must be text"),
        ({("a", "b"): "x"}, "labels", "keys must be text"),
        ({"k" * 10_000: "x"}, "labels", "longer than 317 characters"),
        ({"team": "v" * 64}, "labels.team", "longer than 63 characters"),
        ({f"k{i}": "v" for i in range(MAX_LABELS + 1)}, "labels",
         f"at most {MAX_LABELS}"),
        ({"team": 10 ** 400}, "labels.team", "must be text"),
    ]
    for labels, field, message in cases:
        with pytest.raises(ValidationError) as err:
            PlacementRequest.parse({**GOOD, "labels": labels})
        assert (err.value.field, message in err.value.message) == (field, True), labels
        assert len(str(err.value)) < 200
    parsed = PlacementRequest.parse({**GOOD, "labels": {"version": 2, "team": "x"}})
    assert dict(parsed.labels) == {"version": "2", "team": "x"}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({1: "x"}, "request", "field name that is not one of"),
        ({1: "x", "extra": 2}, "request", "field name"),
        ({"x" * 10_000: 1}, "request", "… (10000 characters)"),
        ({"model_memory_gb": 10 ** 400}, "model_memory_gb", "too large"),
        ({"model_memory_gb": "9" * 10_000}, "model_memory_gb", "… (10000 characters)"),
        ({"priority": "P" * 10_000}, "priority", "longer than 64 characters"),
        ({"model_name": "m" * 10_000}, "model_name", "longer than 253 characters"),
        ({"request_id": "r" * 129}, "request_id", "longer than 128 characters"),
        ({"request_id": "two words"}, "request_id", "without spaces"),
        ({"model_name": 7}, "model_name", "must be text, not a number"),
    ],
)
def test_oversized_or_mistyped_values_are_refused_with_a_short_message(
        change: dict[Any, Any], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        PlacementRequest.parse({**GOOD, **change})
    assert err.value.field == field and message in err.value.message
    assert len(str(err.value)) < 250

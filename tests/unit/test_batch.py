from __future__ import annotations

import pytest

from core.batch import parse_batch
from core.errors import ValidationError
from core.model import Priority

YAML = """
requests:
  - {model_name: llama-2-13b, model_memory_gb: 13, priority: HIGH, latency_sla_ms: 200}
  - model_name: phi-2
    model_memory_gb: 2.5
    priority: low
    latency_sla_ms: 1000
    labels: {team: search}
"""

CSV = """model_name,model_memory_gb,priority,latency_sla_ms,expected_qps,label.team
mistral-7b,8,MEDIUM,300,12,ads
gemma-2b,2.5,LOW,900,,
"""


def test_yaml_batch_is_parsed_into_requests() -> None:
    batch = parse_batch(YAML, kind="yaml")
    assert [r.model_name for r in batch] == ["llama-2-13b", "phi-2"]
    assert batch[1].priority is Priority.LOW and dict(batch[1].labels) == {"team": "search"}


def test_csv_batch_with_label_columns_and_empty_cells() -> None:
    batch = parse_batch(CSV, kind="csv")
    assert batch[0].expected_qps == 12.0 and dict(batch[0].labels) == {"team": "ads"}
    assert batch[1].expected_qps is None and dict(batch[1].labels) == {}


@pytest.mark.parametrize(
    ("text", "kind", "field"),
    [
        ("- {model_name: a, model_memory_gb: -1, priority: LOW, latency_sla_ms: 1}", "yaml",
         "row 1: model_memory_gb"),
        (CSV.replace("gemma-2b,2.5,LOW", "gemma-2b,2.5,SOMETIMES"), "csv", "row 2: priority"),
        ("requests: [unclosed", "yaml", "file"),
        ("just a string", "yaml", "file"),
        ("", "csv", "file"),
        ("model_name,model_memory_gb\nx,1,extra\n", "csv", "row 1"),
        ("- {model_name: big, model_memory_gb: 99, priority: LOW, latency_sla_ms: 1}", "yaml",
         "row 1: model_memory_gb"),
    ],
)
def test_a_bad_batch_is_refused_whole_naming_row_and_field(text: str, kind: str,
                                                            field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_batch(text, kind=kind, max_gpu_memory_gb=80)
    assert err.value.field == field


def test_duplicate_request_ids_in_one_batch_are_refused() -> None:
    text = ("- {model_name: a, model_memory_gb: 1, priority: LOW, latency_sla_ms: 1, "
            "request_id: x}\n") * 2
    with pytest.raises(ValidationError, match="more than once"):
        parse_batch(text, kind="yaml")

from __future__ import annotations

import pytest

from core.model import WorkloadClass
from core.settings import Settings


@pytest.mark.parametrize(
    ("gb", "expected", "share", "preferred"),
    [
        (0.5, WorkloadClass.TINY, 25, "A100"),
        (3.999, WorkloadClass.TINY, 25, "A100"),
        (4.0, WorkloadClass.MEDIUM, 50, "A100"),  # 4 GB is medium: tiny is strictly below
        (8.0, WorkloadClass.MEDIUM, 50, "A100"),
        (16.0, WorkloadClass.MEDIUM, 50, "A100"),  # 16 inclusive
        (16.001, WorkloadClass.LARGE, 100, "H100"),
        (40.0, WorkloadClass.LARGE, 100, "H100"),
    ],
)
def test_classification_boundaries_are_exactly_as_specified(
    settings: Settings, gb: float, expected: WorkloadClass, share: int, preferred: str
) -> None:
    policy = settings.classes.classify(gb)
    assert policy.workload_class is expected
    assert policy.share_pct == share
    assert policy.preferred_type == preferred

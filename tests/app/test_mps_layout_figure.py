"""The MPS layout picture marks the replica slots a device-plugin config gives each GPU."""

from __future__ import annotations

from app.widgets.mps import layout_figure
from core.model import Gpu
from core.mps.layout import GpuLayout


def _layouts() -> list[GpuLayout]:
    return [GpuLayout.from_gpu("a100-0", Gpu(index=i, gpu_type="A100", memory_total_mib=81920))
            for i in range(2)]


def test_mps_4_draws_three_dotted_slot_lines_across_the_picture() -> None:
    fig = layout_figure(_layouts(), title="a100-0", config="mps-4")
    lines = [s for s in fig.layout.shapes if s.type == "line" and s.line.dash == "dot"]
    assert sorted(s.x0 for s in lines) == [25.0, 50.0, 75.0]
    assert all(s.yref == "paper" and (s.y0, s.y1) == (0, 1) for s in lines)
    assert fig.layout.title.text == "a100-0"


def test_exclusive_and_dra_draw_no_slot_lines() -> None:
    for config in ("exclusive", "dra", None):
        fig = layout_figure(_layouts(), title="n", config=config)
        assert not [s for s in fig.layout.shapes if s.line.dash == "dot"]

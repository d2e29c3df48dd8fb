"""Cost (SPEC §3.8, corrected): one formula, the ledger built on it, and its reports.

Why a package: ``formula`` holds the one rule every consumer prices the fleet
with (the Overview, the monitor's series, the autoscaler, feedback, the
placement-quality replay); ``ledger`` books it per interval and hour;
``report`` groups the ledger and writes CSV. The fleet pays for every GPU that
hosts at least one model server, whole, plus energy; the unallocated share of
a GPU in use is its own idle line, counted in the totals; a GPU hosting nothing
costs nothing. Pure: no I/O, no clock. Names are re-exported here so callers
import from ``core.cost``.
"""

from core.cost.formula import (
    HOUR_S,
    IDLE_MODEL,
    JOULES_PER_KWH,
    NANO,
    FleetCost,
    GpuCost,
    Prices,
    SliceCost,
    fleet_cost,
    gpu_cost,
    hourly_gpu_cost,
    per_inference,
    slice_costs,
    split_exact,
    sum_slice_costs,
    usd,
)
from core.cost.ledger import (
    CostAccountant,
    CostAmounts,
    CostLine,
    LineKey,
    accumulate,
    day_of,
    hour_of,
    merge_lines,
)
from core.cost.report import (
    DIMENSIONS,
    REPORT_FIGURES,
    UNALLOCATED,
    Cell,
    CostGroup,
    check_dimensions,
    dimension_value,
    filter_groups,
    group_lines,
    neutralize,
    report_columns,
    report_rows,
    to_csv,
    total,
)

__all__ = [
    "DIMENSIONS", "HOUR_S", "IDLE_MODEL", "JOULES_PER_KWH", "NANO", "REPORT_FIGURES",
    "UNALLOCATED", "Cell", "CostAccountant", "CostAmounts", "CostGroup", "CostLine",
    "FleetCost", "GpuCost", "LineKey", "Prices", "SliceCost", "accumulate",
    "check_dimensions", "day_of", "dimension_value", "filter_groups", "fleet_cost",
    "gpu_cost", "group_lines", "hour_of", "hourly_gpu_cost", "merge_lines", "neutralize",
    "per_inference", "report_columns", "report_rows", "slice_costs", "split_exact",
    "sum_slice_costs", "to_csv", "total", "usd",
]

"""The snapshot's reservation columns live in one block copied once per reservation: every
earlier ``Columns`` keeps the values it had, each column keeps its dtype, and columns a
caller replaced from outside are still what a reservation starts from."""

from __future__ import annotations

import dataclasses

import numpy as np

from core.adapters.settings_source import load_settings
from core.fleet import synthetic_fleet
from core.model import MpsSlice
from core.placement import FleetSnapshot
from core.placement.snapshot import Columns

SETTINGS = load_settings(env={})
CAT, RULES = SETTINGS.catalog, SETTINGS.classes
CHANGING = ("mem_free", "share_free", "clients", "replicas_free", "inv_share_free")


def fleet() -> FleetSnapshot:
    return FleetSnapshot(synthetic_fleet(CAT, RULES, gpus=64, seed=11), CAT)


def roomy(snap: FleetSnapshot) -> list[int]:
    c = snap.cols
    return [r for r in range(snap.size) if c.available[r] and c.share_free[r] >= 30
            and c.mem_free[r] >= 8192 and c.clients[r] < 8 and c.replicas_free[r] > 1]


def frozen(cols: Columns) -> dict[str, np.ndarray]:
    return {f.name: getattr(cols, f.name).copy() for f in dataclasses.fields(Columns)}


def test_every_earlier_columns_keeps_its_values_through_reserve_and_unreserve() -> None:
    snap = fleet()
    seen: list[tuple[Columns, dict[str, np.ndarray]]] = [(snap.cols, frozen(snap.cols))]
    rows = roomy(snap)[:6]
    assert len(rows) == 6
    for i, row in enumerate(rows):
        snap.reserve(row, MpsSlice(owner=f"o{i}", thread_pct=10, memory_mib=1024))
        seen.append((snap.cols, frozen(snap.cols)))
    for i in range(len(rows)):
        assert snap.unreserve(f"o{i}")
        seen.append((snap.cols, frozen(snap.cols)))
    for cols, values in seen:
        for name, value in values.items():
            assert np.array_equal(getattr(cols, name), value), name
    first, last = seen[0][1], seen[-1][1]
    for name in CHANGING:
        assert np.array_equal(first[name], last[name]), name


def test_a_reservation_changes_its_row_only_and_keeps_the_dtypes() -> None:
    snap = fleet()
    before = frozen(snap.cols)
    row = roomy(snap)[0]
    snap.reserve(row, MpsSlice(owner="o", thread_pct=25, memory_mib=2048))
    c = snap.cols
    assert c.mem_free[row] == before["mem_free"][row] - 2048
    assert c.share_free[row] == before["share_free"][row] - 25
    assert c.clients[row] == before["clients"][row] + 1
    assert c.replicas_free[row] == before["replicas_free"][row] - 1
    assert c.inv_share_free[row] == 10.0 / max(int(c.share_free[row]), 1)
    for name in CHANGING:
        others = np.arange(snap.size) != row
        assert np.array_equal(getattr(c, name)[others], before[name][others]), name
        assert getattr(c, name).dtype == before[name].dtype, name


def test_columns_replaced_from_outside_are_what_the_next_reservation_starts_from() -> None:
    snap = fleet()
    row = roomy(snap)[0]
    mem = snap.cols.mem_free.copy()
    mem[row] = 4096
    snap.cols = dataclasses.replace(snap.cols, mem_free=mem)
    snap.reserve(row, MpsSlice(owner="o", thread_pct=10, memory_mib=1024))
    assert snap.cols.mem_free[row] == 3072
    assert mem[row] == 4096  # the replaced column itself is not written to
    assert snap.unreserve("o")
    assert snap.cols.mem_free[row] == 4096

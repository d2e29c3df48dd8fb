"""The MPS planner: which nodes need another device-plugin config, and what it costs.

Why: placement binds only into the replicas a node's running config advertises
(SPEC §4.1), and the device plugin splits every GPU of a node into equal
replicas (SPEC §3.4). A node whose config does not serve its layout — a large
model capped at 25 % of threads and 20 GB under ``mps-4``, three clients on a
config that advertises two, a requested workload that no node's replicas can
take — needs a reconfiguration, which is a rollout plan. The planner says
which, per node: the layout before and after (the running slices plus the
requested or forecast workloads the scheduler places, with the device-plugin
limit lifted only where no node could take them as configured), the compiled
configs and a unified diff against what runs, the lint findings, and the
predicted impact (pods to move and whether they have room elsewhere, the
capacity kept while the node is out, and the fleet's $/h before and after,
from the one cost formula ``core.cost.formula.fleet_cost``). For a plan over
several proposals, ``predict_disruption`` gives the share of model servers out
at once under a strategy (``change_groups``) and the free capacity left then.

Invariants:
- honest: a node whose running config already serves its layout (every
  client has a replica, no client's thread share or memory is capped) gets
  no proposal; neither does one whose compiled config would serve it no
  better (the gap is reported in ``unresolved``);
- a proposal's config is the compiler's (``core.mps.device_plugin``), so the
  lint and the preview judge exactly what would be applied;
- requests are placed with the project's scheduler: nothing is ever squeezed
  in; what does not fit is listed with the scheduler's reason;
- pure: nodes, requests, telemetry and settings in; values out.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import yaml

from core.catalog import Catalog
from core.cost.formula import FleetCost, fleet_cost
from core.errors import ValidationError
from core.model import MpsSlice, Node, PlacementRequest
from core.mps import device_plugin as dp
from core.mps.dra import render_shared_claim
from core.mps.env import mps_env
from core.mps.layout import GpuLayout
from core.mps.lint import Backend, Finding, lint
from core.placement.framework import Scheduler
from core.placement.snapshot import FleetSnapshot
from core.settings import device_plugin_replicas
from core.telemetry import FleetTelemetry, FleetTotals

DEVICE_PLUGIN = "device-plugin"
DRA = "dra"
BACKENDS = (DEVICE_PLUGIN, DRA)
UNKNOWN_CONFIG = "(unknown)"


def running_config(node: Node) -> str | None:
    """The named config ``node``'s device plugin runs; ``None`` when unknown."""
    if node.device_plugin_config:
        return node.device_plugin_config
    if node.gpu_replicas is not None and node.gpu_replicas >= 1:
        return dp.config_name(node.gpu_replicas)
    return None


def config_gaps(layouts: Sequence[GpuLayout], config: str) -> tuple[str, ...]:
    """Why ``config`` does not serve ``layouts`` (empty: it does): clients without a
    replica, thread shares and memory the plugin's equal split caps, MPS on MIG."""
    replicas = device_plugin_replicas(config)
    out: list[str] = []
    for lay in layouts:
        if lay.clients > replicas:
            out.append(f"{lay.key} holds {lay.clients} MPS clients but {config} advertises "
                       f"{replicas} replica{'s' if replicas > 1 else ''} per GPU")
        if replicas < 2:
            continue
        if lay.mig_enabled:
            out.append(f"{lay.key} has MIG enabled: {config} cannot share it through MPS")
        cap, memory_cap = dp.thread_cap_pct(replicas), dp.memory_cap_mib(lay.memory_total_mib,
                                                                          replicas)
        for s in lay.slices:
            if s.thread_pct > cap:
                out.append(f"{s.owner} asks {s.thread_pct} % of SM threads; {config} gives "
                           f"each client {cap} %")
            if s.memory_mib > memory_cap:
                out.append(f"{s.owner} needs {s.memory_mib} MiB; {config} lets each client "
                           f"pin {memory_cap} MiB of {lay.key}")
    return tuple(out)


def gap_score(layouts: Sequence[GpuLayout], config: str) -> tuple[int, int, int]:
    """(clients without a replica, thread points capped, MiB short): lower serves better."""
    replicas = device_plugin_replicas(config)
    unserved = sum(max(0, lay.clients - replicas) for lay in layouts)
    if replicas < 2:
        return unserved, 0, 0
    capped = short = 0
    for lay in layouts:
        cap = dp.thread_cap_pct(replicas)
        memory_cap = dp.memory_cap_mib(lay.memory_total_mib, replicas)
        capped += sum(max(0, s.thread_pct - cap) for s in lay.slices)
        short += sum(max(0, s.memory_mib - memory_cap) for s in lay.slices)
    return unserved, capped, short


@dataclass(frozen=True, slots=True)
class Impact:
    """What changing one node costs while it runs and after.

    ``pods_to_move``: the model servers on the node now (its plugin restart takes
    their GPUs, so they leave first); ``room_elsewhere``: how many of them fit on
    the other nodes as those are configured now; ``capacity_kept``: the fraction
    of the fleet's GPUs still serving while this node is out. Money: nano-dollars
    per hour under the one cost formula.
    """

    pods_to_move: tuple[str, ...]
    room_elsewhere: int
    capacity_kept: float
    cost_before_nusd_per_h: int
    cost_after_nusd_per_h: int


@dataclass(frozen=True, slots=True)
class Proposal:
    node: str
    backend: str
    config_before: str | None  # None: unknown
    config_after: str
    layouts_before: tuple[GpuLayout, ...]
    layouts_after: tuple[GpuLayout, ...]
    yaml_before: str
    yaml_after: str
    diff: str  # unified diff, yaml_before → yaml_after
    node_label: Mapping[str, str]
    env: Mapping[str, tuple[Mapping[str, str], ...]]  # slice owner → its MPS environment
    findings: tuple[Finding, ...]
    why: tuple[str, ...]  # why what runs does not serve the layout after
    placed_requests: tuple[str, ...]  # requested workloads this node takes
    impact: Impact

    @property
    def gpus(self) -> int:
        return len(self.layouts_after)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def can_roll_out(self) -> bool:
        """A device-plugin change between two named configs (what a rollout plan runs)."""
        return self.backend == DEVICE_PLUGIN and self.config_before is not None


@dataclass(frozen=True, slots=True)
class PlannerResult:
    proposals: tuple[Proposal, ...]
    fits: tuple[str, ...]  # nodes whose running config already serves their layout
    unresolved: Mapping[str, tuple[str, ...]]  # node → gaps no config of the backend closes
    placed: Mapping[str, str]  # request owner → "node/gpuN"
    unplaced: Mapping[str, str]  # request owner → the scheduler's reason
    cost_before: FleetCost
    cost_after: FleetCost
    energy_known: bool  # False without a current reading: $/h is GPU-hours only
    total_gpus: int
    config_map_before: str
    config_map_after: str
    config_map_diff: str

    @property
    def nodes_changing(self) -> tuple[str, ...]:
        return tuple(p.node for p in self.proposals)

    @property
    def capacity_kept_one_at_a_time(self) -> float:
        """The least capacity kept while changing the proposed nodes one by one."""
        return min((p.impact.capacity_kept for p in self.proposals), default=1.0)

    @property
    def capacity_kept_all_at_once(self) -> float:
        if not self.total_gpus:
            return 1.0
        return 1.0 - sum(p.gpus for p in self.proposals) / self.total_gpus

    def proposal(self, node: str) -> Proposal:
        for p in self.proposals:
            if p.node == node:
                return p
        raise KeyError(node)


def unified_diff(before: str, after: str, *, from_name: str, to_name: str) -> str:
    """A unified diff of two texts (``""`` when equal)."""
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after.splitlines(keepends=True),
                                        fromfile=from_name, tofile=to_name))


def _node_yaml(node: str, config: str | None) -> str:
    if config is None:
        return f"# {node}: the running device-plugin config is unknown\n"
    label = yaml.safe_dump({"node": node, "labels": {dp.NODE_LABEL: config}}, sort_keys=False)
    return f"# {node}: device-plugin config {config!r}\n{label}---\n" + _config_yaml(config)


@lru_cache(maxsize=64)
def _config_yaml(config: str) -> str:
    """A named config's YAML (the same for every node that runs it: rendered once)."""
    return dp.render_yaml(dp.plugin_config(device_plugin_replicas(config)))


def _dra_yaml(layouts: Sequence[GpuLayout]) -> str:
    docs = [render_shared_claim(lay) for lay in layouts if lay.slices]
    if not docs:
        return "# no MPS clients: no ResourceClaim\n"
    return yaml.safe_dump_all(docs, sort_keys=False)


def _config_map(configs: Mapping[str, str | None]) -> str:
    """The plugin's ConfigMap holding every named config in ``configs`` (node → name)."""
    names = sorted({c for c in configs.values() if c is not None},
                   key=lambda n: (device_plugin_replicas(n), n))
    plan = dp.DevicePluginPlan(
        configs=MappingProxyType({n: dp.plugin_config(device_plugin_replicas(n))
                                  for n in names}),
        node_configs=MappingProxyType({k: v for k, v in configs.items() if v is not None}),
        config_map_data=MappingProxyType({n: dp.render_yaml(
            dp.plugin_config(device_plugin_replicas(n))) for n in names}))
    return yaml.dump(dp.render_config_map(plan), Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings as literal blocks (a ConfigMap's embedded files
    read, and diff, line by line)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def _no_reading() -> FleetTelemetry:
    return FleetTelemetry(timestamp=0.0, gpus=(), deployments=(),
                          totals=FleetTotals(qps=0.0, power_w=0.0, tops_per_w=0.0))


def place_requests(nodes: Sequence[Node], requests: Sequence[PlacementRequest], *,
                   scheduler: Scheduler, catalog: Catalog, max_clients: int
                   ) -> tuple[tuple[Node, ...], dict[str, str], dict[str, str], set[str]]:
    """Place ``requests`` in order: where a node's running config can take it, else with
    the device-plugin limit lifted (that node is then to be reconfigured).

    Returns the nodes with the new slices, request owner → GPU key, request owner →
    the scheduler's reason for what fits nowhere, and the nodes opened up."""
    working = tuple(nodes)
    opened: set[str] = set()
    placed: dict[str, str] = {}
    unplaced: dict[str, str] = {}
    for request in requests:
        limited = FleetSnapshot(
            (replace(n, gpu_replicas=None) if n.name in opened else n for n in working),
            catalog, max_clients=max_clients)
        decision = scheduler.place(request, limited)
        snap = limited
        if decision.row is None:
            snap = FleetSnapshot((replace(n, gpu_replicas=None) for n in working), catalog,
                                 max_clients=max_clients)
            lifted = scheduler.place(request, snap)
            if lifted.row is None:
                # Why it fits nowhere even with every node reconfigured.
                unplaced[lifted.owner] = lifted.summary
                continue
            decision = lifted
        assert decision.node is not None and decision.row is not None
        placed[decision.owner] = snap.key(decision.row)
        if snap is not limited:
            opened.add(decision.node)
        by_name = {n.name: n for n in snap.to_nodes()}
        # Keep each node's own replica figure: the lifted snapshot dropped it.
        working = tuple(replace(n, gpus=by_name[n.name].gpus) for n in working)
    return working, placed, unplaced, opened


@dataclass
class Room:
    """Every ready, schedulable node's healthy GPUs as configured now, built once per plan
    (not once per proposal), with, per pod shape, the GPUs whose running config could
    serve that shape at all (a necessary condition of ``config_gaps``; the full check
    still runs on each candidate)."""

    entries: tuple[tuple[str, GpuLayout, str | None], ...]
    _static: tuple[tuple[int, int, int, bool], ...] = ()  # replicas, cap %, cap MiB, base ok
    _eligible: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        static = []
        for _, lay, config in self.entries:
            if config is None:
                static.append((0, 100, lay.memory_total_mib, True))
                continue
            replicas = device_plugin_replicas(config)
            if replicas < 2:
                static.append((replicas, 100, lay.memory_total_mib, True))
                continue
            cap, mem_cap = dp.thread_cap_pct(replicas), dp.memory_cap_mib(
                lay.memory_total_mib, replicas)
            ok = not lay.mig_enabled and all(
                sl.thread_pct <= cap and sl.memory_mib <= mem_cap for sl in lay.slices)
            static.append((replicas, cap, mem_cap, ok))
        self._static = tuple(static)

    def eligible(self, pod: MpsSlice) -> tuple[int, ...]:
        shape = (pod.thread_pct, pod.memory_mib)
        found = self._eligible.get(shape)
        if found is None:
            found = self._eligible[shape] = tuple(
                i for i, ((_, lay, config), (replicas, cap, mem_cap, ok))
                in enumerate(zip(self.entries, self._static, strict=True))
                if config is None or (lay.clients + 1 <= replicas and (replicas < 2 or (
                    ok and pod.thread_pct <= cap and pod.memory_mib <= mem_cap))))
        return found


def fleet_room(nodes: Sequence[Node]) -> Room:
    """The fleet's GPUs that could take a moved pod (see ``Room``)."""
    return Room(tuple((n.name, GpuLayout.from_gpu(n.name, g), config)
                      for n in nodes if n.ready and n.schedulable
                      for config in (running_config(n),)
                      for g in n.gpus if g.healthy))


def _room_elsewhere(pods: Sequence[MpsSlice], *, node: str, room: Room,
                    max_clients: int) -> int:
    """How many of ``pods`` fit, first-fit decreasing, on the other nodes' GPUs as they are
    configured now: free share, memory and MPS clients, and a replica of the running config
    that serves the pod uncapped (``config_gaps``)."""
    grown: dict[int, GpuLayout] = {}  # the GPUs this check has filled (room is shared)
    fitted = 0
    entries = room.entries
    for pod in sorted(pods, key=lambda s: (-s.thread_pct, -s.memory_mib, s.owner)):
        moved = replace(pod, owner=f"{pod.owner}@moved")
        for i in room.eligible(pod):
            name, base, config = entries[i]
            if name == node:
                continue
            lay = grown.get(i, base)
            if lay.why_not(moved, max_clients=max_clients) is not None:
                continue
            candidate = lay.with_slice(moved, max_clients=max_clients)
            # Served there as configured: a replica for it, nothing capped.
            if config is None or not config_gaps((candidate,), config):
                grown[i] = candidate
                fitted += 1
                break
    return fitted


def plan_mps(nodes: Sequence[Node], *, catalog: Catalog, requests: Sequence[PlacementRequest] = (),
             scheduler: Scheduler | None = None, telemetry: FleetTelemetry | None = None,
             backend: str = DEVICE_PLUGIN, max_clients: int = 48) -> PlannerResult:
    """Per node, the config that serves its layout after ``requests`` are placed, where
    the running one does not; with the impact of each change and of all of them."""
    if backend not in BACKENDS:
        raise ValidationError("rollouts.mps_backend", f"{backend!r} is not one of "
                                                      f"{', '.join(BACKENDS)}")
    if requests and scheduler is None:
        raise ValidationError("scheduler", "placing requested workloads needs the scheduler")
    nodes = tuple(nodes)
    after_nodes, placed, unplaced, _ = (
        place_requests(nodes, requests, scheduler=scheduler, catalog=catalog,
                       max_clients=max_clients)
        if requests and scheduler is not None else (nodes, {}, {}, set()))
    placed_on: dict[str, list[str]] = {}
    for owner, key in placed.items():
        placed_on.setdefault(key.split("/gpu")[0], []).append(owner)
    reading = telemetry if telemetry is not None else _no_reading()
    total_gpus = sum(len(n.gpus) for n in nodes)
    room = fleet_room(nodes)
    proposals: list[Proposal] = []
    fits: list[str] = []
    unresolved: dict[str, tuple[str, ...]] = {}
    configs_before: dict[str, str | None] = {}
    configs_after: dict[str, str | None] = {}
    final_nodes: list[Node] = []
    for before, after in zip(nodes, after_nodes, strict=True):
        lay_before = tuple(GpuLayout.from_gpu(before.name, g) for g in before.gpus)
        lay_after = tuple(GpuLayout.from_gpu(after.name, g) for g in after.gpus)
        current = running_config(before)
        configs_before[before.name] = current
        configs_after[before.name] = current
        if not lay_after:
            final_nodes.append(before)
            continue
        if backend == DRA:
            proposal = _dra_proposal(before, after, lay_before, lay_after, placed_on=placed_on,
                                     room=room, reading=reading, catalog=catalog,
                                     total_gpus=total_gpus, max_clients=max_clients)
        else:
            proposal = _plugin_proposal(before, after, lay_before, lay_after, current=current,
                                        placed_on=placed_on, room=room, reading=reading,
                                        catalog=catalog, total_gpus=total_gpus,
                                        max_clients=max_clients, unresolved=unresolved)
        if proposal is None:
            if before.name not in unresolved:
                fits.append(before.name)
            final_nodes.append(after)
            continue
        proposals.append(proposal)
        configs_after[before.name] = proposal.config_after if backend == DEVICE_PLUGIN \
            else current
        final_nodes.append(after)
    map_before = _config_map(configs_before)
    map_after = _config_map(configs_after)
    return PlannerResult(
        proposals=tuple(proposals), fits=tuple(fits),
        unresolved=MappingProxyType(unresolved), placed=MappingProxyType(placed),
        unplaced=MappingProxyType(unplaced),
        cost_before=fleet_cost(reading, nodes, catalog),
        cost_after=fleet_cost(reading, final_nodes, catalog),
        energy_known=bool(reading.gpus), total_gpus=total_gpus,
        config_map_before=map_before, config_map_after=map_after,
        config_map_diff=unified_diff(map_before, map_after, from_name="configmap (running)",
                                     to_name="configmap (proposed)"))


def _impact(before: Node, after: Node, *, room: Room, reading: FleetTelemetry,
            catalog: Catalog, total_gpus: int, max_clients: int,
            moving: Sequence[MpsSlice]) -> Impact:
    return Impact(
        pods_to_move=tuple(s.owner for s in moving),
        room_elsewhere=_room_elsewhere(moving, node=before.name, room=room,
                                       max_clients=max_clients),
        capacity_kept=1.0 - len(before.gpus) / total_gpus if total_gpus else 1.0,
        cost_before_nusd_per_h=fleet_cost(reading, [before], catalog).total_nusd_per_h,
        cost_after_nusd_per_h=fleet_cost(reading, [after], catalog).total_nusd_per_h)


def _env(layouts: Sequence[GpuLayout]) -> Mapping[str, tuple[Mapping[str, str], ...]]:
    return MappingProxyType({s.owner: tuple(MappingProxyType(v) for v in mps_env(s))
                             for lay in layouts for s in lay.slices})


def _plugin_proposal(before: Node, after: Node, lay_before: tuple[GpuLayout, ...],
                     lay_after: tuple[GpuLayout, ...], *, current: str | None,
                     placed_on: Mapping[str, list[str]], room: Room,
                     reading: FleetTelemetry, catalog: Catalog, total_gpus: int,
                     max_clients: int, unresolved: dict[str, tuple[str, ...]]
                     ) -> Proposal | None:
    target, _ = dp.compile_node(lay_after)
    if current is not None:
        gaps = config_gaps(lay_after, current)
        if not gaps:
            return None
        if target == current or gap_score(lay_after, target) >= gap_score(lay_after, current):
            unresolved[before.name] = gaps
            return None
        why = gaps
    else:
        why = ("the running device-plugin config is unknown",)
    yaml_before, yaml_after = _node_yaml(before.name, current), _node_yaml(before.name, target)
    return Proposal(
        node=before.name, backend=DEVICE_PLUGIN, config_before=current, config_after=target,
        layouts_before=lay_before, layouts_after=lay_after,
        yaml_before=yaml_before, yaml_after=yaml_after,
        diff=unified_diff(yaml_before, yaml_after,
                          from_name=f"{before.name} (running: {current or UNKNOWN_CONFIG})",
                          to_name=f"{before.name} (proposed: {target})"),
        node_label=MappingProxyType({dp.NODE_LABEL: target}), env=_env(lay_after),
        findings=tuple(lint({before.name: lay_after}, backend=Backend.DEVICE_PLUGIN,
                            max_clients=max_clients)),
        why=why, placed_requests=tuple(placed_on.get(before.name, ())),
        impact=_impact(before, after, room=room, reading=reading, catalog=catalog,
                       total_gpus=total_gpus, max_clients=max_clients,
                       moving=[s for lay in lay_before for s in lay.slices]))


def _dra_proposal(before: Node, after: Node, lay_before: tuple[GpuLayout, ...],
                  lay_after: tuple[GpuLayout, ...], *, placed_on: Mapping[str, list[str]],
                  room: Room, reading: FleetTelemetry, catalog: Catalog,
                  total_gpus: int, max_clients: int) -> Proposal | None:
    """With DRA a GPU's shared claim carries its MPS defaults: a node changes only where
    a GPU's claim changes (a first client, or one above the defaults), and only that
    GPU's clients restart."""
    changed = [(b, a) for b, a in zip(lay_before, lay_after, strict=True)
               if _dra_yaml([b]) != _dra_yaml([a])]
    if not changed:
        return None  # new clients reference the GPU's shared claim as it is
    yaml_before, yaml_after = _dra_yaml(lay_before), _dra_yaml(lay_after)
    return Proposal(
        node=before.name, backend=DRA, config_before=DRA, config_after=DRA,
        layouts_before=lay_before, layouts_after=lay_after,
        yaml_before=yaml_before, yaml_after=yaml_after,
        diff=unified_diff(yaml_before, yaml_after, from_name=f"{before.name} claims (running)",
                          to_name=f"{before.name} claims (proposed)"),
        node_label=MappingProxyType({}), env=_env(lay_after),
        findings=tuple(lint({before.name: lay_after}, backend=Backend.DRA,
                            max_clients=max_clients)),
        why=tuple(f"{a.key} takes {', '.join(s.owner for s in a.slices if s not in b.slices)}"
                  for b, a in changed),
        placed_requests=tuple(placed_on.get(before.name, ())),
        impact=_impact(before, after, room=room, reading=reading, catalog=catalog,
                       total_gpus=total_gpus, max_clients=max_clients,
                       moving=[s for b, _ in changed for s in b.slices]))


def proposal_summary(p: Proposal) -> dict[str, Any]:
    """One row per proposal for tables and for what an approver is shown (audit)."""
    return {"node": p.node, "from": p.config_before or UNKNOWN_CONFIG, "to": p.config_after,
            "gpus": p.gpus, "pods to move": len(p.impact.pods_to_move),
            "room elsewhere": p.impact.room_elsewhere,
            "capacity kept": round(p.impact.capacity_kept, 4),
            "requests taken": len(p.placed_requests),
            "lint errors": len(p.errors), "why": "; ".join(p.why)}


def change_groups(strategy: str, nodes: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Which of ``nodes`` are out of service together under ``strategy``: one by one for
    rolling, canary and emergency changes; all at once for blue-green (the green pool)."""
    if strategy in ("blue_green", "blue-green"):
        return (tuple(nodes),) if nodes else ()
    return tuple((n,) for n in nodes)


@dataclass(frozen=True, slots=True)
class Disruption:
    """A change's predicted disruption (the largest fraction of the fleet's model-server
    pods out at once) and the fraction of the fleet's SM capacity still free meanwhile,
    once the pods moved off the nodes that are out have been given room."""

    disruption: float
    free_capacity: float
    pods_total: int
    worst_group: tuple[str, ...]


def predict_disruption(nodes: Sequence[Node], groups: Sequence[Sequence[str]]) -> Disruption:
    """``Disruption`` over ``groups`` (``change_groups``): the worst group decides."""
    pods_total = sum(g.clients for n in nodes for g in n.gpus)
    capacity = 100 * sum(len(n.gpus) for n in nodes)
    shares: list[tuple[float, tuple[str, ...]]] = []
    lefts: list[float] = []
    for group in groups:
        out = set(group)
        moved = [g for n in nodes if n.name in out for g in n.gpus]
        free = sum(g.share_free_pct for n in nodes if n.name not in out and n.ready
                   and n.schedulable for g in n.gpus if g.healthy)
        needed = sum(g.share_used_pct for g in moved)
        lefts.append(max(0.0, (free - needed) / capacity) if capacity else 0.0)
        pods = sum(g.clients for g in moved)
        shares.append((pods / pods_total if pods_total else 0.0, tuple(group)))
    share, group = max(shares, key=lambda sg: sg[0], default=(0.0, ()))
    return Disruption(disruption=share, free_capacity=min(lefts, default=1.0),
                      pods_total=pods_total, worst_group=group)

"""What a placement would change, in deployable terms, before anything runs.

From a decision it derives the chosen GPU's MPS layout before and after, the
device-plugin config its node would need (and the one it needs today), the
pod's MPS environment, the Pod manifest, the DRA claim template and the lint
findings for each backend. Pure: it only reads the decision's snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from core.manifest import render_pod
from core.mps import device_plugin
from core.mps.dra import render_claim_template
from core.mps.env import mps_env
from core.mps.layout import GpuLayout
from core.mps.lint import Backend, Finding, lint
from core.placement.framework import Decision


@dataclass(frozen=True)
class PlacementPreview:
    before: GpuLayout
    after: GpuLayout
    plugin_config_before: str
    plugin_config_after: str
    plugin_yaml: str
    node_label: dict[str, str]
    env: list[dict[str, str]]
    pod: dict[str, Any]
    dra_claim_template: dict[str, Any]
    findings: list[Finding]

    @property
    def pod_yaml(self) -> str:
        return yaml.safe_dump(self.pod, sort_keys=False)

    @property
    def dra_yaml(self) -> str:
        return yaml.safe_dump(self.dra_claim_template, sort_keys=False)


def preview(decision: Decision, *, image: str | None = None) -> PlacementPreview | None:
    """The deployable picture of a placed decision; None when nothing was chosen."""
    if decision.row is None or decision.node is None or decision.gpu_index is None:
        return None
    snap = decision.snapshot
    new = decision.mps_slice()
    before = snap.layout(decision.row)
    after = before if any(s.owner == new.owner for s in before.slices) \
        else before.with_slice(new, max_clients=snap.max_clients)
    node_rows = [r for r in range(snap.size) if snap.node_of(r) == decision.node]
    node_before = [snap.layout(r) for r in node_rows]
    node_after = [after if r == decision.row else snap.layout(r) for r in node_rows]
    name_before, _ = device_plugin.compile_node(node_before)
    name_after, config_after = device_plugin.compile_node(node_after)
    layouts = {decision.node: node_after}
    findings = [f for backend in Backend
                for f in lint(layouts, backend=backend, max_clients=snap.max_clients)]
    pod_kwargs: dict[str, Any] = {"image": image} if image else {}
    pod = render_pod(request=decision.request, node=decision.node,
                     gpu_index=decision.gpu_index, mps_slice=new,
                     workload_class=decision.workload_class,
                     weight_version=decision.weight_version,
                     gpu_memory_total_mib=before.memory_total_mib, **pod_kwargs)
    return PlacementPreview(
        before=before, after=after,
        plugin_config_before=name_before, plugin_config_after=name_after,
        plugin_yaml=device_plugin.render_yaml(config_after),
        node_label={device_plugin.NODE_LABEL: name_after},
        env=mps_env(new), pod=pod,
        dra_claim_template=render_claim_template(new, namespace=decision.request.namespace),
        findings=findings,
    )

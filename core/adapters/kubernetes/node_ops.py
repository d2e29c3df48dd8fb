"""The ``NodeConfigurator`` port on Kubernetes: cordon, drain, select and restart the
device plugin's config of one node (SPEC §4.1, rolling node update).

Why: changing a node's MPS configuration is cordon → drain → select a named
config → restart the device plugin → wait until the node advertises the new
replicas → uncordon; the twin implements the same port, so the same sequence
runs in embedded mode, in tests and here.

What it writes: evictions (``pods/eviction``, so PodDisruptionBudgets are
respected; a drain never deletes), the node's ``spec.unschedulable`` and its
``nvidia.com/device-plugin.config`` label, the device plugin's ConfigMap of
named configs; it restarts the device-plugin pod of one node by deleting it
(its DaemonSet recreates it). The verbs this needs are granted in
``deploy/k8s/rbac.yaml``; a test checks the two agree.

Invariants:
- every wait (drain, plugin restart) has a deadline and returns an outcome with
  the reason when it passes, never hangs;
- the label and the ConfigMap are written with the ``resourceVersion`` that was
  read, so a concurrent writer is never overwritten (a conflict is retried after
  a fresh read); a config the ConfigMap does not hold is refused before any write.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from types import MappingProxyType

from kubernetes import client as k8s

from core.errors import PermanentError, TransientError, ValidationError
from core.manifest import ANNOTATION_OWNER
from core.mps.device_plugin import NODE_LABEL
from core.ports import DrainResult, PluginRestart, PodNotFoundError

from .api import STRATEGIC_MERGE, KubeApi, positive
from .errors import NodeNotFoundError, Op, failed_status
from .nodes import describe, gpu_count, pod_ready, stays_on_drain
from .options import CONFIG_KEY

_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class NodeOperations(KubeApi):
    """``core.ports.NodeConfigurator``, plus ``patch_device_plugin_configs`` (the named
    configs the planner compiled)."""

    # --------------------------------------------------------------------------------------
    # Cordon, drain
    # --------------------------------------------------------------------------------------
    def cordon(self, node: str) -> None:
        self._patch_unschedulable(node, True)

    def uncordon(self, node: str) -> None:
        self._patch_unschedulable(node, False)

    def drain(self, node: str, *, timeout_s: float) -> DrainResult:
        """Evict every pod of ``node`` through the Eviction API, then wait until they are gone.

        DaemonSet pods and mirror (static) pods stay, as with ``kubectl
        drain``; finished pods are left alone. A PodDisruptionBudget refusal
        (HTTP 429) is retried after ``Retry-After`` (else ``retry_delay_s``)
        until ``timeout_s``; then the result says which pods are blocked and
        why. ``owners`` maps each evicted pod the console placed to its
        ``gpu-scheduler.io/mps-owner``. Cordon the node first, or evicted pods
        may come back to it.
        """
        positive("timeout_s", timeout_s)
        deadline = self._monotonic() + timeout_s
        skipped: list[tuple[str, str]] = []
        targets: dict[str, k8s.V1Pod] = {}
        for pod in self._pods_on_node(node):
            key = f"{pod.metadata.namespace}/{pod.metadata.name}"
            why = stays_on_drain(pod)
            if why:
                skipped.append((key, why))
            else:
                targets[key] = pod
        owners = {key: (pod.metadata.annotations or {}).get(ANNOTATION_OWNER, "")
                  for key, pod in targets.items()}
        evicted: dict[str, str] = {}  # key → uid
        refusals: dict[str, str] = {}

        def result(*, completed: bool, blocked: tuple[tuple[str, str], ...] = (),
                   reason: str = "") -> DrainResult:
            return DrainResult(
                node=node, completed=completed, evicted=tuple(evicted), skipped=tuple(skipped),
                blocked=blocked, reason=reason,
                owners=MappingProxyType({k: owners[k] for k in evicted if owners[k]}))

        while targets:
            wait = self.options.retry_delay_s
            for key, pod in list(targets.items()):
                try:
                    self._evict(pod)
                except PodNotFoundError:
                    pass  # already gone
                except TransientError as exc:
                    refusals[key] = str(exc)
                    wait = max(wait, exc.delay)
                    continue
                evicted[key] = pod.metadata.uid
                del targets[key]
            if targets and self._monotonic() + wait > deadline:
                blocked = tuple((k, refusals.get(k, "")) for k in targets)
                listed = "; ".join(f"{k}: {why}" for k, why in blocked)
                return result(completed=False, blocked=blocked,
                              reason=f"gave up after {timeout_s:g} s: {len(blocked)} pod(s) "
                                     f"not evicted ({listed})")
            if targets:
                self._sleep(wait)
        while True:
            left = [f"{p.metadata.namespace}/{p.metadata.name}" for p in self._pods_on_node(node)
                    if evicted.get(f"{p.metadata.namespace}/{p.metadata.name}")
                    == p.metadata.uid]
            if not left:
                return result(completed=True)
            if self._monotonic() + self.options.poll_interval_s > deadline:
                return result(completed=False,
                              reason=f"gave up after {timeout_s:g} s: evicted pod(s) still "
                                     f"terminating: {', '.join(left)}")
            self._sleep(self.options.poll_interval_s)

    def _pods_on_node(self, node: str) -> list[k8s.V1Pod]:
        return self._list(Op("list", "pods", all_namespaces=True),
                          self._core.list_pod_for_all_namespaces,
                          field_selector=f"spec.nodeName={node}")

    def _evict(self, pod: k8s.V1Pod) -> None:
        name, namespace = pod.metadata.name, pod.metadata.namespace
        body = k8s.V1Eviction(api_version="policy/v1", kind="Eviction",
                              metadata=k8s.V1ObjectMeta(name=name, namespace=namespace))
        op = Op("create", "pods/eviction", namespace=namespace, name=name)
        # The raw answer: a refusal can come as 201 with a Failure Status in the body.
        response = self._call(op, self._core.create_namespaced_pod_eviction, name=name,
                              namespace=namespace, body=body, _preload_content=False)
        refused = failed_status(response.data, op=op, retry_delay_s=self.options.retry_delay_s)
        if refused is not None:
            raise refused

    # --------------------------------------------------------------------------------------
    # Device plugin: named config per node, the ConfigMap, restarts
    # --------------------------------------------------------------------------------------
    def device_plugin_config(self, node: str) -> str:
        """The named config ``node``'s ``nvidia.com/device-plugin.config`` label selects
        (``""``: none, the plugin's default)."""
        return (self._read_node(node).metadata.labels or {}).get(NODE_LABEL, "")

    def set_device_plugin_config(self, node: str, config: str) -> None:
        """Select the named config ``config`` for ``node`` (its ``nvidia.com/device-plugin.config``
        label).

        Refuses a name the device plugin's ConfigMap does not hold (the plugin
        would fail to start). The label is written with the node's
        ``resourceVersion``; a conflict is retried after a fresh read.
        """
        if not config or not _LABEL_VALUE.match(config):
            raise ValidationError("config", f"{config!r} is not a valid label value")
        known = self._plugin_config_map().data or {}
        if config not in known:
            raise ValidationError("config", f"{config!r} is not a named config of ConfigMap "
                                  f"{self._config_map_ref} (it holds: "
                                  f"{', '.join(sorted(known)) or 'nothing'})")

        def attempt() -> None:
            current = self._read_node(node)
            if (current.metadata.labels or {}).get(NODE_LABEL) == config:
                return
            body = {"metadata": {"resourceVersion": current.metadata.resource_version,
                                 "labels": {NODE_LABEL: config}}}
            self._call(Op("patch", "nodes", name=node), self._core.patch_node, name=node,
                       body=body, _content_type=STRATEGIC_MERGE)

        self._with_fresh_reads(attempt, what=f"the {NODE_LABEL} label of node {node}")

    def patch_device_plugin_configs(self, configs: Mapping[str, str]) -> None:
        """Add or replace named configs (name → YAML, e.g. ``DevicePluginPlan.config_map_data``)
        in the device plugin's ConfigMap; configs not named are kept."""
        for key, text in configs.items():
            if not isinstance(key, str) or not CONFIG_KEY.match(key):
                raise ValidationError(f"configs.{key}", "is not a valid ConfigMap key")
            if not isinstance(text, str) or not text.strip():
                raise ValidationError(f"configs.{key}", "must be non-empty YAML text")
        if not configs:
            return
        namespace = self.options.device_plugin_namespace
        name = self.options.device_plugin_config_map

        def attempt() -> None:
            current = self._plugin_config_map()
            data = current.data or {}
            if all(data.get(k) == v for k, v in configs.items()):
                return
            body = {"metadata": {"resourceVersion": current.metadata.resource_version},
                    "data": dict(configs)}
            self._call(Op("patch", "configmaps", namespace=namespace, name=name),
                       self._core.patch_namespaced_config_map, name=name, namespace=namespace,
                       body=body, _content_type=STRATEGIC_MERGE)

        self._with_fresh_reads(attempt, what=f"ConfigMap {self._config_map_ref}")

    def restart_device_plugin(self, node: str, *, expected_gpus: int,
                              timeout_s: float) -> PluginRestart:
        """Delete ``node``'s device-plugin pod(s), wait until their DaemonSet's new pods are
        ready and the node advertises ``expected_gpus`` allocatable ``nvidia.com/gpu``
        (GPUs × replicas of its config)."""
        positive("timeout_s", timeout_s)
        if expected_gpus < 0:
            raise ValidationError("expected_gpus", "must be ≥ 0")
        deadline = self._monotonic() + timeout_s
        namespace = self.options.device_plugin_namespace
        old = self._plugin_pods(node)
        if not old:
            raise PermanentError(
                f"no device-plugin pod on node {node} (namespace {namespace}, selector "
                f"{self.options.device_plugin_selector!r}): is the NVIDIA device plugin "
                "deployed there?")
        old_uids = {p.metadata.uid for p in old}
        for pod in old:
            with contextlib.suppress(PodNotFoundError):
                self._call(Op("delete", "pods", namespace=namespace, name=pod.metadata.name),
                           self._core.delete_namespaced_pod, name=pod.metadata.name,
                           namespace=namespace)
        while True:
            current = self._plugin_pods(node)
            fresh = [p for p in current if p.metadata.uid not in old_uids]
            ready = [p for p in fresh if pod_ready(p)]
            if len(ready) >= len(old) and len(fresh) == len(current):
                break
            if self._monotonic() + self.options.poll_interval_s > deadline:
                state = ", ".join(f"{p.metadata.name} {describe(p)}" for p in fresh) or \
                    "no new pod yet"
                return PluginRestart(node=node, ready=False,
                                     pods=tuple(p.metadata.name for p in fresh),
                                     reason=f"device plugin on {node} not ready after "
                                            f"{timeout_s:g} s ({state})")
            self._sleep(self.options.poll_interval_s)
        names = tuple(p.metadata.name for p in ready)
        count = self._await_allocatable(node, expected=expected_gpus, deadline=deadline)
        return PluginRestart.advertised(node=node, pods=names, count=count,
                                         expected=expected_gpus, timeout_s=timeout_s)

    def _await_allocatable(self, node: str, *, expected: int, deadline: float) -> int | None:
        current = self._read_node(node)
        count = gpu_count(current.status.allocatable if current.status else None)
        if count == expected:
            return count
        events = self._events(Op("watch", "nodes", name=node), self._core.list_node,
                              field_selector=f"metadata.name={node}",
                              resource_version=current.metadata.resource_version,
                              deadline=deadline)
        with contextlib.closing(events):
            for kind, obj in events:
                if kind == "DELETED":
                    raise NodeNotFoundError(node)
                count = gpu_count(obj.status.allocatable if obj.status else None)
                if count == expected:
                    return count
        return count

    def _plugin_pods(self, node: str) -> list[k8s.V1Pod]:
        namespace = self.options.device_plugin_namespace
        return self._list(Op("list", "pods", namespace=namespace), self._core.list_namespaced_pod,
                          namespace=namespace, label_selector=self.options.device_plugin_selector,
                          field_selector=f"spec.nodeName={node}")

    def _plugin_config_map(self) -> k8s.V1ConfigMap:
        namespace = self.options.device_plugin_namespace
        name = self.options.device_plugin_config_map
        return self._call(Op("get", "configmaps", namespace=namespace, name=name),
                          self._core.read_namespaced_config_map, name=name, namespace=namespace)

    @property
    def _config_map_ref(self) -> str:
        return f"{self.options.device_plugin_namespace}/{self.options.device_plugin_config_map}"

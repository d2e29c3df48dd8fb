"""The Pod that binds a placement decision."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes_validate.utils import latest_version

from core.errors import ValidationError
from core.manifest import dns_name, render_pod
from core.model import MpsSlice, PlacementRequest, Priority, WorkloadClass

# The newest Kubernetes version the installed kubernetes-validate ships schemas for.
K8S_VERSION = latest_version()
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _request(**overrides: Any) -> PlacementRequest:
    fields: dict[str, Any] = {
        "model_name": "llama-2-13b", "model_memory_gb": 13.0, "priority": Priority.HIGH,
        "latency_sla_ms": 100.0, "namespace": "inference", "labels": {"team": "search"},
        "request_id": "req-42",
    }
    fields.update(overrides)
    return PlacementRequest(**fields)


SLICE = MpsSlice(owner="llama-2-13b-0", thread_pct=50, memory_mib=13312, model="llama-2-13b",
                 workload_class=WorkloadClass.MEDIUM)


def _pod(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "request": _request(), "node": "a100-0", "gpu_index": 0, "mps_slice": SLICE,
        "workload_class": WorkloadClass.MEDIUM, "decision_id": "dec-7f3a", "weight_version": 4,
    }
    kwargs.update(overrides)
    return render_pod(**kwargs)


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["value"] for v in _container(pod)["env"]}


def test_rendered_pod_passes_strict_kubernetes_validation() -> None:
    assert kubernetes_validate.validate(_pod(), K8S_VERSION, strict=True)


def test_rendered_pod_without_optional_ids_passes_strict_validation_too() -> None:
    pod = _pod(request=_request(request_id="", labels={}), decision_id=None, weight_version=None,
               gpu_memory_total_mib=40960)

    assert kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def _unknown_container_field(pod: dict[str, Any]) -> None:
    _container(pod)["mpsThreadPercentage"] = 50


def _integer_env_value(pod: dict[str, Any]) -> None:
    _container(pod)["env"][0]["value"] = 50


def _gpu_limit_as_list(pod: dict[str, Any]) -> None:
    _container(pod)["resources"]["limits"]["nvidia.com/gpu"] = [1]


@pytest.mark.parametrize("break_it", [_unknown_container_field, _integer_env_value,
                                      _gpu_limit_as_list])
def test_strict_validation_rejects_an_invalid_pod(
    break_it: Callable[[dict[str, Any]], None],
) -> None:
    # Proves the validation above can fail: the same pod, broken one way, is refused.
    pod = copy.deepcopy(_pod())
    break_it(pod)

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_pod_is_pinned_to_the_chosen_node_and_asks_for_one_gpu() -> None:
    pod = _pod(node="a100-3")

    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "a100-3"}
    resources = _container(pod)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"] == resources["limits"]


def test_pod_resources_are_kubernetes_quantity_strings() -> None:
    resources = _container(_pod())["resources"]

    for section in ("requests", "limits"):
        assert all(isinstance(v, str) for v in resources[section].values())
    # 13 GB model: 13312 MiB + 4096 MiB host headroom.
    assert resources["limits"]["memory"] == "17408Mi"
    assert resources["limits"]["cpu"] == "4"


def test_pod_env_carries_the_slice_mps_limits_and_the_model_name() -> None:
    env = _env(_pod())

    assert env == {
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=13312M",
        "MODEL_NAME": "llama-2-13b",
    }


def test_pod_annotations_record_the_slice_and_the_decision() -> None:
    annotations = _pod()["metadata"]["annotations"]

    assert annotations == {
        "gpu-scheduler.io/mps-thread-percentage": "50",
        "gpu-scheduler.io/mps-pinned-memory": "13312Mi",
        "gpu-scheduler.io/gpu-index": "0",
        "gpu-scheduler.io/mps-owner": "llama-2-13b-0",
        "gpu-scheduler.io/decision-id": "dec-7f3a",
        "gpu-scheduler.io/weight-version": "4",
        "gpu-scheduler.io/request-id": "req-42",
    }


def test_pod_labels_name_the_workload_and_keep_the_request_labels() -> None:
    labels = _pod()["metadata"]["labels"]

    assert labels == {
        "team": "search",
        "app.kubernetes.io/name": "llama-2-13b",
        "app.kubernetes.io/managed-by": "gpu-scheduler-console",
        "gpu-scheduler.io/model": "llama-2-13b",
        "gpu-scheduler.io/workload-class": "medium",
        "gpu-scheduler.io/priority": "HIGH",
    }
    assert all(LABEL_VALUE.match(v) for v in labels.values())


def test_request_labels_cannot_override_the_managed_labels() -> None:
    request = _request(labels={"app.kubernetes.io/managed-by": "someone-else",
                               "gpu-scheduler.io/priority": "CRITICAL"})

    labels = _pod(request=request)["metadata"]["labels"]

    assert labels["app.kubernetes.io/managed-by"] == "gpu-scheduler-console"
    assert labels["gpu-scheduler.io/priority"] == "HIGH"


def test_pod_is_namespaced_like_the_request() -> None:
    assert _pod()["metadata"]["namespace"] == "inference"


def test_pod_name_is_derived_from_model_and_decision_id() -> None:
    assert _pod()["metadata"]["name"] == "llama-2-13b-dec-7f3a"


@pytest.mark.parametrize("decision_id", ["Decision_ABC/1", "9b2e" * 30, "--", "Ünïcode"])
def test_pod_name_is_a_dns_label_whatever_the_decision_id(decision_id: str) -> None:
    pod = _pod(decision_id=decision_id)

    assert DNS_LABEL.match(pod["metadata"]["name"]), pod["metadata"]["name"]
    assert kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_pod_name_without_ids_is_stable_for_the_same_placement() -> None:
    request = _request(request_id="")

    first = _pod(request=request, decision_id=None)["metadata"]["name"]
    again = _pod(request=request, decision_id=None)["metadata"]["name"]
    elsewhere = _pod(request=request, decision_id=None, node="a100-4")["metadata"]["name"]

    assert first == again
    assert first != elsewhere
    assert first.startswith("llama-2-13b-")


def test_readiness_probe_checks_the_server_health_endpoint() -> None:
    container = _container(_pod())

    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/health", "port": "http"}
    assert container["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}


def test_server_memory_fraction_follows_the_slice_when_the_gpu_size_is_known() -> None:
    args = _container(_pod(gpu_memory_total_mib=40960))["args"]

    # 13312 / 40960 = 0.325 → rounded down to 0.32 to stay under the pinned limit.
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.32"
    assert "--gpu-memory-utilization" not in _container(_pod())["args"]


def test_pod_uses_the_given_image_and_pod_name() -> None:
    pod = _pod(image="registry.local/vllm:1.0", pod_name="custom-name")

    assert _container(pod)["image"] == "registry.local/vllm:1.0"
    assert pod["metadata"]["name"] == "custom-name"


@pytest.mark.parametrize("bad", [
    {"node": "Node_1"}, {"gpu_index": -1}, {"pod_name": "Bad_Name"}, {"image": ""},
    {"weight_version": -1}, {"gpu_memory_total_mib": 0},
])
def test_render_pod_refuses_invalid_input_naming_the_field(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as exc:
        _pod(**bad)
    assert exc.value.field == next(iter(bad))


@given(st.lists(st.text(max_size=80), max_size=4))
def test_dns_name_always_gives_a_valid_label(parts: list[str]) -> None:
    name = dns_name(*parts)

    assert DNS_LABEL.match(name), name
    assert name == dns_name(*parts)

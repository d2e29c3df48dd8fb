"""Render the Pod that binds a placement decision (SPEC §3.3 step 8).

The Pod carries everything the cluster needs to honour the decision: a node
selector for the chosen node, one ``nvidia.com/gpu`` (a replica when the node's
device-plugin config shares GPUs through MPS), the slice's MPS limits as
environment variables, and the decision's provenance as labels and
annotations, so that the running pod can be traced back to the decision and
the weight version that chose it.

Invariants kept here: the result is a plain ``dict`` that validates against
the core/v1 Pod schema in strict mode (no unknown fields, strings where the
schema wants strings, integers where it wants integers); names are valid
DNS-1123 labels; the same inputs always give the same Pod.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ValidationError
from core.model import MpsSlice, PlacementRequest, WorkloadClass
from core.mps.env import mps_env

LABEL_PREFIX = "gpu-scheduler.io/"
MANAGED_BY = "gpu-scheduler-console"
DEFAULT_IMAGE = "vllm/vllm-openai:v0.6.3"
CONTAINER_NAME = "model-server"
HOSTNAME_LABEL = "kubernetes.io/hostname"
SERVER_PORT = 8000
MAX_NAME_LENGTH = 63

ANNOTATION_THREADS = f"{LABEL_PREFIX}mps-thread-percentage"
ANNOTATION_MEMORY = f"{LABEL_PREFIX}mps-pinned-memory"
ANNOTATION_GPU_INDEX = f"{LABEL_PREFIX}gpu-index"
ANNOTATION_OWNER = f"{LABEL_PREFIX}mps-owner"
ANNOTATION_DECISION = f"{LABEL_PREFIX}decision-id"
ANNOTATION_WEIGHTS = f"{LABEL_PREFIX}weight-version"
ANNOTATION_REQUEST = f"{LABEL_PREFIX}request-id"

# Host CPU per workload class (whole cores) and host memory headroom above the
# model size: vLLM stages weights through host memory and keeps its tokenizer,
# scheduler and HTTP server there.
_CPU_CORES = {WorkloadClass.TINY: 2, WorkloadClass.MEDIUM: 4, WorkloadClass.LARGE: 8}
_HOST_MEMORY_HEADROOM_MIB = 4096

_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                            r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def dns_name(*parts: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """A DNS-1123 label built from ``parts`` (joined with ``-``).

    Characters outside ``[a-z0-9-]`` become ``-``. When that changes the text
    or it is too long, a short digest of the original is appended, so that two
    different inputs do not collapse onto one name.
    """
    if max_length < 10:
        raise ValidationError("max_length", "must be at least 10")
    raw = "-".join(p for p in parts if p)
    text = re.sub(r"-{2,}", "-", _NOT_DNS.sub("-", raw.lower())).strip("-")
    if text == raw and 0 < len(text) <= max_length:
        return text
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
    head = text[: max_length - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}" if head else digest


def is_dns_subdomain(name: str) -> bool:
    return bool(_DNS_SUBDOMAIN.match(name))


def render_pod(
    *,
    request: PlacementRequest,
    node: str,
    gpu_index: int,
    mps_slice: MpsSlice,
    workload_class: WorkloadClass,
    image: str = DEFAULT_IMAGE,
    decision_id: str | None = None,
    weight_version: int | None = None,
    pod_name: str | None = None,
    gpu_memory_total_mib: int | None = None,
) -> dict[str, Any]:
    """The core/v1 Pod for one placed model-server replica.

    ``gpu_memory_total_mib``, when given, sets vLLM's
    ``--gpu-memory-utilization`` to the slice's share of the GPU: vLLM sizes
    its memory from the *whole* GPU (0.9 by default), which would exceed the
    MPS pinned-memory limit of a shared GPU.
    """
    if not is_dns_subdomain(node):
        raise ValidationError("node", f"{node!r} is not a valid node name")
    if gpu_index < 0:
        raise ValidationError("gpu_index", "must be ≥ 0")
    if not image or any(c.isspace() for c in image):
        raise ValidationError("image", "must be a non-empty image reference without spaces")
    if weight_version is not None and weight_version < 0:
        raise ValidationError("weight_version", "must be ≥ 0")
    name = pod_name or _pod_name(request=request, node=node, gpu_index=gpu_index,
                                 mps_slice=mps_slice, decision_id=decision_id)
    if not is_dns_subdomain(name):
        raise ValidationError("pod_name", f"{name!r} is not a valid DNS-1123 subdomain")

    labels = {
        **dict(request.labels),
        "app.kubernetes.io/name": request.model_name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{LABEL_PREFIX}model": request.model_name,
        f"{LABEL_PREFIX}workload-class": workload_class.value,
        f"{LABEL_PREFIX}priority": request.priority.value,
    }
    annotations = {
        ANNOTATION_THREADS: str(mps_slice.thread_pct),
        ANNOTATION_MEMORY: f"{mps_slice.memory_mib}Mi",
        ANNOTATION_GPU_INDEX: str(gpu_index),
        ANNOTATION_OWNER: mps_slice.owner,
    }
    if decision_id:
        annotations[ANNOTATION_DECISION] = decision_id
    if weight_version is not None:
        annotations[ANNOTATION_WEIGHTS] = str(weight_version)
    if request.request_id:
        annotations[ANNOTATION_REQUEST] = request.request_id

    cpu = str(_CPU_CORES[workload_class])
    memory = f"{request.memory_mib + _HOST_MEMORY_HEADROOM_MIB}Mi"
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "args": _server_args(mps_slice=mps_slice, gpu_memory_total_mib=gpu_memory_total_mib),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "env": [*mps_env(mps_slice), {"name": "MODEL_NAME", "value": request.model_name}],
        # Requests equal limits: Guaranteed QoS, so the kubelet evicts these last.
        "resources": {
            "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": "1"},
            "limits": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": "1"},
        },
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": request.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "nodeSelector": {HOSTNAME_LABEL: node},
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
        },
    }


def _pod_name(
    *, request: PlacementRequest, node: str, gpu_index: int, mps_slice: MpsSlice,
    decision_id: str | None,
) -> str:
    suffix = decision_id or request.request_id
    if not suffix:
        # No id to name it by: derive one from where it runs, so that a retry of
        # the same placement gets the same name (and the API server refuses a
        # duplicate instead of starting a second replica).
        key = f"{node}/{gpu_index}/{mps_slice.owner}".encode()
        suffix = hashlib.sha256(key).hexdigest()[:10]
    return dns_name(request.model_name, suffix)


def _server_args(*, mps_slice: MpsSlice, gpu_memory_total_mib: int | None) -> list[str]:
    # $(MODEL_NAME) is expanded by the kubelet from the container's env.
    args = ["--model", "$(MODEL_NAME)", "--port", str(SERVER_PORT)]
    if gpu_memory_total_mib is not None:
        if gpu_memory_total_mib <= 0:
            raise ValidationError("gpu_memory_total_mib", "must be > 0")
        if mps_slice.memory_mib > 0:
            # Round down to whole hundredths so vLLM stays under the pinned limit.
            hundredths = min(100, mps_slice.memory_mib * 100 // gpu_memory_total_mib)
            args += ["--gpu-memory-utilization", f"{hundredths // 100}.{hundredths % 100:02d}"]
    return args


# --- reading a rendered pod back (the twin and the Kubernetes adapter both do) ----------

_MIB_FACTORS = {"Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}


@dataclass(frozen=True, slots=True)
class PodPlacement:
    """Where a rendered pod goes and the MPS slice it holds, read from its manifest."""

    namespace: str
    name: str
    node: str
    gpu_index: int
    mps_slice: MpsSlice


def _annotation_int(text: str, *, key: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(f"metadata.annotations.{key}",
                              f"{text!r} is not a whole number") from None
    if value < 0:
        raise ValidationError(f"metadata.annotations.{key}", "must be ≥ 0")
    return value


def _annotation_mib(text: str) -> int:
    for suffix, factor in _MIB_FACTORS.items():
        number = text[: -len(suffix)]
        if text.endswith(suffix) and number.isdigit():
            return int(number) * factor
    raise ValidationError(f"metadata.annotations.{ANNOTATION_MEMORY}",
                          f"{text!r} is not a quantity in Mi or Gi (e.g. 13312Mi)")


def _section(parent: Mapping[str, Any], key: str, *, where: str | None = None
             ) -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, Mapping):
        raise ValidationError(where or key, "is required and must be a mapping")
    return value


def read_pod(pod: Mapping[str, Any], *, default_namespace: str = "default") -> PodPlacement:
    """The placement a pod manifest carries; ``ValidationError`` naming the field.

    The slice's workload class is None when the pod has no class label.
    """
    if not isinstance(pod, Mapping):
        raise ValidationError("pod", "must be a mapping (a rendered core/v1 Pod)")
    if pod.get("kind", "Pod") != "Pod":
        raise ValidationError("kind", "must be Pod")
    meta = _section(pod, "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationError("metadata.name", "is required")
    namespace = str(meta.get("namespace") or default_namespace)
    annotations = _section(meta, "annotations", where="metadata.annotations")
    labels = meta.get("labels") or {}
    selector = _section(_section(pod, "spec"), "nodeSelector", where="spec.nodeSelector")
    node = selector.get(HOSTNAME_LABEL)
    if not isinstance(node, str) or not node:
        raise ValidationError(f"spec.nodeSelector.{HOSTNAME_LABEL}", "is required")

    def annotation(key: str) -> str:
        value = annotations.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"metadata.annotations.{key}", "is required")
        return value.strip()

    owner = annotation(ANNOTATION_OWNER)
    gpu_index = _annotation_int(annotation(ANNOTATION_GPU_INDEX), key=ANNOTATION_GPU_INDEX)
    threads = _annotation_int(annotation(ANNOTATION_THREADS), key=ANNOTATION_THREADS)
    if not 1 <= threads <= 100:
        raise ValidationError(f"metadata.annotations.{ANNOTATION_THREADS}",
                              "must be within 1..100")
    memory = _annotation_mib(annotation(ANNOTATION_MEMORY))
    raw_class = labels.get(f"{LABEL_PREFIX}workload-class")
    try:
        workload_class = WorkloadClass(raw_class) if raw_class else None
    except ValueError:
        raise ValidationError(f"metadata.labels.{LABEL_PREFIX}workload-class",
                              f"{raw_class!r} is not tiny, medium or large") from None
    model = str(labels.get(f"{LABEL_PREFIX}model") or labels.get("app.kubernetes.io/name")
                or owner)
    return PodPlacement(namespace=namespace, name=name, node=node, gpu_index=gpu_index,
                        mps_slice=MpsSlice(owner=owner, thread_pct=threads, memory_mib=memory,
                                           model=model, workload_class=workload_class))

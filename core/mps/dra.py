"""Compile an MPS slice into an NVIDIA DRA driver claim (``resource.k8s.io/v1beta1``).

With Dynamic Resource Allocation the NVIDIA GPU driver (``gpu.nvidia.com``)
reads an opaque ``GpuConfig`` from the claim and starts one MPS control daemon
per claim, with ``defaultActiveThreadPercentage`` and
``defaultPinnedDeviceMemoryLimit`` as that daemon's defaults. The driver only
accepts this when its ``MPSSupport`` feature gate is on.

Note what DRA does not do: a device allocated to one ResourceClaim is not
given to another, so every pod created from a ResourceClaimTemplate gets a
GPU of its own. Pods that should share one GPU must reference one shared
ResourceClaim (``render_shared_claim``); ``core.mps.lint`` says so for every
layout with several clients.

Invariants kept here: the objects validate against the Kubernetes
``resource.k8s.io/v1beta1`` schema in strict mode; names are DNS-1123 labels
derived deterministically from the slice owner (or the GPU key); the thread
percentage is an integer in 1..100 and the memory a ``Mi`` quantity.
"""

from __future__ import annotations

from typing import Any

from core.errors import ValidationError
from core.manifest import MANAGED_BY, dns_name, is_dns_subdomain
from core.model import MpsSlice
from core.mps.layout import GpuLayout

API_VERSION = "resource.k8s.io/v1beta1"
DRIVER = "gpu.nvidia.com"
DEVICE_CLASS = "gpu.nvidia.com"
GPU_CONFIG_API_VERSION = "resource.nvidia.com/v1beta1"
REQUEST_NAME = "gpu"


def gpu_config(*, thread_pct: int, memory_mib: int) -> dict[str, Any]:
    """The driver's opaque ``GpuConfig`` selecting MPS with these defaults."""
    if not 1 <= thread_pct <= 100:
        raise ValidationError("thread_pct", "must be within 1..100")
    if memory_mib < 0:
        raise ValidationError("memory_mib", "must be ≥ 0")
    mps_config: dict[str, Any] = {"defaultActiveThreadPercentage": thread_pct}
    if memory_mib > 0:
        # Omitted for 0: the driver reads a limit below 1 MiB as invalid.
        mps_config["defaultPinnedDeviceMemoryLimit"] = f"{memory_mib}Mi"
    return {
        "apiVersion": GPU_CONFIG_API_VERSION,
        "kind": "GpuConfig",
        "sharing": {"strategy": "MPS", "mpsConfig": mps_config},
    }


def _claim_spec(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "devices": {
            "requests": [{"name": REQUEST_NAME, "deviceClassName": DEVICE_CLASS}],
            "config": [{
                "requests": [REQUEST_NAME],
                "opaque": {"driver": DRIVER, "parameters": config},
            }],
        }
    }


def _metadata(*, name: str, namespace: str) -> dict[str, Any]:
    if not is_dns_subdomain(name):
        raise ValidationError("name", f"{name!r} is not a valid DNS-1123 subdomain")
    if len(namespace) > 63 or "." in namespace or not is_dns_subdomain(namespace):
        raise ValidationError("namespace", f"{namespace!r} is not a valid namespace")
    return {"name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}}


def claim_template_name(mps_slice: MpsSlice) -> str:
    """Deterministic template name for a slice: ``mps-<owner>``."""
    return dns_name("mps", mps_slice.owner)


def render_claim_template(
    mps_slice: MpsSlice, *, namespace: str = "default", name: str | None = None,
) -> dict[str, Any]:
    """A ResourceClaimTemplate giving one pod a GPU with the slice's MPS limits."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": _metadata(name=name or claim_template_name(mps_slice), namespace=namespace),
        "spec": {
            "spec": _claim_spec(gpu_config(thread_pct=mps_slice.thread_pct,
                                           memory_mib=mps_slice.memory_mib)),
        },
    }


def render_shared_claim(
    layout: GpuLayout, *, namespace: str = "default", name: str | None = None,
) -> dict[str, Any]:
    """One ResourceClaim for all clients of ``layout``, to be referenced by each pod.

    The daemon's defaults are the largest slice's share and memory; each pod
    narrows itself with the env of ``core.mps.env`` (MPS lets a client only
    tighten the defaults). A layout without slices has nothing to share.
    """
    if not layout.slices:
        raise ValidationError("layout", f"{layout.key} has no MPS clients to share a claim")
    thread_pct = max(s.thread_pct for s in layout.slices)
    memory_mib = max(s.memory_mib for s in layout.slices)
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaim",
        "metadata": _metadata(name=name or dns_name("mps", layout.node, f"gpu{layout.gpu_index}"),
                              namespace=namespace),
        "spec": _claim_spec(gpu_config(thread_pct=thread_pct, memory_mib=memory_mib)),
    }

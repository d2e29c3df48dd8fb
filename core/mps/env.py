"""Per-pod MPS limits as container environment variables.

The device plugin and the DRA driver both set one default limit for every
client of an MPS server; a pod that should get less (an uneven layout such as
50/25/25) narrows its own limits with two client-side variables that the CUDA
driver reads when the process starts. MPS only lets a client tighten the
server's limits, never widen them, so these values are the slice's *wish*; the
lint (``core.mps.lint``) reports where the server default caps it.

Invariant kept here: the values are exactly the slice's integer thread share
and integer MiB, rendered as strings in the shape a Kubernetes ``EnvVar``
takes, so that the sum of the thread values over a valid layout is the
layout's ``share_used_pct`` (never above 100).
"""

from __future__ import annotations

from core.errors import ValidationError
from core.model import MpsSlice

THREAD_PERCENTAGE_VAR = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
PINNED_MEMORY_VAR = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"


def pinned_memory_value(memory_mib: int, *, device_index: int = 0) -> str:
    """``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` for one device: ``"<index>=<MiB>M"``.

    MPS reads the ``M`` suffix as MiB. The index is the device as the container
    sees it; a pod that holds one GPU sees it as device 0.
    """
    if device_index < 0:
        raise ValidationError("device_index", "must be ≥ 0")
    if memory_mib <= 0:
        raise ValidationError("slice.memory_mib", "a pinned memory limit must be above 0 MiB")
    return f"{device_index}={memory_mib}M"


def mps_env(mps_slice: MpsSlice, *, device_index: int = 0) -> list[dict[str, str]]:
    """The MPS environment of the pod that owns ``mps_slice``.

    A slice without memory (``memory_mib == 0``) gets no pinned-memory variable:
    a zero limit would forbid every allocation rather than mean "no limit".
    """
    env = [{"name": THREAD_PERCENTAGE_VAR, "value": str(mps_slice.thread_pct)}]
    if mps_slice.memory_mib > 0:
        env.append({
            "name": PINNED_MEMORY_VAR,
            "value": pinned_memory_value(mps_slice.memory_mib, device_index=device_index),
        })
    return env


def thread_percentage(env: list[dict[str, str]]) -> int | None:
    """The active-thread percentage set in ``env``, or None when absent."""
    for var in env:
        if var.get("name") == THREAD_PERCENTAGE_VAR:
            return int(var["value"])
    return None

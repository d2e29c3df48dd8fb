"""NVML probe: what the local NVIDIA driver reports for each GPU.

Reads name, UUID, memory total/used, GPU and memory utilization, power draw
and limit, temperature and MIG mode through ``pynvml`` (from the
``nvidia-ml-py`` package). A machine without the driver or the library gets
a clear "no NVIDIA driver" result, never an exception. NVML handles never
leave this module: callers get frozen dataclasses.

Run ``python -m core.adapters.nvml_probe`` (add ``--json`` for JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GpuReading:
    index: int
    name: str
    uuid: str
    memory_total_mib: int
    memory_used_mib: int
    utilization_gpu: float  # 0..1, over the driver's last sample period
    utilization_memory: float  # 0..1
    power_w: float
    power_limit_w: float | None
    temperature_c: int | None
    mig_enabled: bool


@dataclass(frozen=True, slots=True)
class ProbeResult:
    available: bool
    driver_version: str | None
    nvml_version: str | None
    gpus: tuple[GpuReading, ...]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional(fn: Any, *args: Any) -> Any:
    """Call an NVML getter that some GPUs do not support; None when unsupported."""
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported and friends
        return None


def probe(nvml: ModuleType | None = None) -> ProbeResult:
    """Read every GPU on this machine. ``nvml`` defaults to the real ``pynvml``."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return ProbeResult(False, None, None, (),
                               "NVML library missing: install nvidia-ml-py")
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return ProbeResult(False, None, None, (),
                           f"no NVIDIA driver: NVML could not start ({exc})")
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        version = _optional(nvml.nvmlSystemGetNVMLVersion)
        readings = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            limit = _optional(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
            temp = _optional(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU)
            mig = _optional(nvml.nvmlDeviceGetMigMode, h)
            readings.append(GpuReading(
                index=i,
                name=_text(nvml.nvmlDeviceGetName(h)),
                uuid=_text(nvml.nvmlDeviceGetUUID(h)),
                memory_total_mib=int(mem.total // MIB),
                memory_used_mib=int(mem.used // MIB),
                utilization_gpu=util.gpu / 100.0,
                utilization_memory=util.memory / 100.0,
                power_w=nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,  # NVML reports milliwatts
                power_limit_w=None if limit is None else limit / 1000.0,
                temperature_c=None if temp is None else int(temp),
                mig_enabled=bool(mig and mig[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)),
            ))
        return ProbeResult(True, driver, None if version is None else _text(version),
                           tuple(readings))
    except Exception as exc:
        return ProbeResult(False, None, None, (), f"NVML query failed: {exc}")
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def format_table(result: ProbeResult) -> str:
    if not result.available:
        return f"NVML unavailable: {result.error}"
    lines = [f"driver {result.driver_version}, NVML {result.nvml_version}, "
             f"{len(result.gpus)} GPU(s)",
             f"{'idx':>3} {'name':<28} {'mem used/total MiB':>20} {'util':>5} {'mem%':>5} "
             f"{'power W':>8} {'limit W':>8} {'temp C':>6} {'MIG':>4}"]
    for g in result.gpus:
        temp = "-" if g.temperature_c is None else str(g.temperature_c)
        lines.append(
            f"{g.index:>3} {g.name[:28]:<28} {g.memory_used_mib:>9}/{g.memory_total_mib:<10} "
            f"{g.utilization_gpu:>5.0%} {g.utilization_memory:>5.0%} {g.power_w:>8.1f} "
            f"{(g.power_limit_w or 0):>8.1f} {temp:>6} "
            f"{'on' if g.mig_enabled else 'off':>4}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Read GPU telemetry through NVML.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    result = probe()
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_table(result))
    return 0 if result.available else 1


if __name__ == "__main__":
    sys.exit(main())

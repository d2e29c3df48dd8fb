"""The NVML probe: a clear state without a driver, and correct unit conversion with one."""

from __future__ import annotations

import types
from collections import namedtuple

import pytest

from core.adapters.nvml_probe import format_table, main, probe


def test_probe_without_driver_reports_a_clear_state_not_a_crash() -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        pass
    else:  # a machine with a real GPU: the probe must then read it
        pynvml.nvmlShutdown()
        result = probe()
        assert result.available and result.gpus
        return
    result = probe()
    assert not result.available
    assert result.gpus == ()
    assert "no NVIDIA driver" in (result.error or "")
    assert format_table(result).startswith("NVML unavailable: no NVIDIA driver")


def test_cli_exits_non_zero_without_driver(capsys: pytest.CaptureFixture[str]) -> None:
    result = probe()
    code = main(["--json"])
    assert code == (0 if result.available else 1)
    assert '"available"' in capsys.readouterr().out


class _NotSupported(Exception):
    pass


def _fake_nvml(*, power_mw: int, mig: tuple[int, int] | None) -> types.SimpleNamespace:
    """A stand-in for pynvml with the call shapes NVML really has (no GPU on CI)."""
    Mem = namedtuple("Mem", "total free used")
    Util = namedtuple("Util", "gpu memory")

    def mig_mode(_h: object) -> tuple[int, int]:
        if mig is None:
            raise _NotSupported("not supported")
        return mig

    return types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"580.159.04",
        nvmlSystemGetNVMLVersion=lambda: "13.580.159.04",
        nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: ("h", i),
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUUID=lambda h: "GPU-1234",
        nvmlDeviceGetMemoryInfo=lambda h: Mem(81559 * 2**20, 61559 * 2**20, 20000 * 2**20),
        nvmlDeviceGetUtilizationRates=lambda h: Util(87, 40),
        nvmlDeviceGetPowerUsage=lambda h: power_mw,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        nvmlDeviceGetTemperature=lambda h, sensor: 61,
        NVML_TEMPERATURE_GPU=0, NVML_DEVICE_MIG_ENABLE=1,
        nvmlDeviceGetMigMode=mig_mode,
    )


def test_probe_converts_nvml_units_to_mib_fractions_and_watts() -> None:
    result = probe(_fake_nvml(power_mw=512_345, mig=(0, 0)))
    assert result.available and result.driver_version == "580.159.04"
    (g,) = result.gpus
    assert (g.name, g.uuid) == ("NVIDIA H100 80GB HBM3", "GPU-1234")
    assert (g.memory_total_mib, g.memory_used_mib) == (81559, 20000)
    assert (g.utilization_gpu, g.utilization_memory) == (0.87, 0.40)
    assert g.power_w == pytest.approx(512.345)
    assert g.power_limit_w == 700.0 and g.temperature_c == 61 and not g.mig_enabled


def test_probe_tolerates_getters_a_gpu_does_not_support() -> None:
    (g,) = probe(_fake_nvml(power_mw=100_000, mig=None)).gpus
    assert g.mig_enabled is False

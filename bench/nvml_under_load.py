"""Proof that the NVML probe reads real telemetry: idle, then under a GPU load.

Run on a machine with an NVIDIA GPU: ``python -m bench.nvml_under_load``.
It probes once idle, then starts a matrix-multiply load in a child process
(PyTorch, when installed) that also holds a known amount of GPU memory, and
probes every second while the load runs. Memory used, utilization and power
should all rise; the last line summarises idle against loaded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from core.adapters.nvml_probe import ProbeResult, format_table, probe

LOAD = """
import sys, time, torch
hold_gib, seconds = float(sys.argv[1]), float(sys.argv[2])
held = torch.empty(int(hold_gib * 2**30), dtype=torch.uint8, device="cuda")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + seconds
while time.time() < end:
    for _ in range(20):
        a = (a @ b).clamp_(-1, 1)
    torch.cuda.synchronize()
print("load done", float(a.float().mean()))
"""


def first_gpu(result: ProbeResult) -> tuple[int, float, float]:
    g = result.gpus[0]
    return g.memory_used_mib, g.utilization_gpu, g.power_w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--hold-gib", type=float, default=16.0)
    args = parser.parse_args(argv)
    idle = probe()
    print("== idle ==")
    print(format_table(idle))
    if not idle.available or not idle.gpus:
        return 1
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(args.hold_gib), str(args.seconds)])
    samples = []
    try:
        time.sleep(3.0)
        while load.poll() is None and len(samples) < int(args.seconds) - 3:
            reading = probe()
            samples.append(reading)
            print(f"== under load, sample {len(samples)} ==")
            print(format_table(reading))
            time.sleep(1.0)
    finally:
        load.wait(timeout=args.seconds + 60)
    if not samples:
        print("no samples taken under load")
        return 1
    peak = max(samples, key=lambda r: first_gpu(r)[2])
    m0, u0, p0 = first_gpu(idle)
    m1, u1, p1 = first_gpu(peak)
    print(f"nvml_under_load gpu={idle.gpus[0].name!r} idle_mem_mib={m0} idle_util={u0:.2f} "
          f"idle_power_w={p0:.1f} load_mem_mib={m1} load_util={u1:.2f} load_power_w={p1:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

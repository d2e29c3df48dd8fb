"""The controller process: ``python -m app.controller`` or ``gsc-controller``.

Builds the runtime from settings (``app.bootstrap``), then runs the controller
loop (``core.controller``: lease, monitoring, autoscaling, feedback, placement)
until SIGTERM, serving its metrics on ``/metrics`` at ``metrics_host``
(``[runtime.controller]``: loopback unless configured; the Deployment binds
``0.0.0.0`` so that Prometheus can scrape the pod). Several replicas may run;
exactly one leads. The console runs the same loop in a thread in embedded mode.
"""

from __future__ import annotations

import argparse
import logging
import platform
import signal

from app.bootstrap import build_controller, build_runtime, freeze_long_lived, process_identity
from app.malloc import limit_arenas
from core.adapters.exporter import serve_registry
from core.adapters.settings_source import load_settings
from core.clock import SystemClock
from core.controller import PlacementConfig
from core.settings import Settings

log = logging.getLogger(__name__)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line; every default comes from ``[runtime.controller]``."""
    defaults = settings.runtime.controller
    parser = argparse.ArgumentParser(
        description="GPU Scheduler Console controller (defaults: [runtime.controller])")
    parser.add_argument("--interval", type=float, default=defaults.interval_s)
    parser.add_argument("--lease-ttl", type=float, default=defaults.lease_ttl_s,
                        help="seconds a leader's lease lasts without renewal")
    parser.add_argument("--claim-lease", type=float, default=defaults.claim_lease_s,
                        help="seconds a claimed request stays with a controller that stopped "
                             "before it is retried")
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                        help="serve the controller's /metrics here (0: any free port)")
    parser.add_argument("--metrics-host", default=defaults.metrics_host,
                        help="address the /metrics server binds (0.0.0.0: every interface)")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    limit_arenas(settings.runtime.malloc_arena_max)  # before any thread starts
    runtime = build_runtime(settings, background=False)
    freeze_long_lived()
    identity = process_identity("controller", settings)
    loop = build_controller(factory=runtime.factory, cluster=runtime.cluster,
                            clock=SystemClock(), settings=settings,
                            identity=identity, lease_ttl_s=args.lease_ttl,
                            interval_s=args.interval, monitor=runtime.monitor,
                            placement=PlacementConfig(lease_seconds=args.claim_lease))
    exporter = serve_registry(loop.metrics.registry, host=args.metrics_host,
                              port=args.metrics_port)
    log.info("controller metrics at http://%s:%d/metrics (bound to %s)", platform.node(),
             exporter.port, exporter.host)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    try:
        loop.run()
    finally:
        exporter.stop()
        runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

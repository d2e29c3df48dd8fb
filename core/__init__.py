"""GPU Scheduler Console: the pure domain (no I/O) plus adapters at the edge."""

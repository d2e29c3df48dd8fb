"""Safe MPS configuration changes (SPEC §4): plans, strategies as durable steps, the state
machine, canary analysis and the circuit breaker. Pure: no I/O, no clocks; the controller
step (``core.controller.rollout``) runs it through the ports."""

"""glibc's limit on malloc arenas, applied at a process's start (``[runtime]
malloc_arena_max``, or glibc's own ``MALLOC_ARENA_MAX``).

Why: glibc gives each thread that allocates its own arena, up to 8 per core, and keeps
the pages freed into each of them. The console runs the monitor, the controller loop,
the twin's ticker, the history backfill and Streamlit's script threads. At 5,000 GPUs a
console backfilling 3 h peaked at 532 and 583 MB with glibc's default, 460 and 502 MB
with two arenas (two runs each; SPEC §7: ≤ 500 MB). Call it before the process starts its
threads: arenas that exist already are kept.

Invariants: changes nothing where the C library is not glibc (no ``mallopt``) or the
limit is 0; never raises.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # <malloc.h>


def limit_arenas(arenas: int) -> bool:
    """Cap this process's malloc arenas at ``arenas``; whether the C library took it."""
    if arenas <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    taken = mallopt(M_ARENA_MAX, arenas) == 1
    if not taken:
        log.info("the C library did not take a limit of %d malloc arenas", arenas)
    return taken

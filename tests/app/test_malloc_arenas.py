"""The malloc arena limit: a setting (or glibc's own MALLOC_ARENA_MAX) checked before
use, and applied for real: a process whose threads allocate at once ends with no more
arenas than the limit, counted by glibc's own ``malloc_stats``."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from core.adapters.settings_source import load_settings
from core.errors import ValidationError

PROBE = """
import ctypes, sys, threading
from app.malloc import limit_arenas
took = limit_arenas(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
start = threading.Barrier(8)
def work():
    start.wait()
    blocks = [libc.malloc(4096) for _ in range(200)]
    for b in blocks:
        libc.free(b)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(took, flush=True)
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def glibc() -> bool:
    return platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "malloc_stats")


def arenas_after_threads(limit: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(limit)], capture_output=True,
                         text=True, timeout=60, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "."})
    return out.stdout.strip(), out.stderr.count("Arena ")


@pytest.mark.skipif(not glibc(), reason="the arena limit is glibc's (mallopt M_ARENA_MAX)")
def test_threads_that_allocate_at_once_share_the_limited_arenas() -> None:
    took, limited = arenas_after_threads(2)
    assert took == "True"
    assert 1 <= limited <= 2
    # Without a limit the same threads get arenas of their own (glibc: up to 8 per core).
    took, unlimited = arenas_after_threads(0)
    assert took == "False"
    assert unlimited > 2


def test_the_default_is_two_and_glibcs_variable_sets_it() -> None:
    assert load_settings(env={}).runtime.malloc_arena_max == 2
    assert load_settings(env={"MALLOC_ARENA_MAX": "4"}).runtime.malloc_arena_max == 4
    assert load_settings(env={"MALLOC_ARENA_MAX": "0"}).runtime.malloc_arena_max == 0


@pytest.mark.parametrize("value", ["many", "1.5", "-1", "257", "nan", ""])
def test_a_bad_limit_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_settings(env={"MALLOC_ARENA_MAX": value})
    assert err.value.field == "MALLOC_ARENA_MAX (runtime.malloc_arena_max)"

"""Host (CPU-side) process settings that training and benchmarks opt into at start-up."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache
def retain_freed_host_memory() -> bool:
    """Make glibc serve large allocations from the heap and keep freed memory for reuse.

    XLA:CPU allocates a step's whole temporary buffer (50 MiB for the tiny benchmark model,
    GiBs at scale) on every call. Above glibc's 32 MiB mmap ceiling that is a fresh mmap per
    call whose every page faults in again: 15k faults, about 20 ms of a 40 ms tiny SFT step.
    Process-wide and one-way (the resident size stays at its peak, which a training process
    reaches every step anyway).

    Arenas are left at glibc's default. Capping them at one removes the remaining faulting
    steps (XLA:CPU runs a step on whichever pool thread is free, and a thread arena deletes a
    heap that becomes entirely free whatever the trim threshold: 7 of 60 steps faulted 12.8k
    pages each under load), but every allocation then takes one lock: on a quiet 2-core Xeon
    the tiny SFT step ran 14.0k tokens/s with one arena, 16.8k with two and 19.9k uncapped
    (2026-12-02, benchmarks/sft_step.py minutes apart), with no faulting step uncapped.
    Call before the XLA thread pools exist.
    Returns whether it applied (Linux glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def runs_on_cpu_only() -> bool:
    """Whether JAX will pick the CPU backend, decided without starting a backend (so that
    `retain_freed_host_memory` can run before XLA's thread pools exist): JAX_PLATFORMS when
    set, else whether an accelerator plugin (jax_plugins.*, libtpu) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(m) for m in ("jax_plugins", "libtpu"))

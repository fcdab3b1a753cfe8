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


# XNNPACK's matmuls instead of XLA:CPU's own: the same f32 results (parity tests at 1e-4
# pass), and the SFT step at hidden 512 ran 1.10x -> 1.85x transformers (2026-12-03, AMD EPYC,
# benchmarks/sizes.py row, minutes apart); no change at the tiny default's hidden 128.
CPU_XLA_FLAGS = ("--xla_cpu_use_xnnpack=true",)


def with_cpu_xla_flags(flags: str) -> str:
    """`flags` (an XLA_FLAGS value) plus each of CPU_XLA_FLAGS that it does not set itself."""
    extra = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
    return " ".join([flags, *extra]).strip()


def tune_cpu_backend() -> None:
    """The CPU settings that `python -m launch` and the benchmarks run with. Call before any
    JAX backend starts (XLA reads its flags once, and the allocator setting must precede its
    thread pools).

    - freed heap memory is kept (`retain_freed_host_memory`);
    - XLA flags of CPU_XLA_FLAGS are added to XLA_FLAGS unless it already sets them;
    - programs run on the calling thread (`jax_cpu_enable_async_dispatch=False`). A step
      executed on an XLA pool thread allocates its buffers from that thread's glibc arena,
      whose heaps are at most 64 MiB and are unmapped when entirely free (buffers above that
      are always mmap'd), so every step page-faults its scratch memory in again (measured:
      all 30 of 30 tiny SFT steps in one run, 32k faults per step at hidden 512). The main
      thread allocates from the main heap, which `retain_freed_host_memory` keeps: 0-3 faulting
      steps of 30. The host-side work that async dispatch would overlap (batch assembly,
      logging) is under a millisecond a step and shares the same cores anyway."""
    retain_freed_host_memory()
    os.environ["XLA_FLAGS"] = with_cpu_xla_flags(os.environ.get("XLA_FLAGS", ""))
    import jax  # importing starts no backend: XLA_FLAGS set later still apply

    jax.config.update("jax_cpu_enable_async_dispatch", False)


def runs_on_cpu_only() -> bool:
    """Whether JAX will pick the CPU backend, decided without starting a backend (so that
    `retain_freed_host_memory` can run before XLA's thread pools exist): JAX_PLATFORMS when
    set, else whether an accelerator plugin (jax_plugins.*, libtpu) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(m) for m in ("jax_plugins", "libtpu"))

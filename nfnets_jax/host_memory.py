"""Keeping freed host memory for reuse, so XLA:CPU steps stop page-faulting.

XLA:CPU allocates every execution's temporary buffer and outputs with ``posix_memalign``
from one of its worker threads. glibc serves a request above 64 MiB in a thread's own
arena with a fresh ``mmap`` and unmaps it when freed, whatever ``M_MMAP_MAX`` says (a
thread arena cannot grow past 64 MiB, so it falls back to ``mmap``). An NFNet training
step's temporary buffer is hundreds of MiB (about 690 MiB for F0 at batch 8 and 128 px),
so each step faults it in again, 4 KiB page by page, zeroing each one: about 178,000 minor
page faults per F0 step on our 2-core CPU (getrusage's ``ru_minflt``, measured by hand).

:func:`keep_host_memory` makes every thread allocate from glibc's main arena
(``M_ARENA_MAX=1``), which honours ``M_MMAP_MAX=0`` and grows with ``brk``, and keeps up
to 2 GiB of freed memory at its top instead of returning it (``M_TRIM_THRESHOLD``). The
second step on reuses the first one's pages: no faults. The cost is that the process
holds on to its peak memory, and that threads share one malloc arena (small allocations
still come from per-thread caches).

It only helps if it runs before the threads it is for first allocate, that is before JAX
initialises its CPU backend. It is opt-in: ``NFNETS_JAX_KEEP_HOST_MEMORY=1`` makes
``experiments.train`` call it first thing on a CPU-only host. It pays off for large steps
(an F0 step, buffers far above 64 MiB) and costs small ones: with one arena, the input
pipeline's threads and XLA's contend for malloc, and the ``nfnet_demo`` quickstart
trained at about 1,500 images/s with it against 2,600 without. The benchmarks that set
nfnets_jax against timm (``benchmarks/vs_timm.py``, ``benchmarks/train_step.py``) turn it
on and say so. See https://man7.org/linux/man-pages/man3/mallopt.3.html.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

__all__ = ["ENV_VAR", "cpu_only_host", "keep_host_memory", "requested"]

ENV_VAR = "NFNETS_JAX_KEEP_HOST_MEMORY"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: keep up to 2 GiB of free memory
_ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm_plugin")


def cpu_only_host() -> bool:
    """Whether JAX will run on the CPU alone, decided without initialising a backend.

    True when ``JAX_PLATFORMS`` is ``'cpu'``, or when it is unset and no GPU or TPU
    plugin (``jax_plugins`` entry points, libtpu, the CUDA/ROCm plugins) is installed.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_MODULES)


def requested() -> bool:
    """Whether ``NFNETS_JAX_KEEP_HOST_MEMORY`` asks for :func:`keep_host_memory` (``1``).

    Example:
        >>> import os
        >>> os.environ["NFNETS_JAX_KEEP_HOST_MEMORY"] = "1"
        >>> requested()
        True
        >>> del os.environ["NFNETS_JAX_KEEP_HOST_MEMORY"]
        >>> requested()
        False
    """
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def keep_host_memory() -> bool:
    """Makes glibc reuse freed memory instead of unmapping it (see the module docstring).

    Call it before JAX's first computation. It changes the whole process.

    Returns:
        Whether the settings were applied: False off Linux/glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return all(mallopt(param, value) == 1 for param, value in settings)

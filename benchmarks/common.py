"""What every benchmark script shares: machine description, timing, memory, recording."""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable

BENCHMARKS_MD = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md"
)


def _vector_isa(flags: set[str]) -> str:
    """The widest x86 vector extension among /proc/cpuinfo ``flags`` ('' if none known)."""
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")):
        if flag in flags:
            return name
    return ""


def machine() -> str:
    """CPU model and vector ISA, cores, RAM and the load average now (may be shared).

    The vector ISA is named because the same model name ("AMD EPYC" in a VM) covers CPUs
    with and without AVX-512, and XLA's and PyTorch's kernels differ most there.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = next(
            (line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []
        )
        isa = _vector_isa(set(flags))
        cpu = f"{cpu} ({isa})" if isa else cpu
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, load average {load}"


def versions(*modules) -> str:
    """`'Python 3.11.7, jax 0.10.2, ...'` for the given imported modules."""
    parts = [f"Python {platform.python_version()}"]
    for module in modules:
        name = getattr(module, "__name__", str(module)).split(".")[0]
        parts.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(parts)


def median_seconds(fn: Callable[[], object], steps: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `steps` calls; `fn` must block until done."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory() -> tuple[float, str]:
    """Peak bytes of device 0 if the backend reports it, else the process peak RSS."""
    import jax

    stats = jax.local_devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "device peak"
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "process peak RSS"


def matmul_run(dtype, n: int = 2048):
    """A jitted dense n x n matmul (2 n^3 FLOPs); calling it runs one and waits for it."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return lambda: jax.block_until_ready(f(a, a))


def matmul_peak(dtype, n: int = 2048) -> float:
    """FLOP/s of a jitted dense n x n matmul (2 n^3 FLOPs): the run's reference peak."""
    return 2.0 * n**3 / median_seconds(matmul_run(dtype, n), steps=5, warmup=2)


def write_section(title: str, text: str, path: str = BENCHMARKS_MD) -> None:
    """Replaces the `title` section (e.g. '## Model step') of BENCHMARKS.md, or appends it."""
    content = "# Benchmarks\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            content = f.read()
    text = text.rstrip("\n") + "\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(content):
        content = pattern.sub(lambda _: text + "\n", content)
    else:
        content = content.rstrip("\n") + "\n\n" + text
    with open(path, "w", encoding="utf-8") as f:
        f.write(content.rstrip("\n") + "\n")
    print(f"recorded '{title}' in {path}")

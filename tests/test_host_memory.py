"""keep_host_memory: XLA:CPU's large buffers are reused instead of faulted in each call."""

import json
import os
import platform
import subprocess
import sys

import pytest

from nfnets_jax import host_memory

# An 80 MiB temporary buffer per call (tanh(x @ w1), [81920, 256] float32): above the
# 64 MiB a glibc thread arena serves without mmap.
_PROBE = """
import json, resource, statistics, sys
from nfnets_jax.host_memory import keep_host_memory
applied = keep_host_memory() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp
w1, w2 = jnp.ones((64, 256)), jnp.ones((256, 1))
f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ w1) @ w2))
x = jnp.ones((81920, 64))
f(x).block_until_ready()
faults = []
for _ in range(40):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": statistics.median(faults)}))
"""


def _faults_per_call(mode, **env):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_large_xla_buffers_are_reused_instead_of_faulted_in():
    pages = 80 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    default = _faults_per_call("default")
    kept = _faults_per_call("keep")
    assert not default["applied"] and kept["applied"]
    # Without it, every call faults its fresh buffer in page by page. With it, the heap
    # grows now and then (buffers are freed asynchronously, and an aligned request may
    # not fit a freed chunk), so the median call is the robust figure: it faults nothing.
    assert default["faults"] > 0.9 * pages
    assert kept["faults"] < 0.01 * pages


@pytest.mark.parametrize("value,wanted", [("1", True), ("on", True), ("0", False), ("", False)])
def test_it_is_requested_by_the_environment_only(monkeypatch, value, wanted):
    monkeypatch.setenv(host_memory.ENV_VAR, value)
    assert host_memory.requested() is wanted


def test_cpu_only_host_follows_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.cpu_only_host()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not host_memory.cpu_only_host()
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(host_memory.importlib.metadata, "entry_points", lambda group: [])
    assert host_memory.cpu_only_host()
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: name == "libtpu")
    assert not host_memory.cpu_only_host()

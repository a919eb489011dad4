"""Test-wide setup: four fake CPU devices, no network, quiet TensorFlow.

Must run before JAX or TensorFlow is imported, which pytest guarantees for the root
conftest.
"""

import ipaddress
import os
import socket
import sys
import tempfile

# torch's CUDA build (requirements-timm.txt) brings Triton, whose extension segfaults when
# it loads after TensorFlow (triton 3.8, TF 2.21). CPU torch and timm never need it.
sys.modules.setdefault("triton", None)

# Four fake CPU devices so every test can exercise real multi-device code paths.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Persistent XLA compilation cache shared by test processes and their subprocesses: the
# same small models are compiled by many tests, and compilation dominates their time.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), "nfnets_jax_test_compilation_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tfds and google-auth probe GCE metadata servers; never let them try.
os.environ["NO_GCE_CHECK"] = "true"
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# absl-based code (and grain workers) expect parsed flags.
flags.FLAGS.mark_as_parsed()


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach a non-loopback address."""


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_local(host) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _guarded_connect(sock, address, *args):
    host = address[0] if isinstance(address, tuple) else None
    if sock.family == socket.AF_UNIX or _is_local(host):
        return _real_connect(sock, address, *args)
    raise NetworkAccessError(f"Tests must not touch the network (tried to connect to {address}).")


def _guarded_connect_ex(sock, address, *args):
    host = address[0] if isinstance(address, tuple) else None
    if sock.family == socket.AF_UNIX or _is_local(host):
        return _real_connect_ex(sock, address, *args)
    raise NetworkAccessError(f"Tests must not touch the network (tried to connect to {address}).")


def _guarded_getaddrinfo(host, *args, **kwargs):
    if isinstance(host, bytes):
        host = host.decode()
    if _is_local(host):
        return _real_getaddrinfo(host, *args, **kwargs)
    raise NetworkAccessError(f"Tests must not touch the network (tried to resolve {host!r}).")


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo


@pytest.fixture(scope="session")
def num_devices() -> int:
    import jax

    return jax.device_count()

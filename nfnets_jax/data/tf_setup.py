"""How nfnets_jax loads TensorFlow, which only runs its input pipelines.

* The notices TensorFlow prints from C++ while its libraries load (oneDNN custom
  operations, CPU features, absl's pre-initialisation warning) are dropped, since no log
  level reaches them; every other line printed meanwhile is passed on. Set
  ``TF_CPP_MIN_LOG_LEVEL=0`` to see them (``--verbose`` on the command lines does).
* TensorFlow is kept off GPUs, which JAX uses.

Every module of the project that uses TensorFlow imports it from here
(``from nfnets_jax.data.tf_setup import tf``), so whichever comes first, the import is
quiet and TensorFlow stays off the GPUs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from types import ModuleType

__all__ = ["import_tensorflow", "tf"]

# Lines TensorFlow writes to stderr while it loads, before any log level applies.
_IMPORT_BANNERS = (
    "oneDNN custom operations are on",
    "All log messages before absl::InitializeLog() is called",
    "cpu_feature_guard.cc",
    "This TensorFlow binary is optimized",
    "To enable the following instructions:",
)


def _import_without_banners() -> ModuleType:
    """Imports TensorFlow with its load-time banner lines dropped from stderr.

    They are printed from C++ while the shared libraries load, so they are caught at the
    file-descriptor level; every other line written meanwhile is passed on.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if not any(b in line for b in _IMPORT_BANNERS)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
    return tf


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported quietly (see the module docstring) and kept off GPUs."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        import tensorflow as tf
    else:
        tf = _import_without_banners()
    # A RuntimeError means TF already initialised its devices: leave them as they are.
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")
    return tf


tf = import_tensorflow()

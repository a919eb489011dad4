"""What the project's command lines share: a quiet console and one message per mistake.

Every entry point (`experiments.train`, `evaluate`, `predict`, `export`, `signal_prop`,
`nfnets_jax.data.prepare`) runs its work through :func:`run_main`, so an
:class:`~nfnets_jax.errors.NFNetsError` prints ``error: <message>`` on stderr and exits
with the error's code, without a traceback, and Ctrl-C exits 130 with one line. They
call :func:`quiet_console` first, which keeps the libraries' start-up banners
(TensorFlow's oneDNN and CPU-feature notices and C++ INFO lines, JAX's backend discovery
and distributed-service INFO lines) out of the output unless ``--verbose`` is given or
the usual environment variables (``TF_CPP_MIN_LOG_LEVEL``, ``JAX_LOGGING_LEVEL``) ask for
them. The run's own lines and every warning stay.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from nfnets_jax.errors import NFNetsError

__all__ = ["quiet_console", "run_main", "wants_verbose"]

# JAX logs each accelerator platform it fails to find ("Unable to initialize backend
# 'tpu'") and its distributed service's connections at INFO; absl's handler prints them.
_JAX_LOGGER = "jax"
_VERBOSE_FLAGS = ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")


def wants_verbose(argv: Sequence[str]) -> bool:
    """Whether a command line asks for the libraries' start-up output (``--verbose``)."""
    return any(arg in _VERBOSE_FLAGS for arg in argv)


def quiet_console(verbose: bool = False) -> None:
    """Keeps TensorFlow's and XLA's start-up banners out of a command's output.

    Call it first thing, before TensorFlow or JAX do any work. TensorFlow itself is
    loaded through `nfnets_jax.data.tf_setup` when first needed, which drops its
    load-time notices unless ``TF_CPP_MIN_LOG_LEVEL=0``.

    Args:
        verbose: show everything (``--verbose``): ``TF_CPP_MIN_LOG_LEVEL`` is set to 0 and
            JAX logs at its own level. Otherwise ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2
            (TensorFlow's C++ INFO and WARNING lines; a value the user set is kept) and
            JAX's INFO lines are dropped unless ``JAX_LOGGING_LEVEL`` is set.
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not verbose and not os.environ.get("JAX_LOGGING_LEVEL"):
        logging.getLogger(_JAX_LOGGER).setLevel(logging.WARNING)


def run_main(main: Callable[[], int | None]) -> int:
    """Runs a command's `main()` and turns anticipated errors into an exit status.

    Returns:
        `main()`'s status (0 for None); for an :class:`~nfnets_jax.errors.NFNetsError`,
        its ``exit_code`` after printing ``error: <message>`` on stderr; 130 after Ctrl-C.
        Other exceptions propagate with their traceback: they are bugs.
    """
    try:
        status = main()
    except NFNetsError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr, flush=True)
        return 130
    return 0 if status is None else int(status)

"""The base class of every error nfnets_jax raises on purpose.

A mistake the project anticipates (a bad config value, a missing dataset, a checkpoint
that does not fit the model, an unreadable image, a non-finite loss) raises a subclass
of :class:`NFNetsError` whose message says what was wrong and what to do. The command
lines (`experiments.*`, `nfnets_jax.data.prepare`, `launch.*`) print that message as
one line group, without a traceback, and exit with the error's :attr:`exit_code`;
anything else is a bug and keeps its traceback.

The subclasses keep the builtin base their callers caught before (`ValueError`,
`FileNotFoundError`, `RuntimeError`, `pickle.UnpicklingError`), so
``except ValueError`` code goes on working:

* :class:`ConfigError` (exit 2): a config field or command-line flag to change (also
  importable as ``nfnets_jax.training.ConfigError``).
* :class:`nfnets_jax.data.DatasetError` (exit 2): a dataset name, split or directory.
* :class:`nfnets_jax.checkpoints.CheckpointMismatchError`,
  :class:`nfnets_jax.checkpoints.UnsafePickleError`,
  :class:`nfnets_jax.checkpoints.UnrecognizedCheckpointError` and
  :class:`nfnets_jax.training.CheckpointError` (exit 1): a checkpoint that cannot be used;
  :class:`nfnets_jax.checkpoints.CheckpointNotFoundError` (exit 2): none there.
* :class:`nfnets_jax.training.NonFiniteLossError` (exit 1): training diverged.
* :class:`ImageError` (exit 1): an image that cannot be decoded;
  :class:`ImageNotFoundError` (exit 2): an image path that is not a file.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ImageError", "ImageNotFoundError", "NFNetsError"]


class NFNetsError(Exception):
    """An anticipated mistake or failure; the message says what to change.

    Attributes:
        exit_code: the status a command line exits with for this error: 2 for a usage
            mistake (fix the command), 1 for an input or run that failed.
    """

    exit_code = 1


class ConfigError(NFNetsError, ValueError):
    """A config is malformed or inconsistent; the message says what to change."""

    exit_code = 2


class ImageError(NFNetsError, ValueError):
    """An image that cannot be read or decoded (named in the message)."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """Image paths that are not files (all of them named in the message)."""

    exit_code = 2

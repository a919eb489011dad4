"""Launchers for Cloud TPU VMs (`launch.tpu_vm`) and SLURM GPU clusters (`launch.slurm`)."""

from __future__ import annotations

from collections.abc import Sequence


def split_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits a launcher's argv at ``--``: (launcher flags, arguments for experiments.train).

    Example:
        >>> split_train_args(['run', '--name=x', '--', '--config.seed=1'])
        (['run', '--name=x'], ['--config.seed=1'])
        >>> split_train_args(['run'])
        (['run'], [])
    """
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1 :]

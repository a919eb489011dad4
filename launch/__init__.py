"""Launchers for Cloud TPU VMs (`launch.tpu_vm`) and SLURM GPU clusters (`launch.slurm`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

# What to install for the programs the launchers call.
_INSTALL_HINTS = {
    "gcloud": "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)",
    "sbatch": "run it on a SLURM login node",
    "git": "install git",
}


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


def run_command(command: Sequence[str]) -> int:
    """Runs one launcher command; a program that is not installed is one error line.

    Returns:
        The command's exit status, or 2 (after printing what to install) when its
        program is not on PATH.
    """
    try:
        return subprocess.run(list(command), check=False).returncode
    except FileNotFoundError:
        program = command[0]
        hint = _INSTALL_HINTS.get(program, f"install {program}")
        print(
            f"error: {program!r} is not on PATH: {hint}, or pass --dry_run to print the "
            "commands instead.",
            file=sys.stderr,
        )
        return 2

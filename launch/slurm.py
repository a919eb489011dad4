r"""Multi-node GPU training under SLURM: writes an sbatch script and submits it.

    # 2 nodes x 8 GPUs, one process per GPU (the default):
    python -m launch.slurm --nodes=2 --gpus_per_node=8 --config=nfnet_f0 \
        --workdir=/shared/runs/nfnet_f0 --partition=gpu --time=72:00:00 \
        -- --config.dataset.data_dir=/shared/tensorflow_datasets

    # Only print the script and the sbatch command:
    python -m launch.slurm --nodes=2 --gpus_per_node=8 --config=nfnet_f0 \
        --workdir=/shared/runs/nfnet_f0 --dry_run

Two layouts (`--layout`):

* `task_per_gpu` (default): `--ntasks-per-node=GPUS`. `experiments.train --distributed=on`
  calls `jax.distributed.initialize()`, which reads the coordinator (first node of the
  job, port derived from the job id), the process count and id (`SLURM_NTASKS`,
  `SLURM_PROCID`) and gives each process the GPU `SLURM_LOCALID` by itself.
* `task_per_node`: one process per node drives all its GPUs. The script passes the
  runner's `--coordinator_address` (first node, `--port`), `--num_processes`
  (`$SLURM_NTASKS`) and `--process_id` (`$SLURM_PROCID`), and sets
  `JAX_LOCAL_DEVICE_IDS=0,...,GPUS-1`, since JAX's SLURM detection would otherwise give
  the process only GPU `SLURM_LOCALID` (0).

The workdir and the dataset must be on a filesystem every node sees. Rerunning the same
script resumes from the newest checkpoint; `scancel` sends SIGTERM first, on which the
runner saves a checkpoint (`--signal` asks SLURM for that before the time limit too).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from launch import run_command, split_train_args

LAYOUTS = ("task_per_gpu", "task_per_node")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SIGTERM 5 minutes before the time limit (the runner checkpoints on SIGTERM).
SIGNAL_BEFORE_END = "TERM@300"


def train_command(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    return [
        "python",
        "-m",
        "experiments.train",
        f"--config={args.config}",
        f"--workdir={args.workdir}",
        "--distributed=on",
        *extra,
    ]


def sbatch_script(args: argparse.Namespace, extra: Sequence[str] = ()) -> str:
    """The text of the sbatch script for ``args`` (see the module docstring)."""
    per_gpu = args.layout == "task_per_gpu"
    tasks_per_node = args.gpus_per_node if per_gpu else 1
    cpus_per_task = args.cpus_per_gpu * (1 if per_gpu else args.gpus_per_node)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --signal={SIGNAL_BEFORE_END}",
        "#SBATCH --output=%x-%j.out",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.account:
        lines.append(f"#SBATCH --account={args.account}")
    lines += ["", "set -euo pipefail", f"cd {shlex.quote(args.repo)}"]
    if args.venv:
        lines.append(f"source {shlex.quote(os.path.join(args.venv, 'bin', 'activate'))}")
    train = " ".join(shlex.quote(part) for part in train_command(args, extra))
    if per_gpu:
        lines += [
            "# One process per GPU: jax.distributed.initialize() reads SLURM_* by itself.",
            f"srun --kill-on-bad-exit=1 {train}",
        ]
    else:
        device_ids = ",".join(str(i) for i in range(args.gpus_per_node))
        lines += [
            "# One process per node, all its GPUs; process 0 runs on the first node.",
            f"export JAX_LOCAL_DEVICE_IDS={device_ids}",
            'COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
            f':{args.port}"',
            "export COORDINATOR",
            "srun --kill-on-bad-exit=1 bash -c "
            + shlex.quote(
                f'exec {train} --coordinator_address="$COORDINATOR" '
                '--num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID"'
            ),
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parses the launcher's flags; arguments after ``--`` go to experiments.train."""
    argv, extra = split_train_args(argv)
    parser = argparse.ArgumentParser(
        prog="python -m launch.slurm",
        description="Write and submit an sbatch script for multi-node GPU training.",
        allow_abbrev=False,
    )
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus_per_node", type=int, required=True)
    parser.add_argument("--config", required=True, help="experiment config, e.g. nfnet_f0")
    parser.add_argument("--workdir", required=True, help="on a filesystem every node sees")
    parser.add_argument("--layout", choices=LAYOUTS, default="task_per_gpu")
    parser.add_argument("--job_name", default="nfnets")
    parser.add_argument("--time", default="24:00:00", help="SLURM time limit")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--cpus_per_gpu", type=int, default=8, help="input pipeline cores")
    parser.add_argument("--port", type=int, default=12345, help="task_per_node: coordinator")
    parser.add_argument("--repo", default=REPO, help="this repository on the nodes")
    parser.add_argument("--venv", default=None, help="virtual environment to activate")
    parser.add_argument("--script", default=None, help="where to write (default <job>.sbatch)")
    parser.add_argument("--dry_run", action="store_true", help="print, do not write/submit")
    args = parser.parse_args(argv)
    for name in ("nodes", "gpus_per_node", "cpus_per_gpu"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1.")
    if not 0 < args.port < 65536:
        parser.error("--port must be in 1-65535.")
    args.script = args.script or f"{args.job_name}.sbatch"
    return args, extra


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    script = sbatch_script(args, extra)
    submit = ["sbatch", args.script]
    processes = args.nodes * (args.gpus_per_node if args.layout == "task_per_gpu" else 1)
    print(
        f"# {args.nodes} node(s) x {args.gpus_per_node} GPU(s), {processes} process(es) "
        f"({args.layout}); script {args.script}:"
    )
    print(script, end="")
    print(shlex.join(submit))
    if args.dry_run:
        return 0
    with open(args.script, "w", encoding="utf-8") as f:
        f.write(script)
    return run_command(submit)


if __name__ == "__main__":
    sys.exit(main())

r"""Cloud TPU VMs, one host or a pod slice: create, install, run, follow logs, stop, delete.

Every action is a few `gcloud` commands; `--dry_run` prints them (shell-quoted) instead
of running them. Examples (a v4-32 pod slice has 4 hosts; every command reaches all):

    python -m launch.tpu_vm create  --name=nfnets --zone=us-central2-b --accelerator=v4-32
    python -m launch.tpu_vm install --name=nfnets --zone=us-central2-b --accelerator=v4-32
    python -m launch.tpu_vm run     --name=nfnets --zone=us-central2-b --accelerator=v4-32 \
        --config=nfnet_f0 --workdir=gs://my-bucket/nfnet_f0 \
        -- --config.dataset.data_dir=gs://my-bucket/tensorflow_datasets
    python -m launch.tpu_vm logs    --name=nfnets --zone=us-central2-b --accelerator=v4-32
    python -m launch.tpu_vm stop    --name=nfnets --zone=us-central2-b --accelerator=v4-32
    python -m launch.tpu_vm delete  --name=nfnets --zone=us-central2-b --accelerator=v4-32

`install` copies the committed code of this checkout (`git archive HEAD`) to every host,
creates a Python 3.11 virtual environment there and installs `requirements.txt`, the
package and `jax[tpu]` at the version requirements.txt pins. `run` starts the same
`experiments.train` command on every host in the background (`jax.distributed` finds the
other hosts of a pod slice by itself; the runner is told `--distributed=on` on pods),
writing `~/nfnets_jax_train.log`; `stop` sends it SIGTERM, on which the runner saves a
checkpoint before exiting; rerunning `run` with the same `--workdir` resumes. The
workdir and the data of a pod slice must be on storage every host sees (a GCS bucket).

Software versions per TPU generation (Cloud TPU documentation, "TPU software versions"):
`v2-alpha-tpuv6e` (v6e), `v2-alpha-tpuv5` (v5p), `v2-alpha-tpuv5-lite` (v5e) and
`tpu-ubuntu2204-base` (v4 and older).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence

from launch import run_command, split_train_args

ACTIONS = ("create", "install", "run", "logs", "stop", "delete")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = "nfnets_jax.tar.gz"  # name of the code archive, locally (in /tmp) and on hosts
REMOTE_DIR = "~/nfnets_jax"
REMOTE_VENV = "~/nfnets_jax_venv"
LOG_FILE = "~/nfnets_jax_train.log"
PID_FILE = "~/nfnets_jax_train.pid"
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
# Accelerator-type prefix -> TPU software version (Cloud TPU docs, "TPU software versions").
RUNTIME_VERSIONS = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}
# A TPU VM host drives 8 TensorCores (v2-v4, v5p: the number in 'v4-32') or 8 chips
# (v5e, v6e: the number in 'v5litepod-16'), so a slice of N has ceil(N / 8) hosts.
UNITS_PER_HOST = 8


def parse_accelerator(accelerator: str) -> tuple[str, int]:
    """``'v4-32'`` -> ``('v4', 32)``; raises ``ValueError`` for unknown types."""
    match = re.fullmatch(r"(v6e|v5p|v5litepod|v4|v3|v2)-(\d+)", accelerator)
    if not match:
        raise ValueError(
            f"Unknown accelerator type {accelerator!r}: use e.g. v4-8, v4-32, v5p-8, "
            f"v5litepod-16, v6e-8 (prefixes {', '.join(RUNTIME_VERSIONS)})."
        )
    return match.group(1), int(match.group(2))


def num_hosts(accelerator: str) -> int:
    """Hosts (TPU VM workers) of a slice: 1 for v4-8 or v5litepod-8, 4 for v4-32."""
    _, size = parse_accelerator(accelerator)
    return max(1, -(-size // UNITS_PER_HOST))


def pinned_jax_version(requirements: str = os.path.join(REPO, "requirements.txt")) -> str:
    """The ``jax==X`` pin of requirements.txt (TPU hosts install ``jax[tpu]==X``)."""
    with open(requirements, encoding="utf-8") as f:
        for line in f:
            match = re.fullmatch(r"jax==(\S+)", line.strip())
            if match:
                return match.group(1)
    raise ValueError(f"{requirements} pins no jax version (a line 'jax==X').")


def _gcloud(verb: Sequence[str], args: argparse.Namespace) -> list[str]:
    command = ["gcloud", "compute", "tpus", "tpu-vm", *verb]
    command.append(f"--zone={args.zone}")
    if args.project:
        command.append(f"--project={args.project}")
    return command


def _ssh(args: argparse.Namespace, remote: str, worker: str = "all") -> list[str]:
    return _gcloud(["ssh", args.name], args) + [f"--worker={worker}", f"--command={remote}"]


def install_script(python: str, jax_version: str) -> str:
    """The shell commands every host runs to unpack the code and install it."""
    venv_python = f"{REMOTE_VENV}/bin/python"
    return " && ".join(
        [
            "set -e",
            "sudo apt-get update -qq",
            f"sudo apt-get install -y -qq {python} {python}-venv",
            f"rm -rf {REMOTE_DIR}",
            f"mkdir -p {REMOTE_DIR}",
            f"tar -xzf ~/{ARCHIVE} -C {REMOTE_DIR}",
            f"{python} -m venv {REMOTE_VENV}",
            f"{venv_python} -m pip install -q --upgrade pip",
            f"{venv_python} -m pip install -q -r {REMOTE_DIR}/requirements.txt -e {REMOTE_DIR}",
            f"{venv_python} -m pip install -q 'jax[tpu]=={jax_version}' -f {LIBTPU_RELEASES}",
            f"{venv_python} -c 'import jax; print(jax.process_index(), jax.local_devices())'",
        ]
    )


def train_script(args: argparse.Namespace, extra: Sequence[str]) -> str:
    """The command every host runs: the trainer in the background, logging to a file."""
    train = [
        "-m",
        "experiments.train",
        f"--config={args.config}",
        f"--workdir={args.workdir}",
        "--distributed=" + ("on" if num_hosts(args.accelerator) > 1 else "auto"),
        *extra,
    ]
    # The interpreter path stays unquoted so that the remote shell expands '~'.
    quoted = f"{REMOTE_VENV}/bin/python " + " ".join(shlex.quote(part) for part in train)
    return f"cd {REMOTE_DIR} && nohup {quoted} > {LOG_FILE} 2>&1 < /dev/null & echo $! > {PID_FILE}"


def commands(action: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> list[list[str]]:
    """The commands of one action, in order (each a list of arguments).

    Raises:
        ValueError: unknown action or accelerator, or ``run`` without config/workdir.
    """
    accelerator_family, _ = parse_accelerator(args.accelerator)
    if action == "create":
        command = _gcloud(["create", args.name], args) + [
            f"--accelerator-type={args.accelerator}",
            f"--version={args.version or RUNTIME_VERSIONS[accelerator_family]}",
        ]
        if args.spot:
            command.append("--spot")
        return [command]
    if action == "install":
        archive = os.path.join("/tmp", ARCHIVE)
        return [
            ["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
            # A relative remote path lands in the home directory of every host.
            _gcloud(["scp", archive, f"{args.name}:{ARCHIVE}"], args) + ["--worker=all"],
            _ssh(args, install_script(args.python, pinned_jax_version())),
        ]
    if action == "run":
        if not args.config or not args.workdir:
            raise ValueError("run needs --config and --workdir (a gs:// path on pod slices).")
        return [_ssh(args, train_script(args, extra))]
    if action == "logs":
        return [_ssh(args, f"tail -n 200 -f {LOG_FILE}", worker=str(args.worker))]
    if action == "stop":
        # SIGTERM: the runner saves a checkpoint at the next step boundary, then exits.
        return [_ssh(args, f"kill -TERM $(cat {PID_FILE}) && rm -f {PID_FILE}")]
    if action == "delete":
        return [_gcloud(["delete", args.name], args) + ["--quiet"]]
    raise ValueError(f"Unknown action {action!r}: use one of {', '.join(ACTIONS)}.")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parses the launcher's flags; arguments after ``--`` go to experiments.train."""
    argv, extra = split_train_args(argv)
    parser = argparse.ArgumentParser(
        prog="python -m launch.tpu_vm",
        description="Create, set up, run on and delete a Cloud TPU VM or pod slice.",
        allow_abbrev=False,
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True, help="e.g. us-central2-b")
    parser.add_argument("--accelerator", required=True, help="e.g. v4-8, v4-32, v5litepod-16")
    parser.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    parser.add_argument("--version", default=None, help="TPU software version (default: per type)")
    parser.add_argument("--spot", action="store_true", help="create a Spot (preemptible) TPU")
    parser.add_argument("--python", default="python3.11", help="Python on the hosts")
    parser.add_argument("--config", default=None, help="run: experiment config, e.g. nfnet_f0")
    parser.add_argument("--workdir", default=None, help="run: workdir (gs:// for pod slices)")
    parser.add_argument("--worker", type=int, default=0, help="logs: which host to follow")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    try:
        parse_accelerator(args.accelerator)
    except ValueError as error:
        parser.error(str(error))
    return args, extra


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        planned = commands(args.action, args, extra)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    hosts = num_hosts(args.accelerator)
    print(f"# {args.action} on {args.name} ({args.accelerator}, {hosts} host(s))")
    for command in planned:
        print(shlex.join(command))
        if not args.dry_run:
            sys.stdout.flush()
            status = run_command(command)
            if status:
                print(f"error: the command above failed ({status}).", file=sys.stderr)
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The launch scripts: the exact commands their dry runs print, and valid sbatch scripts."""

import pathlib
import shlex
import subprocess
import sys

import pytest

from launch import slurm, tpu_vm

TPU = ["--name=nfnets", "--zone=us-central2-b", "--project=my-proj"]
SSH = "gcloud compute tpus tpu-vm ssh nfnets --zone=us-central2-b --project=my-proj"


def dry_run(module, argv, capsys):
    """Runs the launcher with --dry_run (before a `--` that starts the trainer's flags)."""
    assert module.main(["--dry_run"] + argv) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    "accelerator,hosts,version",
    [
        ("v4-8", 1, "tpu-ubuntu2204-base"),
        ("v4-32", 4, "tpu-ubuntu2204-base"),
        ("v3-8", 1, "tpu-ubuntu2204-base"),
        ("v5litepod-16", 2, "v2-alpha-tpuv5-lite"),
        ("v5p-128", 16, "v2-alpha-tpuv5"),
        ("v6e-4", 1, "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_create_and_host_counts(accelerator, hosts, version, capsys):
    assert tpu_vm.num_hosts(accelerator) == hosts
    lines = dry_run(tpu_vm, ["create", *TPU, f"--accelerator={accelerator}", "--spot"], capsys)
    assert lines == [
        f"# create on nfnets ({accelerator}, {hosts} host(s))",
        "gcloud compute tpus tpu-vm create nfnets --zone=us-central2-b --project=my-proj "
        f"--accelerator-type={accelerator} --version={version} --spot",
    ]


def test_tpu_install_copies_the_code_to_every_host_and_pins_jax(capsys):
    lines = dry_run(tpu_vm, ["install", *TPU, "--accelerator=v4-32"], capsys)
    archive, copy, setup = (shlex.split(line) for line in lines[1:])
    assert archive == [
        "git", "-C", tpu_vm.REPO, "archive", "--format=tar.gz",
        "--output=/tmp/nfnets_jax.tar.gz", "HEAD",
    ]  # fmt: skip
    assert copy == [
        "gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/nfnets_jax.tar.gz",
        "nfnets:nfnets_jax.tar.gz", "--zone=us-central2-b", "--project=my-proj", "--worker=all",
    ]  # fmt: skip
    assert setup[:9] == shlex.split(SSH) + ["--worker=all"]
    remote = setup[9].removeprefix("--command=").split(" && ")
    requirements = pathlib.Path(tpu_vm.REPO, "requirements.txt").read_text().splitlines()
    assert "jax==0.10.2" in requirements and tpu_vm.pinned_jax_version() == "0.10.2"
    assert remote == [
        "set -e",
        "sudo apt-get update -qq",
        "sudo apt-get install -y -qq python3.11 python3.11-venv",
        "rm -rf ~/nfnets_jax",
        "mkdir -p ~/nfnets_jax",
        "tar -xzf ~/nfnets_jax.tar.gz -C ~/nfnets_jax",
        "python3.11 -m venv ~/nfnets_jax_venv",
        "~/nfnets_jax_venv/bin/python -m pip install -q --upgrade pip",
        "~/nfnets_jax_venv/bin/python -m pip install -q -r ~/nfnets_jax/requirements.txt "
        "-e ~/nfnets_jax",
        "~/nfnets_jax_venv/bin/python -m pip install -q 'jax[tpu]==0.10.2' "
        "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html",
        "~/nfnets_jax_venv/bin/python -c 'import jax; print(jax.process_index(), "
        "jax.local_devices())'",
    ]


@pytest.mark.parametrize("accelerator,distributed", [("v4-32", "on"), ("v4-8", "auto")])
def test_tpu_run_starts_the_trainer_on_every_host(accelerator, distributed, capsys):
    argv = ["run", *TPU, f"--accelerator={accelerator}", "--config=nfnet_f0"]
    argv += ["--workdir=gs://bucket/f0", "--", "--config.dataset.data_dir=gs://bucket/tfds"]
    lines = dry_run(tpu_vm, argv, capsys)
    assert lines[1] == (
        f"{SSH} --worker=all '--command=cd ~/nfnets_jax && nohup "
        "~/nfnets_jax_venv/bin/python -m experiments.train --config=nfnet_f0 "
        f"--workdir=gs://bucket/f0 --distributed={distributed} "
        "--config.dataset.data_dir=gs://bucket/tfds > ~/nfnets_jax_train.log 2>&1 "
        "< /dev/null & echo $! > ~/nfnets_jax_train.pid'"
    )
    # The remote command is valid shell.
    remote = shlex.split(lines[1])[-1].removeprefix("--command=")
    assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0


def test_tpu_logs_stop_delete_and_errors(capsys):
    common = [*TPU, "--accelerator=v4-32"]
    assert dry_run(tpu_vm, ["logs", *common, "--worker=2"], capsys)[1] == (
        f"{SSH} --worker=2 '--command=tail -n 200 -f ~/nfnets_jax_train.log'"
    )
    assert dry_run(tpu_vm, ["stop", *common], capsys)[1] == (
        f"{SSH} --worker=all '--command=kill -TERM $(cat ~/nfnets_jax_train.pid) && "
        "rm -f ~/nfnets_jax_train.pid'"
    )
    assert dry_run(tpu_vm, ["delete", *common], capsys)[1] == (
        "gcloud compute tpus tpu-vm delete nfnets --zone=us-central2-b --project=my-proj --quiet"
    )
    assert tpu_vm.main(["run", *common, "--dry_run"]) == 2
    assert "run needs --config and --workdir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tpu_vm.main(["create", *TPU, "--accelerator=v9-8", "--dry_run"])
    assert "Unknown accelerator type 'v9-8'" in capsys.readouterr().err


SLURM = ["--nodes=2", "--config=nfnet_f0", "--workdir=/shared/runs/f0", "--repo=/src/nfnets"]


def test_slurm_one_process_per_gpu(tmp_path, capsys):
    script = tmp_path / "f0.sbatch"
    argv = SLURM + ["--gpus_per_node=8", "--partition=gpu", f"--script={script}"]
    lines = dry_run(slurm, argv + ["--", "--config.eval_batch_size=512"], capsys)
    assert lines[0] == f"# 2 node(s) x 8 GPU(s), 16 process(es) (task_per_gpu); script {script}:"
    assert lines[1:] == [
        "#!/bin/bash",
        "#SBATCH --job-name=nfnets",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --time=24:00:00",
        "#SBATCH --signal=TERM@300",
        "#SBATCH --output=%x-%j.out",
        "#SBATCH --partition=gpu",
        "",
        "set -euo pipefail",
        "cd /src/nfnets",
        "# One process per GPU: jax.distributed.initialize() reads SLURM_* by itself.",
        "srun --kill-on-bad-exit=1 python -m experiments.train --config=nfnet_f0 "
        "--workdir=/shared/runs/f0 --distributed=on --config.eval_batch_size=512",
        f"sbatch {script}",
    ]
    assert not script.exists()  # a dry run writes nothing


def test_slurm_one_process_per_node_passes_the_coordinator(tmp_path, capsys):
    script = tmp_path / "f0.sbatch"
    argv = SLURM + ["--gpus_per_node=4", "--layout=task_per_node", "--venv=/opt/venv"]
    argv += [f"--script={script}", "--port=23456"]
    lines = dry_run(slurm, argv, capsys)
    assert "#SBATCH --ntasks-per-node=1" in lines and "#SBATCH --cpus-per-task=32" in lines
    assert lines[-7:-1] == [
        "source /opt/venv/bin/activate",
        "# One process per node, all its GPUs; process 0 runs on the first node.",
        "export JAX_LOCAL_DEVICE_IDS=0,1,2,3",
        'COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):23456"',
        "export COORDINATOR",
        "srun --kill-on-bad-exit=1 bash -c 'exec python -m experiments.train "
        "--config=nfnet_f0 --workdir=/shared/runs/f0 --distributed=on "
        '--coordinator_address="$COORDINATOR" --num_processes="$SLURM_NTASKS" '
        '--process_id="$SLURM_PROCID"\'',
    ]
    assert lines[-1] == f"sbatch {script}"


def test_slurm_script_is_valid_bash_and_each_task_gets_its_own_rank(tmp_path):
    """Runs the generated srun line with a fake srun that starts 2 tasks locally."""
    args, extra = slurm.parse_args(SLURM + ["--gpus_per_node=2", "--layout=task_per_node"])
    script = slurm.sbatch_script(args, extra)
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    srun_line = script.splitlines()[-1].replace("srun --kill-on-bad-exit=1 ", "")
    srun_line = srun_line.replace("exec python", "echo python")
    fake = (
        "COORDINATOR=node7:12345; export COORDINATOR SLURM_NTASKS=2\n"
        f"for SLURM_PROCID in 0 1; do export SLURM_PROCID; {srun_line}; done\n"
    )
    out = subprocess.run(["bash", "-c", fake], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "python -m experiments.train --config=nfnet_f0 --workdir=/shared/runs/f0 "
        f"--distributed=on --coordinator_address=node7:12345 --num_processes=2 --process_id={i}"
        for i in (0, 1)
    ]


def test_slurm_writes_the_script_and_validates_flags(tmp_path, capsys):
    args, _ = slurm.parse_args(SLURM + ["--gpus_per_node=1"])
    assert args.script == "nfnets.sbatch"
    with pytest.raises(SystemExit):
        slurm.main(SLURM + ["--gpus_per_node=0", "--dry_run"])
    assert "--gpus_per_node must be >= 1" in capsys.readouterr().err


def test_launch_modules_run_as_scripts():
    done = subprocess.run(
        [sys.executable, "-m", "launch.tpu_vm", "delete", *TPU, "--accelerator=v4-8", "--dry_run"],
        capture_output=True,
        text=True,
        cwd=tpu_vm.REPO,
    )
    assert done.returncode == 0 and done.stdout.splitlines()[1].endswith("--quiet")

"""Two processes on localhost with `jax.distributed.initialize` (CPU, gloo collectives).

Each process has 2 CPU devices, so the cluster has 4: it must train exactly like one
process with all 4 devices, and the experiment runner must work across both.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from nfnets_jax.training import loop
from nfnets_jax.weights import flatten_params
from tests.training import multihost_worker
from tests.training.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(args_for_rank, timeout=400):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    processes = [
        subprocess.Popen(
            [sys.executable, *args_for_rank(rank)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        tails = [p.communicate()[0][-3000:] for p in processes]
        raise AssertionError(
            f"multi-host run timed out after {timeout}s:\n" + "\n---\n".join(tails)
        ) from None
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-5000:]
    return outputs


@pytest.mark.parametrize("parallelism", ["pmap", "shard_map"])
def test_two_hosts_train_like_one_host_with_all_devices(parallelism, multihost_run):
    outdir = multihost_run
    reference, reference_loss = multihost_worker.train_fixed_steps(parallelism)
    result = np.load(os.path.join(outdir, f"{parallelism}.npz"))
    assert int(result["step"]) == int(reference.step) == multihost_worker.NUM_STEPS
    np.testing.assert_allclose(float(result["loss"]), reference_loss, rtol=1e-6)
    for path, value in flatten_params(reference.params).items():
        np.testing.assert_allclose(result[path], value, rtol=1e-5, atol=1e-7, err_msg=path)


@pytest.fixture(scope="module")
def multihost_run(tmp_path_factory):
    outdir = str(tmp_path_factory.mktemp("multihost"))
    port = _free_port()
    outputs = _two_processes(
        lambda rank: ["-m", "tests.training.multihost_worker", str(rank), str(port), outdir]
    )
    assert "process 0 done" in outputs[0] and "process 1 done" in outputs[1]
    return outdir


def test_experiment_runs_on_two_hosts(tmp_path):
    workdir = str(tmp_path)
    port = _free_port()
    outputs = _two_processes(
        lambda rank: [
            "-m",
            "experiments.train",
            "--config=tests/training/tiny.py",
            f"--workdir={workdir}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={rank}",
        ]
    )
    # Only process 0 logs: one progress stream, one metrics file, one event file.
    assert "step 6/6" in outputs[0] and "step 6/6" not in outputs[1]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
    final = [r for r in records if "eval/num_examples" in r][-1]
    # Each host evaluated its own shard; together every example exactly once.
    assert final["eval/num_examples"] == 40
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
    # The multi-host checkpoint restores in a single process.
    state = loop.restore_state(workdir, tiny_config())
    assert int(state.step) == 6

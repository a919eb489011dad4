"""Two processes on localhost with `jax.distributed.initialize` (CPU, gloo collectives).

Each process has 2 CPU devices, so the cluster has 4: it must train exactly like one
process with all 4 devices, and the experiment runner must work across both, including
preemption (SIGTERM to one host or to both) and checkpoint reads failing on one host.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nfnets_jax.checkpoints import flatten_params
from tests.training import multihost_worker
from tests.training.tiny import restore_state, tiny_config

# Two real processes per test (jax.distributed on localhost).
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(args_for_rank):
    """Processes 0 and 1 of a cluster, 2 CPU devices each, output piped."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return [
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


def _two_processes(args_for_rank, timeout=400):
    processes = _start_two(args_for_rank)
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


def test_every_process_restores_the_same_checkpoint_despite_a_read_error_on_one(
    multihost_run,
):
    outcomes = []
    for rank in (0, 1):
        with open(os.path.join(multihost_run, f"restore_{rank}.json")) as f:
            outcomes.append(json.load(f))
    # Process 1 cannot read step 3: both fall back to step 1 together.
    assert [o["newest_unreadable"] for o in outcomes] == [{"step": 1}, {"step": 1}]
    # Process 1 can read nothing: both stop with the same kind of message.
    errors = [o["all_unreadable"]["error"] for o in outcomes]
    for error in errors:
        assert error.startswith("None of the checkpoints in ")
        assert "Delete the damaged step directories" in error
    assert "step 3: unreadable on process(es) 1 (see their logs)" in errors[0]
    assert "step 3: OSError: injected read failure of step 3" in errors[1]


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
    state = restore_state(workdir, tiny_config())
    assert int(state.step) == 6


class _Output:
    """Collects a process's output in a thread, so waiting for a line has a deadline."""

    def __init__(self, process):
        self.process = process
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, pattern, count=1, timeout=300.0):
        deadline = time.time() + timeout
        while sum(bool(re.search(pattern, line)) for line in self.lines) < count:
            if self.process.poll() is not None or time.time() > deadline:
                raise AssertionError(f"never printed {pattern!r}:\n" + self.text()[-5000:])
            time.sleep(0.05)

    def text(self):
        return "".join(self.lines)

    def finish(self, timeout=180.0):
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self._thread.join(10)
            raise AssertionError(
                "the process hung after the signal:\n" + self.text()[-5000:]
            ) from None
        self._thread.join(10)
        return self.process.returncode, self.text()


def _preempt(workdir, signalled, gap=0.0, resumed_from=None):
    """Starts a 2-process run, SIGTERMs the ranks `signalled` (`gap` s apart) after a
    few steps; returns the step both stopped at."""
    port = _free_port()
    processes = _start_two(
        lambda rank: [
            "-u",
            "-m",
            "experiments.train",
            "--config=tests/training/tiny.py",
            "--config.num_train_steps=100000",  # far more than run before the signal
            "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=0",  # only the preemption checkpoint
            f"--workdir={workdir}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={rank}",
        ]
    )
    outputs = [_Output(p) for p in processes]
    try:
        if resumed_from is not None:
            outputs[0].wait_for(f"Resumed from .* at step {resumed_from}\\.")
        outputs[0].wait_for(r"\] step +\d+/100000 \|", count=3)
        for i, rank in enumerate(signalled):
            time.sleep(gap if i else 0.0)
            processes[rank].send_signal(signal.SIGTERM)
        finished = [output.finish() for output in outputs]
    finally:
        for process in processes:
            process.kill()
    for code, text in finished:
        assert code == 0, text[-5000:]
    main = re.search(r"\] Preempted at step (\d+): the newest checkpoint", finished[0][1])
    other = re.search(r"Process 1: Preempted at step (\d+):", finished[1][1])
    assert main and other, finished[0][1][-3000:] + "\n---\n" + finished[1][1][-3000:]
    assert main.group(1) == other.group(1)  # both stopped at the same step
    return int(main.group(1))


def test_sigterm_to_one_or_both_hosts_stops_both_at_one_step_and_resumes(tmp_path):
    workdir = str(tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    # Only the second host is told: the first learns it through JAX's preemption service.
    first = _preempt(workdir, signalled=[1])
    assert sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit()) == [first]
    # Rerun: it resumes there; then both hosts get the signal, at different moments.
    second = _preempt(workdir, signalled=[0, 1], gap=0.3, resumed_from=first)
    assert second > first
    assert sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit()) == [first, second]
    assert int(restore_state(workdir, tiny_config()).step) == second

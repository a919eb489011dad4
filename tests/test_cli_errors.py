"""Every command line answers a mistake with one message, a non-zero status, no traceback.

Each row is a real subprocess: the command as a user types it, with one thing wrong
(config, dataset, checkpoint, image, workdir or flag). It asserts the exit status, that
the output names the problem, and that nothing but that message was printed: no
traceback, no library banner, no abort.
"""

import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.pretrained_helpers import grace_hopper_path, synthetic_params, write_released_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["experiments.train", "--config=tests/training/tiny.py", "--workdir={tmp}/run"]
EVALUATE = ["experiments.evaluate", "--config=tests/training/tiny.py"]
PREDICT = ["experiments.predict"]
EXPORT = ["experiments.export", "--out={tmp}/out.npz"]
SPP = ["experiments.signal_prop", "--out={tmp}/spp"]
TPU = ["launch.tpu_vm", "--name=t", "--zone=z", "--accelerator=v4-8"]
SLURM = ["launch.slurm", "--gpus_per_node=8", "--config=nfnet_f0", "--workdir=/w"]


class _Evil:
    def __reduce__(self):
        return os.system, ("true",)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bad (and good) inputs the rows point at, under `{tmp}`."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    (tmp / "evil.npz").write_bytes(
        pickle.dumps({"NFNet/~/linear": {"w": np.ones(2), "b": _Evil()}}, protocol=3)
    )
    (tmp / "notes.txt").write_text("not a checkpoint, not an image\n")
    (tmp / "a_file").write_text("")
    (tmp / "empty_dir").mkdir()
    (tmp / "fake_run" / "checkpoints" / "3").mkdir(parents=True)
    params = synthetic_params(10)
    broken = {m: sub for m, sub in params.items() if not m.startswith("NFNet/~/nf_block/")}
    write_released_layout(broken, tmp / "broken.npz")
    write_released_layout(synthetic_params(1000), tmp / "imagenet.npz")
    write_released_layout(params, tmp / "digits.npz")
    return tmp


ROWS = [
    # fmt: off
    # ---------------------------------------------------------------- train: config
    (
        "unknown preset",
        ["experiments.train", "--config=nfnet_f9", "--workdir={tmp}/r"],
        2,
        "Unknown config 'nfnet_f9'. Did you mean",
    ),
    ("unknown key", [*TRAIN, "--config.trian_steps=3"], 2, "Unknown config key 'trian_steps'"),
    ("wrong type", [*TRAIN, "--config.train_batch_size=abc"], 2, "expected an integer"),
    (
        "unset field, wrong type",
        [*TRAIN, "--config.dataset.seed=abc"],
        2,
        "--config.dataset.seed=abc: expected an integer.",
    ),
    (
        "batch not divisible",
        [*TRAIN, "--config.train_batch_size=18"],
        2,
        "train_batch_size=18 is not divisible by the 4 devices",
    ),
    (
        "warmup longer than the run",
        [*TRAIN, "--config.num_train_steps=1"],
        2,
        "optimizer.schedule.warmup_epochs=0.02 is 1.8 steps",
    ),
    (
        "augment name",
        [*TRAIN, "--config.dataset.augment_name=mixup_blur"],
        2,
        "dataset.augment_name: Augment name 'mixup_blur': unknown token 'blur'",
    ),
    (
        "train preprocessing",
        [*TRAIN, "--config.dataset.train_preproc=zoom"],
        2,
        "dataset.train_preproc='zoom' is unknown",
    ),
    (
        "parallelism",
        [*TRAIN, "--config.parallelism=tpu_magic"],
        2,
        "parallelism='tpu_magic' is unknown",
    ),
    (
        "model option value",
        [*TRAIN, "--config.model_kwargs.width_pattern=(1,16)"],
        2,
        "model 'NFNet' cannot be built with these model_kwargs",
    ),
    ("optimizer name", [*TRAIN, "--config.optimizer.name=adamx"], 2, "unknown optimizer 'adamx'"),
    (
        "optimizer pattern",
        [*TRAIN, "--config.optimizer.no_clip_patterns=('NFNet/~/lienar/w',)"],
        2,
        "match no parameter path",
    ),
    # ---------------------------------------------------------------- train: dataset
    (
        "unknown dataset",
        [*TRAIN, "--config.dataset.name=imagenet2013"],
        2,
        "Unknown dataset 'imagenet2013'",
    ),
    (
        "missing image folder",
        [*TRAIN, "--config.dataset.name=folder:/nonexistent"],
        2,
        "Image folder '/nonexistent'",
    ),
    (
        "train split",
        [*TRAIN, "--config.dataset.train_split=tran"],
        2,
        "Dataset 'digits' has no split 'tran'",
    ),
    (
        "eval split",
        [*TRAIN, "--config.dataset.eval_split=validaton"],
        2,
        "Dataset 'digits' has no split 'validaton'",
    ),
    # ---------------------------------------------------------------- train: checkpoints
    (
        "init_from missing",
        [*TRAIN, "--config.init_from={tmp}/F0_haiku.npz"],
        2,
        "does not exist: download DeepMind's weights",
    ),
    ("init_from unsafe", [*TRAIN, "--config.init_from={tmp}/evil.npz"], 1, "refusing to unpickle"),
    (
        "init_from not a checkpoint",
        [*TRAIN, "--config.init_from={tmp}/notes.txt"],
        1,
        "neither a zip (.npz) archive nor a binary pickle",
    ),
    (
        "init_from another network",
        [*TRAIN, "--config.init_from={tmp}/broken.npz"],
        1,
        "does not fit the model being trained",
    ),
    (
        "teacher missing",
        [*TRAIN, "--config.distill.teacher_checkpoint={tmp}/teacher"],
        2,
        "distill.teacher_checkpoint='{tmp}/teacher' does not exist",
    ),
    (
        "teacher unsafe",
        [
            *TRAIN,
            "--config.distill.teacher_checkpoint={tmp}/evil.npz",
            "--config.distill.teacher_model=NFNet",
        ],
        2,
        "refusing to unpickle",
    ),
    # ---------------------------------------------------------------- train: workdir, flags
    (
        "workdir is a file",
        ["experiments.train", "--config=tests/training/tiny.py", "--workdir={tmp}/a_file"],
        2,
        "is a file: pass a directory",
    ),
    (
        "no workdir",
        ["experiments.train", "--config=tests/training/tiny.py"],
        2,
        "--workdir is required",
    ),
    ("stray argument", [*TRAIN, "extra"], 2, "Unexpected arguments: extra"),
    ("unknown flag", [*TRAIN, "--epochs=3"], 1, "Unknown command line flag 'epochs'"),
    (
        "incomplete multi-host flags",
        [*TRAIN, "--coordinator_address=127.0.0.1:1234"],
        2,
        "--coordinator_address needs --num_processes and --process_id",
    ),
    # ---------------------------------------------------------------- evaluate
    (
        "evaluate: missing checkpoint",
        [*EVALUATE, "--checkpoint={tmp}/F0_haiku.npz"],
        2,
        "wget https://storage.googleapis.com/dm-nfnets/F0_haiku.npz",
    ),
    (
        "evaluate: classes differ",
        [*EVALUATE, "--checkpoint={tmp}/imagenet.npz"],
        1,
        "classifies 1000 classes but the config's NFNet for dataset 'digits' has 10",
    ),
    (
        "evaluate: not a run",
        [*EVALUATE, "--checkpoint={tmp}/empty_dir"],
        2,
        "is a directory but not a training run",
    ),
    (
        "evaluate: eval split",
        [*EVALUATE, "--checkpoint={tmp}/digits.npz", "--config.dataset.eval_split=test"],
        2,
        "Dataset 'digits' has no split 'test'",
    ),
    # ---------------------------------------------------------------- predict
    (
        "predict: missing image",
        [*PREDICT, "--checkpoint={tmp}/imagenet.npz", "{tmp}/cat.jpg"],
        2,
        "image file(s) not found: {tmp}/cat.jpg",
    ),
    (
        "predict: not an image",
        [*PREDICT, "--checkpoint={tmp}/imagenet.npz", "{tmp}/notes.txt"],
        1,
        "Cannot decode image '{tmp}/notes.txt'",
    ),
    (
        "predict: unsafe checkpoint",
        [*PREDICT, "--checkpoint={tmp}/evil.npz", "{photo}"],
        1,
        "refusing to unpickle",
    ),
    (
        "predict: top_k",
        [*PREDICT, "--checkpoint={tmp}/imagenet.npz", "--top_k=0", "{photo}"],
        2,
        "--top_k must be >= 1",
    ),
    # ---------------------------------------------------------------- export
    (
        "export: not a run",
        [*EXPORT, "--workdir={tmp}/empty_dir"],
        2,
        "is not a run directory (no checkpoints/)",
    ),
    (
        "export: no such step",
        [*EXPORT, "--workdir={tmp}/fake_run", "--step=7"],
        2,
        "has no checkpoint at step 7 (it has [3])",
    ),
    (
        "export: output directory",
        ["experiments.export", "--workdir={tmp}/fake_run", "--out={tmp}/nowhere/x.npz"],
        2,
        "the directory of --out ({tmp}/nowhere) does not exist",
    ),
    # ---------------------------------------------------------------- signal_prop, prepare
    (
        "signal_prop: unknown preset",
        [*SPP, "--models=resnet5_bn"],
        2,
        "Unknown config 'resnet5_bn'",
    ),
    ("signal_prop: no output", ["experiments.signal_prop"], 2, "--out=DIR is required"),
    (
        "prepare: ImageNet tars",
        [
            "nfnets_jax.data.prepare",
            "imagenet2012",
            "--data_dir={tmp}/tfds",
            "--manual_dir={tmp}/empty_dir",
        ],
        1,
        "image-net.org",
    ),
    (
        "prepare: unknown dataset",
        ["nfnets_jax.data.prepare", "imagenet2031", "--data_dir={tmp}/tfds"],
        2,
        "Unknown tfds dataset 'imagenet2031'",
    ),
    # ---------------------------------------------------------------- launchers
    (
        "tpu_vm: accelerator",
        ["launch.tpu_vm", "create", "--name=t", "--zone=z", "--accelerator=v9-8"],
        2,
        "Unknown accelerator type 'v9-8'",
    ),
    (
        "tpu_vm: run without config",
        [*TPU[:1], "run", *TPU[1:], "--dry_run"],
        2,
        "run needs --config and --workdir",
    ),
    ("tpu_vm: no gcloud", [*TPU[:1], "create", *TPU[1:]], 2, "'gcloud' is not on PATH"),
    (
        "slurm: no sbatch",
        [*SLURM, "--nodes=1", "--script={tmp}/job.sbatch"],
        2,
        "'sbatch' is not on PATH",
    ),
    # fmt: on
]


# The fast tier (`-m "not slow"`) keeps one cheap row per kind of command; every row runs
# in the full suite.
FAST_ROWS = ("unknown preset", "unknown key", "tpu_vm: no gcloud")


def _param(name, *row):
    return pytest.param(*row, id=name, marks=() if name in FAST_ROWS else pytest.mark.slow)


@pytest.mark.parametrize("argv, status, message", [_param(*r) for r in ROWS])
def test_a_mistake_is_one_message(files, tmp_path, argv, status, message):
    fill = dict(tmp=str(files), photo=grace_hopper_path())
    argv = [arg.format(**fill) for arg in argv]
    # No gcloud/sbatch may be found, whatever this machine has.
    env = dict(os.environ, PATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == status, output
    assert message.format(**fill) in output, output
    for sign in ("Traceback", "Fatal Python error", "terminate called", "oneDNN"):
        assert sign not in output, output
    assert not os.path.exists(os.path.join(files, "run", "checkpoints")), "work was done"


@pytest.mark.slow
def test_verbose_shows_the_libraries_start_up_banners(files):
    # A command that loads TensorFlow (to decode the image) and JAX (to load the model).
    argv = ["experiments.predict", f"--checkpoint={files}/imagenet.npz", f"{files}/notes.txt"]
    outputs = {}
    for flag in ([], ["--verbose"]):
        done = subprocess.run(
            [sys.executable, "-m", *argv, *flag], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 1 and "Cannot decode image" in done.stderr
        outputs[bool(flag)] = done.stdout + done.stderr
    assert len(outputs[False].splitlines()) == 1  # the message, and nothing else
    # TensorFlow's C++ start-up log lines (absl format: "I0000 00:00:<time> <thread>
    # cpu_feature_guard.cc:227] ..."); which ones depends on the CPU (the oneDNN notice
    # only appears where oneDNN is on by default, e.g. with AVX-512).
    tf_log_line = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\] ", re.MULTILINE)
    assert tf_log_line.search(outputs[True]), outputs[True]
    assert not tf_log_line.search(outputs[False])

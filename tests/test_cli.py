"""The predict and evaluate commands on released-layout checkpoints and real images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from experiments import evaluate, predict
from tests.pretrained_helpers import (
    HEAD,
    grace_hopper_path,
    sample_images,
    synthetic_params,
    write_released_layout,
)

# Commands run end to end in-process (checkpoints, evaluation, JPEG decoding).
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = "--config=tests/training/tiny.py"  # the tiny NFNet, on digits
TOP5 = [945, 281, 1, 517, 0]  # bell pepper, tabby, goldfish, crane, tench


def known_head(num_classes, bias, seed=0):
    """Tiny NFNet parameters whose zero classifier weights leave the bias to decide."""
    params = synthetic_params(num_classes, seed=seed)
    params[HEAD]["w"] = np.zeros_like(params[HEAD]["w"])
    params[HEAD]["b"] = np.asarray(bias, np.float32)
    return params


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    bias = np.zeros(1000)
    bias[TOP5] = [5.0, 4.0, 3.0, 2.0, 1.0]
    path = tmp_path_factory.mktemp("released") / "tiny_haiku.npz"
    return write_released_layout(known_head(1000, bias), path), bias


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    bias = np.arange(10.0)  # always predicts 9, then 8, 7, ...
    path = tmp_path_factory.mktemp("released") / "digits_haiku.npz"
    return write_released_layout(known_head(10, bias), path), bias


def expected_lines(bias, k=5):
    probs = np.exp(bias - bias.max()) / np.exp(bias - bias.max()).sum()
    names = {945: "bell pepper", 281: "tabby", 1: "goldfish", 517: "crane", 0: "tench"}
    return [
        f"  {rank:>2}. {100 * probs[i]:6.2f}%  {names[i]} (class {i})"
        for rank, i in enumerate(TOP5[:k], start=1)
    ]


def test_predict_command_prints_the_top5_with_names(imagenet_file, tmp_path):
    path, bias = imagenet_file
    png = tmp_path / "astronaut.png"
    Image.fromarray(sample_images()["astronaut"]).save(png)
    command = [sys.executable, "-m", "experiments.predict", f"--checkpoint={path}"]
    done = subprocess.run(
        command + [grace_hopper_path(), str(png)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Model: NFNet (custom), 1000 classes, 256 px resize_crop_32 from")
    blocks = "\n".join(lines[1:]).split("\n\n")
    assert [b.strip().splitlines()[0] for b in blocks] == [grace_hopper_path(), str(png)]
    for block in blocks:
        assert block.strip("\n").splitlines()[1:] == expected_lines(bias)
    # e^5 / (e^5 + e^4 + e^3 + e^2 + e^1 + 995) = 12.08%.
    assert expected_lines(bias)[0] == "   1.  12.08%  bell pepper (class 945)"


def test_predict_json_and_top_k(imagenet_file, capsys):
    path, bias = imagenet_file
    image = grace_hopper_path()
    assert predict.main([f"--checkpoint={path}", "--top_k=2", "--json", image]) == 0
    payload = json.loads(capsys.readouterr().out)
    predictions = payload["predictions"][image]
    assert [p["index"] for p in predictions] == [945, 281]
    assert [p["name"] for p in predictions] == ["bell pepper", "tabby"]
    probs = np.exp(bias) / np.exp(bias).sum()
    np.testing.assert_allclose([p["probability"] for p in predictions], probs[[945, 281]], 1e-6)


def test_predict_errors(imagenet_file, tmp_path, capsys):
    path, _ = imagenet_file
    image = grace_hopper_path()
    assert predict.main([f"--checkpoint={tmp_path / 'F0_haiku.npz'}", image]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "wget https://storage.googleapis.com/dm-nfnets/F0_haiku.npz" in err
    assert predict.main([f"--checkpoint={path}", str(tmp_path / "missing.jpg")]) == 2
    assert "image file(s) not found" in capsys.readouterr().err
    # A damaged checkpoint: a whole block is missing.
    params = synthetic_params(1000)
    broken = {m: sub for m, sub in params.items() if not m.startswith("NFNet/~/nf_block/")}
    bad = write_released_layout(broken, tmp_path / "broken.npz")
    assert predict.main([f"--checkpoint={bad}", image]) == 1
    err = capsys.readouterr().err
    assert "has no 'NFNet/~/nf_block/~/conv1/w'" in err and "it is incomplete" in err
    # Not a checkpoint at all.
    assert predict.main([f"--checkpoint={image}", image]) == 1
    assert "neither a zip (.npz) archive nor a binary pickle" in capsys.readouterr().err


def test_evaluate_command_reports_exact_top1_top5(digits_file, tmp_path, capsys):
    path, bias = digits_file
    output = tmp_path / "results.json"
    argv = ["evaluate", TINY_CONFIG, f"--checkpoint={path}", f"--output={output}"]
    argv += ["--config.dataset.eval_split=validation"]
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    labels = load_digits().target[1437:]  # the digits validation split
    top1, top5 = np.mean(labels == 9), np.mean(labels >= 5)
    log_probs = bias - np.log(np.exp(bias).sum())
    loss = -np.mean(log_probs[labels])
    assert printed[0] == f"Checkpoint: parameter file {path}"
    assert printed[1] == "Config:     --config=tests/training/tiny.py"
    assert printed[2] == "Dataset:    digits 'validation', 360 images, resize at 16 px"
    assert printed[3].startswith(
        f"top-1 {100 * top1:.2f}%  top-5 {100 * top5:.2f}%  loss {loss:.4f}"
    )
    results = json.loads(output.read_text())
    assert results["num_examples"] == 360
    np.testing.assert_allclose(results["top_1_acc"], top1, rtol=1e-6)
    np.testing.assert_allclose(results["top_5_acc"], top5, rtol=1e-6)
    np.testing.assert_allclose(results["loss"], loss, rtol=1e-5)


def test_evaluate_errors(imagenet_file, tmp_path, capsys):
    path, _ = imagenet_file
    missing = tmp_path / "F0_haiku.npz"
    assert evaluate.main(["evaluate", TINY_CONFIG, f"--checkpoint={missing}"]) == 2
    assert "dm-nfnets/F0_haiku.npz" in capsys.readouterr().err
    # ImageNet weights against a 10-class dataset: one message saying what to change.
    assert evaluate.main(["evaluate", TINY_CONFIG, f"--checkpoint={path}"]) == 1
    err = capsys.readouterr().err
    assert "classifies 1000 classes but the config's NFNet for dataset 'digits' has 10" in err
    assert "NFNet/~/linear/w: checkpoint (32, 1000) vs model (32, 10)" in err
    # Without --config a 1,000-class file means ImageNet, which is not prepared here.
    assert evaluate.main(["evaluate", f"--checkpoint={path}"]) == 2
    assert "imagenet2012" in capsys.readouterr().err
    assert evaluate.main(["evaluate", "--config=nfnet_f9", f"--checkpoint={path}"]) == 2
    assert "Unknown config 'nfnet_f9'" in capsys.readouterr().err

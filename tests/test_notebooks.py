"""Every notebook runs top to bottom in a fresh kernel, shrunk through its parameters."""

import os

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from tests.pretrained_helpers import HEAD, synthetic_params, write_released_layout

# Each notebook is executed top to bottom.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
# The tiny NFNet of tests/training/tiny.py, set through the training notebook's overrides.
TINY_RUN = ";".join(
    [
        "model_kwargs.width_pattern=(16, 16)",
        "model_kwargs.depth_pattern=(1, 1)",
        "model_kwargs.stem_widths=(8, 8, 8)",
        "model_kwargs.conv_impl=native",
        "dataset.image_size=16",
        "dataset.eval_image_size=16",
        "dataset.eval_split=validation[:40]",
        "train_batch_size=16",
        "eval_batch_size=8",
        "log_every_steps=2",
        "eval_every_steps=2",
        "checkpoint_every_steps=4",
        "optimizer.schedule.warmup_epochs=0.02",
    ]
)


def run_notebook(name):
    """Executes a committed notebook; returns its text outputs and number of figures."""
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit w/o outputs"
    assert any("parameters" in c.metadata.get("tags", []) for c in code)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": REPO}},
    )
    client.execute()
    text, figures = [], 0
    for cell in code:
        for output in cell.outputs:
            if output.output_type == "stream":
                text.append(output.text)
            elif "image/png" in output.get("data", {}):
                figures += 1
    return "".join(text), figures


def test_pretrained_inference_notebook(tmp_path, monkeypatch):
    params = synthetic_params(1000, seed=5)
    params[HEAD]["w"] = np.zeros_like(params[HEAD]["w"])
    params[HEAD]["b"] = np.zeros(1000, np.float32)
    params[HEAD]["b"][945] = 3.0  # every image is a bell pepper
    checkpoint = write_released_layout(params, tmp_path / "F0_haiku.npz")
    monkeypatch.setenv("NFNETS_CHECKPOINT", checkpoint)
    monkeypatch.setenv("NFNETS_IMAGE_SIZE", "64")
    text, figures = run_notebook("pretrained_inference.ipynb")
    assert "variant: None | test size: 64 | classes: 1000" in text
    assert text.count("bell pepper") == 5  # one top-1 line per photo
    assert "(1, 64, 64, 3) float32" in text
    assert figures == 2


def test_agc_notebook(monkeypatch):
    monkeypatch.setenv("NFNETS_AGC_STEPS", "40")
    text, figures = run_notebook("agc_optax.ipynb")
    lines = {line.split(" final")[0].strip(): line for line in text.splitlines() if "final" in line}
    assert set(lines) == {"SGD", "SGD + AGC 0.01", "AdamW + AGC 0.01"}
    assert "clip fraction nan" in lines["SGD"]  # no AGC, no statistics
    assert "clip fraction nan" not in lines["SGD + AGC 0.01"]
    assert figures == 1


def test_tpu_training_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("NFNETS_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("NFNETS_NUM_STEPS", "4")
    monkeypatch.setenv("NFNETS_OVERRIDES", TINY_RUN)
    text, figures = run_notebook("tpu_training.ipynb")
    assert "4 CPU device(s)" in text
    assert "ema_eval: top-1" in text and "step 4/4" in text
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "4")
    assert figures == 2

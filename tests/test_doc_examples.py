"""The pretrained-model example of README.md (and of docs/pretrained.md) runs as written.

`F0_haiku.npz` is the tiny NFNet of tests/training/tiny.py written in DeepMind's released
layout (the real file cannot be downloaded here), with a classifier that ranks tabby
first, so the example's comments can be checked. `cat.jpg` and `dog.png` are real photos.
The AGC guide runs in tests/optim/test_docs.py.
"""

import ast

import numpy as np
import pytest
from PIL import Image

from nfnets_jax.data import imagenet
from tests.doc_blocks import README, REPO, code_blocks
from tests.pretrained_helpers import HEAD, sample_images, synthetic_params, write_released_layout

RANKED = [281, 945, 1]  # tabby, bell pepper, goldfish


def run_block(block: str, filename: str) -> tuple[dict, object]:
    """Executes `block`; returns its namespace and the value of its last expression."""
    tree = ast.parse(block, filename)
    last = tree.body.pop() if isinstance(tree.body[-1], ast.Expr) else None
    namespace: dict = {}
    exec(compile(tree, filename, "exec"), namespace)
    value = eval(compile(ast.Expression(last.value), filename, "eval"), namespace) if last else None
    return namespace, value


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    params = synthetic_params(1000, seed=2)
    params[HEAD]["w"] = np.zeros_like(params[HEAD]["w"])
    bias = np.zeros(1000, np.float32)
    bias[RANKED] = [6.0, 5.0, 4.0]
    params[HEAD]["b"] = bias
    write_released_layout(params, tmp / "F0_haiku.npz")
    photos = sample_images()
    Image.fromarray(photos["chelsea"]).save(tmp / "cat.jpg", quality=90)
    Image.fromarray(photos["astronaut"]).save(tmp / "dog.png")
    softmax = np.exp(bias.astype(np.float64)) / np.exp(bias.astype(np.float64)).sum()
    return tmp, softmax


@pytest.mark.parametrize("page", [README, REPO / "docs" / "pretrained.md"], ids=lambda p: p.name)
def test_pretrained_example_runs(page, workdir, monkeypatch):
    blocks = [b for b in code_blocks(page, "python") if "pretrained.load(" in b]
    assert len(blocks) == 1
    tmp, softmax = workdir
    monkeypatch.chdir(tmp)
    namespace, top = run_block(blocks[0], str(page))
    probs = np.asarray(namespace["probs"])
    assert probs.shape == (2, 1000)  # "[2, 1000] softmax probabilities"
    np.testing.assert_allclose(probs, np.broadcast_to(softmax, (2, 1000)), rtol=1e-5, atol=1e-9)
    assert len(top) == 1 and len(top[0]) == 5  # one image, k=5
    first = top[0][0]
    assert (first.index, first.name) == (281, "tabby")  # as the comment shows
    assert [p.index for p in top[0][:3]] == RANKED
    assert [p.name for p in top[0][:3]] == [imagenet.class_names()[i] for i in RANKED]
    np.testing.assert_allclose(first.probability, softmax[281], rtol=1e-5)

"""The AGC guide, docs/optim.md, runs as written (docstrings: tests/test_docstring_examples.py)."""

import numpy as np

from tests.doc_blocks import REPO, code_blocks

GUIDE = REPO / "docs" / "optim.md"


def test_agc_guide_runs(capsys):
    blocks = code_blocks(GUIDE, "python")
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    # All-ones gradients: every unit AGC sees (16 stem channels, gain, bias, fc bias) is
    # above its threshold (the fc weight is masked out); the largest ratio is the zero
    # stem bias, ||G|| = sqrt(16) over eps = 1e-3.
    assert printed[0] == "AGC clipped 100% of units, max ratio 4e+03"
    assert printed[1] == "0 1.6"
    assert float(namespace["clip_fraction"]) == 1.0
    # The EMA after one update at t = 0 with identical trees is the params themselves.
    for a, b in zip(
        namespace["jax"].tree.leaves(namespace["ema_params"]),
        namespace["jax"].tree.leaves(namespace["params"]),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)

"""The README's AGC guide actually runs (docstring examples: tests/test_docstring_examples.py)."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def readme_section_code(title: str) -> list[str]:
    text = README.read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_agc_guide_runs(capsys):
    blocks = readme_section_code("Adaptive Gradient Clipping")
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
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

"""The benchmark scripts still run and record what they measure (never how fast).

Speed is not asserted here: only that the scripts work end to end on the tiny config,
report consistent figures and update their BENCHMARKS.md section in place.
"""

import math
import threading

import pytest

from benchmarks import common, train_step, train_throughput
from tests.training.tiny import tiny_config


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nb\n")
    common.write_section("## A", "## A\n\nnew a\n", str(path))
    common.write_section("## C", "## C\n\nc", str(path))
    assert path.read_text() == "# Benchmarks\n\n## A\n\nnew a\n\n## B\n\nb\n\n## C\n\nc\n"


def test_median_seconds_calls_warmup_then_steps():
    calls = []
    seconds = common.median_seconds(lambda: calls.append(1), steps=3, warmup=2)
    assert len(calls) == 5 and 0 <= seconds < 1


@pytest.mark.slow
def test_train_throughput_measures_the_runs_own_step():
    config = tiny_config()
    before = set(threading.enumerate())
    result = train_throughput.measure(config, steps=2)
    assert [t for t in threading.enumerate() if t not in before] == []  # input thread joined
    assert result["finite"]
    assert result["batch"] == 16 and result["image_size"] == 16
    assert result["devices"].startswith("4 x ")  # the fake CPU devices of conftest.py
    for key in ("compile_s", "step_s", "synthetic_ips", "real_ips", "pipeline_ips"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert math.isclose(result["synthetic_ips"], 16 / result["step_s"])
    table = train_throughput.render([("tiny", "tests/training/tiny.py", result)])
    assert "| tiny | `tests/training/tiny.py` | 4 x " in table
    assert f"{result['real_ips'] / result['synthetic_ips']:.2f}" in table


def test_train_step_carries_the_state_and_reports_interleaved_medians():
    narrow = dict(width_pattern=[16], depth_pattern=[1], group_width=8, stem_widths=(8, 8, 8))
    run, compile_s = train_step.jax_step("F0", 2, 16, "auto", 10, narrow)
    assert compile_s > 0
    losses = [run() for _ in range(3)]
    # The carried rng draws new stochastic-depth and dropout masks at every step.
    assert all(math.isfinite(v) for v in losses) and len(set(losses)) == 3
    calls = []
    runs = {"auto": run, "other": lambda: calls.append(1) or 1.5}
    results = train_step.interleaved_medians(runs, rounds=2, steps=3)
    assert len(calls) == 1 + 2 * 3 and results["other"] == (results["other"][0], 1.5)
    args = train_step.parse_args(["--batch", "2", "--px", "16"])
    rows = [
        {"name": "a", "conv": impl, "impl": impl, "compile_s": 1.0, "step_s": results[impl][0]}
        for impl in runs
    ]
    table = train_step.render(rows, args, "")
    ratio = results["auto"][0] / results["other"][0]
    assert table.startswith(train_step.SECTION) and f"| {ratio:.2f}x | n/a |" in table
    rows[1]["impl"] = "timm"  # the last column is timm's time over each row's
    table = train_step.render(rows, args, "")
    assert f"| 1.00x | {1 / ratio:.2f}x |" in table and f"| {ratio:.2f}x | 1.00x |" in table


def test_inference_step_equals_across_lowerings_and_has_its_own_section():
    narrow = dict(width_pattern=[16], depth_pattern=[1], group_width=8, stem_widths=(8, 8, 8))
    native, _ = train_step.jax_inference("F0", 2, 16, "native", 10, narrow)
    dot, compile_s = train_step.jax_inference("F0", 2, 16, "dot", 10, narrow)
    assert compile_s > 0
    assert math.isclose(native(), dot(), rel_tol=1e-5, abs_tol=1e-6)
    args = train_step.parse_args(["--inference", "--batch", "2"])
    row = {"name": "a", "conv": "dot", "impl": "dot", "compile_s": 1.0, "step_s": 0.5}
    table = train_step.render([row], args, "")
    assert table.startswith(train_step.INFERENCE_SECTION) and "evaluation forward" in table

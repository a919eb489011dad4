"""The benchmark scripts still run and record what they measure (never how fast).

Speed is not asserted here: only that the scripts work end to end on the tiny config,
report consistent figures and update their BENCHMARKS.md section in place.
"""

import math
import threading
from collections import Counter

import jax
import pytest

from benchmarks import accelerator, common, train_step, train_throughput, vs_timm
from nfnets_jax.models import conv
from tests.training.tiny import tiny_config


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nb\n")
    common.write_section("## A", "## A\n\nnew a\n", str(path))
    common.write_section("## C", "## C\n\nc", str(path))
    assert path.read_text() == "# Benchmarks\n\n## A\n\nnew a\n\n## B\n\nb\n\n## C\n\nc\n"


def test_machine_names_the_widest_vector_extension():
    assert common._vector_isa({"sse2", "avx", "avx2", "avx512f", "avx512bw"}) == "AVX-512"
    assert common._vector_isa({"sse2", "avx", "avx2", "fma"}) == "AVX2"
    assert common._vector_isa({"neon", "asimd"}) == ""
    assert common.machine().count(" cores, ") == 1


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


def test_vs_timm_counts_the_f0_steps_analytic_flops():
    # NFNet-F0 is 12.384 GMACs at 256 px (the paper's 12.38 GFLOPs); 128 px is a quarter.
    inference = vs_timm.analytic_flops("F0", 4, 256, training=False)
    assert math.isclose(inference, 2 * 4 * 12.384e9, rel_tol=1e-4)
    # Convolutions scale with the pixels, the SE and classifier layers do not: 0.6% more.
    training = vs_timm.analytic_flops("F0", 8, 128, training=True)
    assert 1.0 < training / (3 * 2 * 8 * 12.384e9 / 4) < 1.01


def test_vs_timm_finds_every_f0_layer_by_kind():
    convs, ses, params = vs_timm.f0_layers("F0", 8, 128)
    kinds = Counter(vs_timm.conv_kind(c) for c in convs)
    # 4 stem convs, 12 blocks of 4, 4 stage-transition shortcuts and final_conv.
    assert len(convs) == 4 + 12 * 4 + 4 + 1 and len(ses) == 12
    # 1x1: conv0 and conv2 of each block, the shortcuts, final_conv. The 3x3s of the
    # first stage are 128 wide, one group of 128: dense, as the stem's.
    assert kinds == {"1x1 convs": 29, "grouped 3x3 convs": 22, "dense 3x3 convs": 6}
    final = next(c for c in convs if c["name"].endswith("final_conv"))
    assert final["in_shape"] == (8, 4, 4, 1536) and final["kernel"] == (1, 1, 1536, 3072)
    assert ses[0] == {"in_shape": (8, 32, 32, 256), "hidden": 128}
    assert len(jax.tree.leaves(params)) == 233


def test_vs_timm_breakdown_rows_run_and_before_equals_after_numerically():
    # Two stages: a dense 3x3 pair (16 wide, groups of 16), then a grouped one (2 x 16).
    narrow = dict(width_pattern=[32, 64], depth_pattern=[1, 1], group_width=16,
                  stem_widths=(8, 8, 8))  # fmt: skip
    args = vs_timm.parse_args(["--batch", "2", "--px", "16", "--breakdown-rounds", "1"])
    convs, ses, abstract = vs_timm.f0_layers("F0", 2, 16, narrow)
    assert {vs_timm.conv_kind(c) for c in convs} == {
        "1x1 convs", "grouped 3x3 convs", "dense 3x3 convs"}  # fmt: skip
    for kind in vs_timm.KINDS:
        before = vs_timm.jax_kind(kind, convs, ses, abstract, 2, after=False)()
        after = vs_timm.jax_kind(kind, convs, ses, abstract, 2, after=True)()
        assert math.isclose(before, after, rel_tol=1e-5, abs_tol=1e-6), kind
    kinds = [{"kind": k, "count": 1, "before": 0.2, "after": 0.1, "timm": 0.05} for k in "ab"]
    steps = [{"work": "training step", "impl": "auto", "compile_s": 1.0, "seconds": 0.5,
              "timm": 1.0, "flops": 20e9, "matmul": 50e9, "timm_matmul": 80e9}]  # fmt: skip
    table = vs_timm.render(steps, kinds, args, "", True)
    assert table.startswith(vs_timm.SECTION)
    assert "| training step | auto | 1.0 | 0.500 | 1.000 | 0.50 |" in table
    # 20 GFLOP in 0.5 s is 40 GFLOP/s, 80% of 50; timm's 20 GFLOP/s is 25% of 80.
    assert "| training step | 20.0 | 40.0 | 20.0 | 80% | 25% |" in table
    assert "| a | 1 | 200.0 | 100.0 | 50.0 | 2.00 |" in table


def test_accelerator_script_falls_back_to_a_batch_that_fits(monkeypatch):
    narrow = dict(width_pattern=[16], depth_pattern=[1], group_width=8, stem_widths=(8, 8, 8))
    real_step = train_step.jax_step
    tried = []

    def step(variant, batch, *args):
        tried.append(batch)
        if batch > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return real_step(variant, batch, *args)

    monkeypatch.setattr(train_step, "jax_step", step)
    argv = ["--px", "16", "--batches", "4,2", "--impls", "native,dot", "--steps", "1",
            "--warmup", "1", "--peak-n", "64", "--num-classes", "10"]  # fmt: skip
    text = accelerator.main(argv, narrow)
    assert tried == [4, 2, 4, 2]
    assert text.startswith(accelerator.SECTION) and "bfloat16 dense matmul peak" in text
    rows = [line for line in text.splitlines() if line.startswith(("| native", "| dot"))]
    assert len(rows) == 2 and all(row.split(" | ")[1] == "2" for row in rows)

    def broken(*args):
        raise ValueError("a bug, not memory")

    monkeypatch.setattr(train_step, "jax_step", broken)
    with pytest.raises(ValueError, match="a bug"):
        accelerator.main(argv, narrow)


def test_train_step_traces_patches_at_n_with_that_threshold(monkeypatch, capsys):
    seen = []

    def step(variant, batch, px, impl):
        seen.append((impl, conv.PATCHES_MIN_POSITIONS))
        return (lambda: 1.0), 0.5

    monkeypatch.setattr(train_step, "jax_step", step)
    train_step.main(["--impls", "patches@1,patches", "--no-timm", "--rounds", "1", "--steps", "1"])
    assert seen == [("patches", 1), ("patches", 32 * 32)]
    assert conv.PATCHES_MIN_POSITIONS == 32 * 32
    assert "| nfnets_jax NFNet-F0 | patches@1 | 0.5 |" in capsys.readouterr().out

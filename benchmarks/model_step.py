"""Forward / forward+backward speed, compile time and memory of the NF models.

Run ``python -m benchmarks.model_step --help``. For each configuration it measures, on
the backend JAX finds:

* compile time of the jitted inference forward and of the training step (forward +
  backward of a softmax cross-entropy);
* the median wall time of each over ``--steps`` runs (after ``--warmup`` runs);
* achieved FLOP/s: the model's analytic MACs (``model.count_flops``) x 2 FLOPs per MAC
  for the forward, x 2 x 3 for forward+backward (the usual "backward = 2 x forward"
  convention), as a fraction of the float32/bfloat16 dense matmul throughput measured in
  the same run;
* memory: XLA's compiled-memory analysis of each executable (arguments + outputs + temp)
  and the device's peak bytes in use, or, where ``device.memory_stats()`` is None (CPU),
  the process peak RSS (maximum over everything the process did so far).

``--grouped`` also times native vs per-group grouped 3x3 convolutions (forward and
forward+backward) at NFNet and NF-RegNet shapes; ``--record`` writes the printed tables
into the ``## Model step`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from nfnets_jax.models import count_flops, get_model, grouped_conv
from nfnets_jax.models.conv import resolve_conv_impl

SECTION = "## Model step"


def _time(fn: Callable[[], object], steps: int, warmup: int) -> float:
    """Median seconds of ``fn()`` (blocked until ready) over ``steps`` runs."""
    return common.median_seconds(lambda: jax.block_until_ready(fn()), steps, warmup)


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _xla_bytes(compiled) -> float | None:
    try:
        stats = compiled.memory_analysis()
        return float(
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes
        )
    except Exception:  # Not every backend/version exposes it.
        return None


def random_params(abstract, seed: int = 0):
    """Random float32 parameters of the right shapes (values do not matter for speed)."""
    rng = np.random.default_rng(seed)

    def leaf(s):
        scale = 1.0 / np.sqrt(max(1, int(np.prod(s.shape[:-1]))))
        return jnp.asarray(rng.standard_normal(s.shape, dtype=np.float32) * scale)

    return jax.tree.map(leaf, abstract)


def bench_model(
    args, model_name: str, variant: str, px: int, batch: int, dtype: str, conv_impl: str
) -> dict:
    model_cls = get_model(model_name)
    make = lambda: model_cls(args.num_classes, variant, compute_dtype=dtype, conv_impl=conv_impl)
    forward = hk.transform(lambda x, t: make()(x, is_training=t))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, px, px, 3)), jnp.float32)
    labels = jnp.arange(batch) % args.num_classes
    abstract = jax.eval_shape(lambda k, x: forward.init(k, x, True), jax.random.key(0), x)
    params = random_params(abstract)
    rng = jax.random.key(2)

    def infer(params, x):
        return forward.apply(params, None, x, False)["logits"]

    def train_loss(params, rng, x, labels):
        logits = forward.apply(params, rng, x, True)["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grad_fn = jax.value_and_grad(train_loss)
    fwd, fwd_compile = _compile(infer, params, x)
    step, step_compile = _compile(grad_fn, params, rng, x, labels)
    fwd_s = _time(lambda: fwd(params, x), args.steps, args.warmup)
    step_s = _time(lambda: step(params, rng, x, labels), args.steps, args.warmup)
    macs = count_flops(make, px, px) * batch
    peak, peak_kind = common.peak_memory()
    return {
        "model": f"{model_name} {variant}",
        "px": px,
        "batch": batch,
        "dtype": dtype,
        "conv": resolve_conv_impl(conv_impl),
        "compile_fwd_s": fwd_compile,
        "compile_step_s": step_compile,
        "fwd_s": fwd_s,
        "step_s": step_s,
        "fwd_flops": 2 * macs / fwd_s,
        "step_flops": 2 * 3 * macs / step_s,
        "xla_fwd_bytes": _xla_bytes(fwd),
        "xla_step_bytes": _xla_bytes(step),
        "peak_bytes": peak,
        "peak_kind": peak_kind,
    }


GROUPED_CASES = [
    # (label, batch, spatial size, channels per group, groups)
    ("NFNet F0 stage 3 (6 x 128)", 8, 16, 128, 6),
    ("NFNet F0 stage 4 (6 x 128)", 8, 8, 128, 6),
    ("NF-RegNet B0 stage 3 (43 x 8)", 8, 14, 8, 43),
]


def bench_grouped(args) -> list[dict]:
    rows = []
    for label, batch, size, width, groups in GROUPED_CASES:
        rng = np.random.default_rng(0)
        channels = width * groups
        x = jnp.asarray(rng.standard_normal((batch, size, size, channels)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, width, channels)) / np.sqrt(9 * width))
        row = {"case": label, "shape": f"{batch}x{size}x{size}x{channels}"}
        outs = {}
        for impl in ("native", "per_group"):

            def conv(x, w, impl=impl):
                return grouped_conv(
                    x, w, window_strides=(1, 1), padding="SAME",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
                    conv_impl=impl,
                )  # fmt: skip

            fwd = jax.jit(conv)
            bwd = jax.jit(jax.grad(lambda x, w, conv=conv: jnp.sum(conv(x, w) ** 2), (0, 1)))
            outs[impl] = fwd(x, w)
            row[f"{impl}_fwd_s"] = _time(lambda fwd=fwd: fwd(x, w), args.steps, 1)
            row[f"{impl}_bwd_s"] = _time(lambda bwd=bwd: bwd(x, w), args.steps, 1)
        row["max_abs_diff"] = float(jnp.max(jnp.abs(outs["native"] - outs["per_group"])))
        rows.append(row)
    return rows


def _mb(b):
    return "n/a" if b is None else f"{b / 2**20:,.0f}"


def render(model_rows, grouped_rows, peaks, args) -> str:
    device = jax.local_devices()[0]
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.model_step {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {common.machine()}. JAX backend {jax.default_backend()} ({device.device_kind}, "
        f"{jax.local_device_count()} local device(s)). Python {platform.python_version()}, "
        f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, dm-haiku {hk.__version__}, "
        f"numpy {np.__version__}.",
        "Dense matmul reference measured in this run: "
        + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items())
        + ".",
        "FLOP/s = analytic MACs x 2 (forward) or x 2 x 3 (forward + backward), as a "
        "fraction of that matmul peak in the same dtype.",
        "Memory: 'XLA' is the compiled-memory analysis of one call (arguments + outputs + "
        "temporaries); 'peak' is the device's peak bytes in use or, where "
        "`device.memory_stats()` is None (CPU), the process peak RSS since start "
        "(compilation and all earlier rows included).",
        "",
    ]
    if model_rows:
        lines += [
            "| model | px | batch | dtype | conv | compile fwd / step (s) | fwd (s) | "
            "fwd+bwd (s) | fwd GFLOP/s (% peak) | fwd+bwd GFLOP/s (% peak) | XLA fwd / "
            "step MiB | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in model_rows:
            peak = peaks[r["dtype"]]
            lines.append(
                f"| {r['model']} | {r['px']} | {r['batch']} | {r['dtype']} | {r['conv']} | "
                f"{r['compile_fwd_s']:.1f} / {r['compile_step_s']:.1f} | {r['fwd_s']:.3f} | "
                f"{r['step_s']:.3f} | {r['fwd_flops'] / 1e9:,.0f} "
                f"({100 * r['fwd_flops'] / peak:.0f}%) | {r['step_flops'] / 1e9:,.0f} "
                f"({100 * r['step_flops'] / peak:.0f}%) | {_mb(r['xla_fwd_bytes'])} / "
                f"{_mb(r['xla_step_bytes'])} | {_mb(r['peak_bytes'])} ({r['peak_kind']}) |"
            )
        lines.append("")
    if grouped_rows:
        lines += [
            "Grouped 3x3 convolution (stride 1, SAME, float32), median seconds; backward is "
            "the gradient of sum(y^2) w.r.t. input and kernel:",
            "",
            "| case | input | native fwd | per-group fwd | native bwd | per-group bwd | "
            "fwd speed-up | bwd speed-up | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in grouped_rows:
            lines.append(
                f"| {r['case']} | {r['shape']} | {r['native_fwd_s'] * 1e3:.1f} ms | "
                f"{r['per_group_fwd_s'] * 1e3:.1f} ms | {r['native_bwd_s'] * 1e3:.1f} ms | "
                f"{r['per_group_bwd_s'] * 1e3:.1f} ms | "
                f"{r['native_fwd_s'] / r['per_group_fwd_s']:.1f}x | "
                f"{r['native_bwd_s'] / r['per_group_bwd_s']:.1f}x | {r['max_abs_diff']:.1e} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="NFNet", help="registry name (NFNet, NF_RegNet...)")
    parser.add_argument(
        "--variants",
        default="F0",
        help="comma-separated variants of --model, or MODEL:VARIANT items, e.g. F0,NF_RegNet:B0",
    )
    parser.add_argument("--px", default="128", help="comma-separated resolutions")
    parser.add_argument("--batch", default="2", help="comma-separated batch sizes")
    parser.add_argument("--dtypes", default="float32", help="float32 and/or bfloat16")
    parser.add_argument(
        "--conv-impls",
        default="auto",
        help="comma-separated: auto, native, per_group, dot, patches",
    )
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--matmul-n", type=int, default=2048, help="size of the peak matmul")
    parser.add_argument("--grouped", action="store_true", help="also time grouped convs")
    parser.add_argument("--grouped-only", action="store_true", help="only time grouped convs")
    parser.add_argument("--record", action="store_true", help="write into BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    peaks = {d: common.matmul_peak(jnp.dtype(d), args.matmul_n) for d in dtypes}
    model_rows = []
    if not args.grouped_only:
        for item in args.variants.split(","):
            model, _, variant = item.strip().rpartition(":")
            model = model or args.model
            for px in (int(p) for p in args.px.split(",")):
                for batch in (int(b) for b in args.batch.split(",")):
                    for dtype in dtypes:
                        for impl in args.conv_impls.split(","):
                            row = bench_model(args, model, variant, px, batch, dtype, impl.strip())
                            model_rows.append(row)
                            print(row, flush=True)
    grouped_rows = bench_grouped(args) if (args.grouped or args.grouped_only) else []
    text = render(model_rows, grouped_rows, peaks, args)
    print(text)
    if args.record:
        common.write_section(SECTION, text)


if __name__ == "__main__":
    main()

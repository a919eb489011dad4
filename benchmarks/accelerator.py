"""The prepared accelerator benchmark: bf16 matmul peak, then the F0 training step per lowering.

Run ``python -m benchmarks.accelerator`` on one GPU or TPU host (it uses device 0 only
and takes under 5 minutes). It measures:

* the bfloat16 dense matmul peak (``--peak-n`` square matrices), the run's reference;
* the NFNet training step of :mod:`benchmarks.train_step` (forward with stochastic depth
  and dropout, cross-entropy, backward, AGC + weight decay + Nesterov SGD, parameters
  carried) at ``--px`` (192, F0's training resolution) in bfloat16 compute, for each
  ``--impls`` lowering (``native``, ``per_group``, ``dot``), at the largest batch of
  ``--batches`` that fits (an out-of-memory error moves on to the next one);
* per lowering: compile time, median step time, images/s, achieved FLOP/s from the
  model's analytic MACs (``count_flops`` x 2 FLOPs x 3 for forward + backward), MFU
  against the measured peak, XLA's compiled memory (arguments + outputs + temporaries)
  and the device's peak bytes in use after that lowering's steps.

A lowering that would start after ``--budget-s`` seconds is skipped, so the run ends in
time on a slow device. ``--record`` writes the table into the ``## Accelerators``
section of BENCHMARKS.md; the choice of ``conv_impl='auto'``'s accelerator default is
made from it.
"""

from __future__ import annotations

import argparse
import sys
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common, train_step
from benchmarks.model_step import _xla_bytes
from nfnets_jax.models import count_flops, get_model

SECTION = "## Accelerators"
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def is_out_of_memory(error: Exception) -> bool:
    """Whether an XLA error is the device running out of memory."""
    return any(marker in str(error) for marker in _OOM_MARKERS)


def measure(args, impl: str, model_kwargs: dict | None = None) -> dict:
    """The training step of one lowering at the largest batch of ``args.batches`` that fits."""
    kwargs = dict(model_kwargs or {}, compute_dtype=args.dtype)
    for batch in args.batches:
        try:
            run, compile_s = train_step.jax_step(
                args.variant, batch, args.px, impl, args.num_classes, kwargs
            )
            step_s = common.median_seconds(run, args.steps, args.warmup)
        except Exception as error:  # noqa: BLE001 - XLA's errors have no common type
            if not is_out_of_memory(error):
                raise
            print(f"{impl}: batch {batch} does not fit; trying a smaller one", flush=True)
            continue
        make = lambda: get_model("NFNet")(args.num_classes, args.variant, **kwargs)
        flops = 2 * 3 * count_flops(make, args.px, args.px) * batch / step_s
        peak_bytes, peak_kind = common.peak_memory()
        return {
            "impl": impl,
            "batch": batch,
            "compile_s": compile_s,
            "step_s": step_s,
            "img_s": batch / step_s,
            "flops": flops,
            "xla_bytes": _xla_bytes(run.compiled),
            "peak_bytes": peak_bytes,
            "peak_kind": peak_kind,
        }
    return {"impl": impl, "batch": None}


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def render(rows: list[dict], peak: float, args, argv: list[str]) -> str:
    device = jax.local_devices()[0]
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.accelerator {' '.join(argv)}`",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {device.platform} device 0 "
        f"({device.device_kind}, {jax.local_device_count()} local devices); host "
        f"{common.machine()}; {common.versions(jax, hk, optax, np)}.",
        f"{args.dtype} dense matmul peak ({args.peak_n} x {args.peak_n}): "
        f"{peak / 1e12:.1f} TFLOP/s. NFNet-{args.variant} training step at {args.px} px, "
        f"{args.dtype} compute (float32 parameters), the largest batch of "
        f"{', '.join(map(str, args.batches))} that fits, median of {args.steps} steps "
        f"after {args.warmup} warm-up step(s). FLOP/s from the analytic MACs x 6; MFU against the "
        "peak above.",
        "",
        "| conv lowering | batch | compile (s) | step (s) | img/s | TFLOP/s | MFU | XLA memory "
        "(GiB) | peak in use (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("batch") is None:
            reason = r.get("skipped", "no batch fits")
            lines.append(f"| {r['impl']} | {reason} | | | | | | | |")
            continue
        lines.append(
            f"| {r['impl']} | {r['batch']} | {r['compile_s']:.1f} | {r['step_s']:.4f} | "
            f"{r['img_s']:.0f} | {r['flops'] / 1e12:.1f} | {r['flops'] / peak:.1%} | "
            f"{_gib(r['xla_bytes'])} | {_gib(r['peak_bytes'])} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="F0")
    parser.add_argument("--px", type=int, default=192)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batches", default="256,128,64,32,16,8",
                        help="per-device batches to try, largest first")  # fmt: skip
    parser.add_argument("--impls", default="native,per_group,dot")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-n", type=int, default=8192)
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--record", action="store_true", help="write into BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.impls = [i.strip() for i in args.impls.split(",")]
    return args


def main(argv=None, model_kwargs: dict | None = None) -> str:
    args = parse_args(argv)
    start = time.perf_counter()
    peak = common.matmul_peak(jnp.dtype(args.dtype), args.peak_n)
    print(f"{args.dtype} matmul peak: {peak / 1e12:.2f} TFLOP/s", flush=True)
    rows = []
    for impl in args.impls:
        if time.perf_counter() - start > args.budget_s:
            rows.append({"impl": impl, "batch": None, "skipped": "skipped (time budget)"})
            continue
        rows.append(measure(args, impl, model_kwargs))
        print(rows[-1], flush=True)
    text = render(rows, peak, args, sys.argv[1:] if argv is None else argv)
    print(text)
    if args.record:
        common.write_section(SECTION, text)
    return text


if __name__ == "__main__":
    main()

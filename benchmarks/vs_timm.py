"""NFNet-F0 in nfnets_jax against timm's ``dm_nfnet_f0`` on PyTorch, on the same machine.

Run ``python -m benchmarks.vs_timm --help``. One run times, alternated (A B C D A B C D ...)
for ``--rounds`` rounds of ``--steps`` steps after a warm-up, with medians:

* the training step of :mod:`benchmarks.train_step` (forward with stochastic depth and
  dropout, cross-entropy, backward, AGC + weight decay + Nesterov SGD; parameters
  carried) in nfnets_jax (``conv_impl='auto'``) and in timm;
* the evaluation forward, by default at batch 4 and 256 px;
* with ``--native``, nfnets_jax's native lowering too (the state before issue 10);
* a float32 ``2048 x 2048`` matmul in JAX (XLA:CPU's dot) and in torch, the run's reference
  peaks: the two steps' analytic FLOP/s (the model's MACs from
  :func:`nfnets_jax.models.count_flops` x 2, x 3 for forward + backward) are reported as a
  fraction of each framework's own matmul speed, which shows how much of a gap is the
  matrix-product library rather than the graph around it.

Then a breakdown by layer kind: every layer of that kind in F0, at the training step's
batch and resolution, run forward and differentiated with respect to its inputs and
parameters with a fixed random cotangent, all layers of a kind in one jitted function
(one autograd pass in torch). The cotangent is an input, not a function of the output:
a `cos(y)` cotangent, as used before, added XLA's CPU cosine (several times slower than
torch's) to every row and made the convolutions look slower than timm's.

* 1x1 convolutions, grouped 3x3 convolutions, dense 3x3 convolutions (the stem): the
  convolution alone, on a random kernel;
* weight standardization: every convolution's kernel standardized (``WSConv2D``'s
  ``standardized_weight``; timm's ``ScaledStdConv2dSame`` computes it with
  ``F.batch_norm`` over the kernel);
* squeeze-excite: the gate and ``2 * gate * x`` of every block;
* AGC: ``adaptive_grad_clip`` on every F0 parameter (timm's ``adaptive_clip_grad``);
* the optimizer: AGC + weight decay + Nesterov SGD on every parameter.

The "before" column is nfnets_jax with ``conv_impl='native'`` and the weight statistics
over the kernel's (H, W, I) axes (its form before issue 10); "after" is the default.

On a CPU-only host the run first calls :func:`nfnets_jax.host_memory.keep_host_memory`
for the whole process, timm included (what ``NFNETS_JAX_KEEP_HOST_MEMORY=1`` does in
``experiments.train``); ``--no-keep-host-memory`` leaves glibc's defaults. ``--record``
writes the tables into the ``## nfnets_jax vs timm`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common, train_step
from benchmarks.model_step import random_params
from nfnets_jax import host_memory
from nfnets_jax.models import SqueezeExcite, WSConv2D, count_flops, get_model
from nfnets_jax.models.conv import grouped_conv
from nfnets_jax.optim import adaptive_grad_clip, build_optimizer, nfnet_optimizer_config

SECTION = "## nfnets_jax vs timm"
KINDS = (
    "1x1 convs",
    "grouped 3x3 convs",
    "dense 3x3 convs",
    "weight standardization",
    "squeeze-excite",
    "AGC",
    "optimizer (AGC + SGD)",
)
_DN = ("NHWC", "HWIO", "NHWC")
MATMUL_N = 2048


def f0_layers(variant: str, batch: int, px: int, model_kwargs: dict | None = None):
    """The convolutions and squeeze-excite gates of an NFNet training forward.

    Returns:
        ``(convs, ses, params)``: ``convs`` is a list of dicts (``name``, ``in_shape``,
        ``kernel`` (HWIO shape), ``stride``, ``groups``, ``padding``), ``ses`` one of
        (``in_shape``, ``hidden``) and ``params`` the model's abstract parameters.
    """
    model_cls = get_model("NFNet")
    convs, ses = [], []

    def record(next_f, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, WSConv2D):
            x = args[0]
            cin = x.shape[-1] // module.feature_group_count
            convs.append({
                "name": module.module_name,
                "in_shape": tuple(x.shape),
                "kernel": (*module.kernel_shape, cin, module.output_channels),
                "stride": tuple(module.stride),
                "groups": module.feature_group_count,
                "padding": module.padding,
            })  # fmt: skip
        elif context.method_name == "__call__" and isinstance(module, SqueezeExcite):
            ses.append({"in_shape": tuple(args[0].shape), "hidden": module.hidden_ch})
        return next_f(*args, **kwargs)

    def forward(x):
        with hk.intercept_methods(record):
            return model_cls(1000, variant, **(model_kwargs or {}))(x, is_training=True)

    x = jax.ShapeDtypeStruct((batch, px, px, 3), jnp.float32)
    params = jax.eval_shape(hk.transform(forward).init, jax.random.key(0), x)
    return convs, ses, params


def conv_kind(conv: dict) -> str:
    """``'1x1 convs'``, ``'grouped 3x3 convs'`` or ``'dense 3x3 convs'``."""
    if conv["kernel"][:2] == (1, 1):
        return "1x1 convs"
    return "grouped 3x3 convs" if conv["groups"] > 1 else "dense 3x3 convs"


def _standardize_4d(w, gain, eps=1e-4):
    """The weight standardization as computed before issue 10: statistics over (H, W, I)."""
    axes = tuple(range(w.ndim - 1))
    mean = jnp.mean(w, axis=axes, keepdims=True)
    var = jnp.var(w, axis=axes, keepdims=True)
    scale = jax.lax.rsqrt(jnp.maximum(var * float(np.prod(w.shape[:-1])), eps)) * gain
    return w * scale - mean * scale


def _timed(fn: Callable, *args) -> Callable[[], float]:
    """A compiled ``fn(*args)`` returning a float after waiting for the result."""
    compiled = jax.jit(fn).lower(*args).compile()
    return lambda: float(jax.tree.leaves(compiled(*args))[0].ravel()[0])


def jax_kind(kind: str, convs, ses, abstract, batch: int, after: bool) -> Callable[[], float]:
    """One breakdown row's work in nfnets_jax (see the module docstring)."""
    rng = np.random.default_rng(0)
    normal = lambda shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    if kind.endswith("convs"):
        layers = [c for c in convs if conv_kind(c) == kind]
        impl = "auto" if after else "native"
        xs = [normal(c["in_shape"]) for c in layers]
        ws = [normal(c["kernel"]) / np.sqrt(np.prod(c["kernel"][:3])) for c in layers]

        def convs_out(xs, ws):
            return [
                grouped_conv(x, w, window_strides=c["stride"], padding=c["padding"],
                             dimension_numbers=_DN, feature_group_count=c["groups"],
                             conv_impl=impl)
                for c, x, w in zip(layers, xs, ws, strict=True)
            ]  # fmt: skip

        cts = [normal(y.shape) for y in jax.eval_shape(convs_out, xs, ws)]

        def run(xs, ws, cts):
            return sum(jnp.vdot(y, t) for y, t in zip(convs_out(xs, ws), cts, strict=True))

        return _timed(jax.value_and_grad(run, argnums=(0, 1)), xs, ws, cts)
    if kind == "weight standardization":
        ws = [normal(c["kernel"]) for c in convs]
        gains = [jnp.ones(c["kernel"][-1]) for c in convs]
        cts = [normal(c["kernel"]) for c in convs]

        def standardize(w, gain, conv):
            if not after:
                return _standardize_4d(w, gain)
            kh, kw, cin, cout = conv["kernel"]
            module = lambda: WSConv2D(cout, (kh, kw), feature_group_count=conv["groups"],
                                      name="conv")  # fmt: skip
            f = hk.transform(lambda: module().standardized_weight(cin * conv["groups"]))
            return f.apply({"conv": {"w": w, "gain": gain, "bias": jnp.zeros_like(gain)}}, None)

        def run(ws, gains):
            return sum(
                jnp.vdot(standardize(w, g, c), t)
                for w, g, c, t in zip(ws, gains, convs, cts, strict=True)
            )

        return _timed(jax.value_and_grad(run, argnums=(0, 1)), ws, gains)
    if kind == "squeeze-excite":
        xs = [normal(s["in_shape"]) for s in ses]
        cts = [normal(s["in_shape"]) for s in ses]
        f = hk.transform(
            lambda xs, cts: sum(
                jnp.vdot(2.0 * SqueezeExcite(x.shape[-1], x.shape[-1], None, s["hidden"])(x) * x,
                         t)
                for s, x, t in zip(ses, xs, cts, strict=True)
            )
        )  # fmt: skip
        params = f.init(jax.random.key(0), xs, cts)
        grad = jax.value_and_grad(lambda p, xs, cts: f.apply(p, None, xs, cts), (0, 1))
        return _timed(grad, params, xs, cts)
    params = random_params(abstract)
    grads = jax.tree.map(lambda p: 1e-2 * normal(p.shape), params)
    if kind == "AGC":
        tx = adaptive_grad_clip(0.01, eps=1e-3)
        return _timed(lambda g, p: tx.update(g, tx.init(p), p)[0], grads, params)
    tx, _ = build_optimizer(
        nfnet_optimizer_config(), params, batch_size=batch, steps_per_epoch=10, total_steps=1000
    )
    state = tx.init(params)
    return _timed(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]), grads, state,
                  params)  # fmt: skip


def _tf_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def torch_kind(kind: str, convs, ses, variant: str) -> Callable[[], float]:
    """One breakdown row's work in PyTorch, as timm's layers do it."""
    import timm
    import torch
    import torch.nn.functional as F
    from timm.utils import adaptive_clip_grad

    torch.set_num_threads(os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(0)
    normal = lambda *shape: torch.randn(tuple(shape), generator=gen)
    if kind.endswith("convs"):
        layers = [c for c in convs if conv_kind(c) == kind]
        xs = [normal(*(c["in_shape"][i] for i in (0, 3, 1, 2))).requires_grad_() for c in layers]
        ws = []
        for c in layers:
            kh, kw, ci, co = c["kernel"]
            ws.append((normal(co, ci, kh, kw) / (kh * kw * ci) ** 0.5).requires_grad_())

        def convs_out() -> list:
            out = []
            for c, x, w in zip(layers, xs, ws, strict=True):
                (sh, sw), (kh, kw) = c["stride"], c["kernel"][:2]
                (t, b), (left, r) = _tf_same(x.shape[2], kh, sh), _tf_same(x.shape[3], kw, sw)
                out.append(
                    F.conv2d(F.pad(x, (left, r, t, b)), w, stride=(sh, sw), groups=c["groups"])
                )
            return out

        with torch.no_grad():
            cts = [normal(*y.shape) for y in convs_out()]

        def run() -> float:
            total = sum((y * t).sum() for y, t in zip(convs_out(), cts, strict=True))
            total.backward()
            return float(total.detach())

        return run
    if kind == "weight standardization":
        ws = [normal(c["kernel"][3], *c["kernel"][2::-1]).requires_grad_() for c in convs]
        gains = [torch.ones(c["kernel"][3], requires_grad=True) for c in convs]
        cts = [normal(*w.shape) for w in ws]

        def run() -> float:
            total = 0.0
            for w, g, t in zip(ws, gains, cts, strict=True):
                fan_in = w[0].numel()
                std = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None,
                                   weight=(g * fan_in**-0.5).view(-1), training=True,
                                   momentum=0.0, eps=1e-5)  # fmt: skip
                total = total + (std.reshape_as(w) * t).sum()
            total.backward()
            return float(total.detach())

        return run
    if kind == "squeeze-excite":
        xs = [normal(*(s["in_shape"][i] for i in (0, 3, 1, 2))).requires_grad_() for s in ses]
        gates = [
            torch.nn.Sequential(
                torch.nn.Conv2d(x.shape[1], s["hidden"], 1), torch.nn.ReLU(),
                torch.nn.Conv2d(s["hidden"], x.shape[1], 1), torch.nn.Sigmoid(),
            )
            for s, x in zip(ses, xs, strict=True)
        ]  # fmt: skip

        cts = [normal(*x.shape) for x in xs]

        def run() -> float:
            total = 0.0
            for gate, x, t in zip(gates, xs, cts, strict=True):
                y = 2.0 * gate(x.mean((2, 3), keepdim=True)) * x
                total = total + (y * t).sum()
            total.backward()
            return float(total.detach())

        return run
    torch.manual_seed(0)
    model = timm.create_model(f"dm_nfnet_{variant.lower()}", pretrained=False)
    head = {id(p) for p in model.get_classifier().parameters()}
    clipped = [p for p in model.parameters() if id(p) not in head]
    for p in model.parameters():
        p.grad = 1e-2 * normal(*p.shape)
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True,
                                weight_decay=2e-5)  # fmt: skip

    def run() -> float:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad.copy_(g)
        adaptive_clip_grad(clipped, clip_factor=0.01, eps=1e-3)
        if kind != "AGC":
            optimizer.step()
        return float(clipped[0].grad.ravel()[0])

    return run


def torch_matmul(n: int = MATMUL_N) -> Callable[[], float]:
    """``common.matmul_run``'s float32 matmul in torch, on ``os.cpu_count()`` threads."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a = torch.randn(n, n)

    def run() -> float:
        torch.mm(a, a)
        return 0.0

    return run


def analytic_flops(variant: str, batch: int, px: int, training: bool) -> float:
    """FLOPs of one step: ``count_flops`` MACs x 2, x 3 more for forward + backward."""
    model_cls = get_model("NFNet")
    macs = count_flops(lambda: model_cls(1000, variant), px, px) * batch
    return 2.0 * macs * (3 if training else 1)


def breakdown(args, with_timm: bool, model_kwargs: dict | None = None) -> list[dict]:
    """Interleaved medians of every layer kind: before, after and (optionally) timm."""
    convs, ses, abstract = f0_layers(args.variant, args.batch, args.px, model_kwargs)
    runs, rows = {}, []
    for kind in KINDS:
        runs[(kind, "before")] = jax_kind(kind, convs, ses, abstract, args.batch, after=False)
        runs[(kind, "after")] = jax_kind(kind, convs, ses, abstract, args.batch, after=True)
        if with_timm:
            runs[(kind, "timm")] = torch_kind(kind, convs, ses, args.variant)
        if kind.endswith("convs"):
            count = sum(conv_kind(c) == kind for c in convs)
        elif kind == "weight standardization":
            count = len(convs)
        elif kind == "squeeze-excite":
            count = len(ses)
        else:
            count = len(jax.tree.leaves(abstract))
        rows.append({"kind": kind, "count": count})
        print(f"breakdown: {kind} ready", flush=True)
    results = train_step.interleaved_medians(runs, args.breakdown_rounds, 1)
    for row in rows:
        for column in ("before", "after", "timm"):
            if (row["kind"], column) in results:
                row[column] = results[(row["kind"], column)][0]
    return rows


def render(steps: list[dict], kinds: list[dict], args, torch_versions: str, kept: bool) -> str:
    """The BENCHMARKS.md section: the two step ratios, then the breakdown."""
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.vs_timm {' '.join(sys.argv[1:])}`",
        "",
        f"Measured {time.strftime('%Y-%m-%d')}. Machine: {common.machine()} (at the end of "
        f"the run). JAX backend {jax.default_backend()}; "
        f"{common.versions(jax, hk, optax, np)}{torch_versions}. float32, random weights. "
        f"Host memory kept for reuse (`keep_host_memory`, for the whole process: timm "
        f"too): {'yes' if kept else 'no'}.",
        f"Training step: NFNet-{args.variant}, batch {args.batch} at {args.px} px, forward + "
        "backward + AGC + weight decay + Nesterov SGD. Inference: the evaluation forward, "
        f"batch {args.inference_batch} at {args.inference_px} px. Alternated {args.rounds} "
        f"rounds x {args.steps} steps after a warm-up; medians. Ratio: nfnets_jax's time "
        "over timm's (below 1: faster than timm).",
        "",
        "| work | nfnets_jax conv lowering | compile (s) | nfnets_jax (s) | timm (s) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for s in steps:
        timm_s = "n/a" if s.get("timm") is None else f"{s['timm']:.3f}"
        ratio = "n/a" if s.get("timm") is None else f"{s['seconds'] / s['timm']:.2f}"
        lines.append(
            f"| {s['work']} | {s['impl']} | {s['compile_s']:.1f} | {s['seconds']:.3f} | "
            f"{timm_s} | {ratio} |"
        )
    rated = [s for s in steps if s.get("flops")]
    if rated:
        lines += [
            "",
            f"Achieved FLOP/s: the analytic FLOPs of each step over its time, and a float32 "
            f"{MATMUL_N} x {MATMUL_N} matmul alternated with the steps, in JAX and in torch "
            "(each framework's own reference peak on this machine). The last two columns are "
            "each step's FLOP/s as a fraction of its own framework's matmul.",
            "",
            "| work | GFLOP | nfnets_jax GFLOP/s | timm GFLOP/s | nfnets_jax / JAX matmul "
            "| timm / torch matmul |",
            "|---|---|---|---|---|---|",
        ]
        for s in rated:
            ours, theirs = s["flops"] / s["seconds"], None
            if s.get("timm") is not None:
                theirs = s["flops"] / s["timm"]
            peak_ours, peak_theirs = s.get("matmul"), s.get("timm_matmul")
            cells = [
                s["work"],
                f"{s['flops'] / 1e9:.1f}",
                f"{ours / 1e9:.1f}",
                "n/a" if theirs is None else f"{theirs / 1e9:.1f}",
                "n/a" if not peak_ours else f"{ours / peak_ours:.0%}",
                "n/a" if not (theirs and peak_theirs) else f"{theirs / peak_theirs:.0%}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if kinds:
        lines += [
            "",
            f"By layer kind: every such layer of NFNet-{args.variant} at batch {args.batch}, "
            f"{args.px} px, forward + gradients, milliseconds (medians of "
            f"{args.breakdown_rounds} alternated rounds). Before: `conv_impl='native'` and "
            "the weight statistics over the kernel's (H, W, I) axes; after: the defaults.",
            "",
            "| layer kind | layers | before (ms) | after (ms) | timm (ms) | after / timm |",
            "|---|---|---|---|---|---|",
        ]
        for k in kinds:
            timm_ms = "n/a" if "timm" not in k else f"{1e3 * k['timm']:.1f}"
            ratio = "n/a" if "timm" not in k else f"{k['after'] / k['timm']:.2f}"
            lines.append(
                f"| {k['kind']} | {k['count']} | {1e3 * k['before']:.1f} | "
                f"{1e3 * k['after']:.1f} | {timm_ms} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="F0")
    parser.add_argument("--batch", type=int, default=8, help="training-step batch")
    parser.add_argument("--px", type=int, default=128, help="training-step resolution")
    parser.add_argument("--inference-batch", type=int, default=4)
    parser.add_argument("--inference-px", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round and run")
    parser.add_argument("--native", action="store_true", help="also time conv_impl='native'")
    parser.add_argument("--breakdown-rounds", type=int, default=3)
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--no-timm", action="store_true", help="skip timm (tests)")
    parser.add_argument("--no-keep-host-memory", action="store_true",
                        help="leave glibc's malloc defaults")  # fmt: skip
    parser.add_argument("--record", action="store_true", help="write into BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    kept = (
        not args.no_keep_host_memory
        and host_memory.cpu_only_host()
        and host_memory.keep_host_memory()
    )
    impls = ["auto"] + (["native"] if args.native else [])
    runs, steps = {}, []
    for work, make, batch, px in (
        ("training step", train_step.jax_step, args.batch, args.px),
        ("inference", train_step.jax_inference, args.inference_batch, args.inference_px),
    ):
        for impl in impls:
            runs[(work, impl)], compile_s = make(args.variant, batch, px, impl)
            flops = analytic_flops(args.variant, batch, px, work == "training step")
            steps.append({"work": work, "impl": impl, "compile_s": compile_s, "flops": flops})
            print(f"{work} {impl}: compiled in {compile_s:.1f} s", flush=True)
    runs[("matmul", "jax")] = common.matmul_run(jnp.float32, MATMUL_N)
    torch_versions = ""
    if not args.no_timm:
        import timm
        import torch

        runs[("training step", "timm")] = train_step.torch_step(args.variant, args.batch, args.px)
        runs[("inference", "timm")] = train_step.torch_inference(
            args.variant, args.inference_batch, args.inference_px
        )
        runs[("matmul", "torch")] = torch_matmul()
        torch_versions = f", torch {torch.__version__}, timm {timm.__version__}"
    results = train_step.interleaved_medians(runs, args.rounds, args.steps)
    matmul_flops = 2.0 * MATMUL_N**3
    for s in steps:
        s["seconds"] = results[(s["work"], s["impl"])][0]
        s["timm"] = results.get((s["work"], "timm"), (None,))[0]
        s["matmul"] = matmul_flops / results[("matmul", "jax")][0]
        if ("matmul", "torch") in results:
            s["timm_matmul"] = matmul_flops / results[("matmul", "torch")][0]
        print(s, flush=True)
    kinds = [] if args.no_breakdown else breakdown(args, not args.no_timm)
    text = render(steps, kinds, args, torch_versions, kept)
    print(text)
    if args.record:
        common.write_section(SECTION, text)


if __name__ == "__main__":
    main()

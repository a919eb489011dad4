"""One NFNet training step (or eval forward) per convolution lowering, next to timm's.

Run ``python -m benchmarks.train_step --help``. The step is what a run does per batch,
without the input pipeline: the model's training forward (stochastic depth and dropout
on), softmax cross-entropy, the backward pass, and the NFNet optimizer of
``nfnets_jax.optim.build_optimizer`` (AGC, coupled weight decay, Nesterov SGD), jitted
with the parameters and optimizer state carried from step to step. Each ``--impls``
lowering (``conv_impl``, default ``native`` and ``auto``) gets its own compiled step;
``patches@N`` is ``'patches'`` traced with ``conv.PATCHES_MIN_POSITIONS = N``
(``patches@1``: every 3x3 kernel gradient from patches).

With timm and torch importable, timm's ``dm_nfnet_f0`` (random initialisation) is timed
too: the same batch and resolution, ``torch.set_num_threads(os.cpu_count())``, cross-
entropy, ``timm.utils.adaptive_clip_grad`` (0.01, eps 1e-3) on every parameter but the
classifier, then ``torch.optim.SGD`` (Nesterov momentum 0.9, weight decay 2e-5).

On a CPU-only host the run first calls :func:`nfnets_jax.host_memory.keep_host_memory`
for the whole process (timm too), what ``NFNETS_JAX_KEEP_HOST_MEMORY=1`` does in
``experiments.train``; ``--no-keep-host-memory`` leaves glibc's defaults.

``--inference`` times the evaluation forward instead (``is_training=False``, jitted; timm's
``model.eval()`` under ``torch.inference_mode()``), e.g. ``--inference --batch 4 --px 256``.

The contenders run interleaved (A B C A B C ...) for ``--rounds`` rounds of ``--steps``
steps each after one warm-up step, and each reports the median step over all its timed
steps, so a load change on a shared machine hits them alike. ``--record`` writes the
table into the ``## Training step`` (``## Inference step``) section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from benchmarks.model_step import random_params
from nfnets_jax import host_memory
from nfnets_jax.models import conv as conv_module
from nfnets_jax.models import get_model
from nfnets_jax.models.conv import resolve_conv_impl
from nfnets_jax.optim import build_optimizer, nfnet_optimizer_config

SECTION = "## Training step"
INFERENCE_SECTION = "## Inference step"
# The NFNet recipe: weight decay 2e-5, AGC clipping 0.01 with eps 1e-3 (nfnet_optimizer_config).
_WEIGHT_DECAY, _CLIPPING, _AGC_EPS = 2e-5, 0.01, 1e-3


def jax_step(
    variant: str,
    batch: int,
    px: int,
    conv_impl: str,
    num_classes: int = 1000,
    model_kwargs: dict | None = None,
) -> tuple[Callable[[], float], float]:
    """A compiled NFNet training step with its state carried between calls.

    Args:
        variant: NFNet variant, e.g. ``'F0'``.
        batch: images per step.
        px: image height and width.
        conv_impl: the model's ``conv_impl``.
        num_classes: classifier width.
        model_kwargs: further NFNet keyword arguments (e.g. narrow widths for tests).

    Returns:
        ``(run, compile_s)``: ``run()`` does one step, waits for it and returns its loss
        (``run.compiled`` is the compiled step); ``compile_s`` is the time to compile it.
    """
    model_cls = get_model("NFNet")
    kwargs = dict(model_kwargs or {}, conv_impl=conv_impl)
    forward = hk.transform(lambda x, t: model_cls(num_classes, variant, **kwargs)(x, is_training=t))
    data = np.random.default_rng(1)
    x = jnp.asarray(data.standard_normal((batch, px, px, 3)), jnp.float32)
    labels = jnp.arange(batch) % num_classes
    abstract = jax.eval_shape(lambda k, x: forward.init(k, x, True), jax.random.key(0), x)
    params = random_params(abstract)
    # A long schedule, so the timed steps are not the lr(0) = 0 first update alone.
    tx, _ = build_optimizer(
        nfnet_optimizer_config(), params, batch_size=batch, steps_per_epoch=10, total_steps=1000
    )

    def loss_fn(params, rng):
        logits = forward.apply(params, rng, x, True)["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(params, opt_state, rng):
        rng, key = jax.random.split(rng)
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng, loss

    state = (params, tx.init(params), jax.random.key(2))
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state).compile()
    compile_s = time.perf_counter() - start

    def run() -> float:
        nonlocal state
        *new_state, loss = compiled(*state)
        state = tuple(new_state)
        return float(loss)

    run.compiled = compiled  # for memory_analysis()
    return run, compile_s


def jax_inference(
    variant: str,
    batch: int,
    px: int,
    conv_impl: str,
    num_classes: int = 1000,
    model_kwargs: dict | None = None,
) -> tuple[Callable[[], float], float]:
    """A compiled NFNet evaluation forward; arguments and result as :func:`jax_step`'s.

    ``run()`` returns the first logit (so a test can compare lowerings).
    """
    model_cls = get_model("NFNet")
    kwargs = dict(model_kwargs or {}, conv_impl=conv_impl)
    forward = hk.without_apply_rng(
        hk.transform(lambda x: model_cls(num_classes, variant, **kwargs)(x, is_training=False))
    )
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, px, px, 3)), jnp.float32)
    params = random_params(jax.eval_shape(forward.init, jax.random.key(0), x))
    start = time.perf_counter()
    compiled = jax.jit(lambda p, x: forward.apply(p, x)["logits"]).lower(params, x).compile()
    compile_s = time.perf_counter() - start
    return lambda: float(compiled(params, x)[0, 0]), compile_s


def torch_inference(variant: str, batch: int, px: int) -> Callable[[], float]:
    """timm's ``dm_nfnet_<variant>`` evaluation forward on PyTorch CPU."""
    import timm
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = timm.create_model(f"dm_nfnet_{variant.lower()}", pretrained=False).eval()
    x = torch.randn(batch, 3, px, px)

    def run() -> float:
        with torch.inference_mode():
            return float(model(x)[0, 0])

    return run


def torch_step(variant: str, batch: int, px: int) -> Callable[[], float]:
    """timm's ``dm_nfnet_<variant>`` training step on PyTorch CPU (see the module docstring)."""
    import timm
    import torch
    import torch.nn.functional as F
    from timm.utils import adaptive_clip_grad

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = timm.create_model(f"dm_nfnet_{variant.lower()}", pretrained=False)
    model.train()
    head = {id(p) for p in model.get_classifier().parameters()}
    clipped = [p for p in model.parameters() if id(p) not in head]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1 * batch / 256, momentum=0.9, nesterov=True,
        weight_decay=_WEIGHT_DECAY,
    )  # fmt: skip
    x = torch.randn(batch, 3, px, px)
    labels = torch.arange(batch) % model.num_classes

    def run() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        adaptive_clip_grad(clipped, clip_factor=_CLIPPING, eps=_AGC_EPS)
        optimizer.step()
        return float(loss.detach())

    return run


def interleaved_medians(runs: dict[str, Callable[[], float]], rounds: int, steps: int):
    """Median seconds per step of each run, timed in turn; returns ``{name: (s, loss)}``."""
    times = {name: [] for name in runs}
    losses = {name: run() for name, run in runs.items()}  # warm-up step
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(steps):
                start = time.perf_counter()
                losses[name] = run()
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), losses[name]) for name in runs}


def render(rows: list[dict], args, torch_versions: str) -> str:
    work = (
        "the evaluation forward (is_training=False)"
        if args.inference
        else "forward + backward + AGC + weight decay + Nesterov SGD, parameters carried "
        "between steps"
    )
    lines = [
        INFERENCE_SECTION if args.inference else SECTION,
        "",
        f"`python -m benchmarks.train_step {' '.join(sys.argv[1:])}`",
        "",
        f"Measured {time.strftime('%Y-%m-%d')}. Machine: {common.machine()} (at the end of "
        "the run). JAX backend "
        f"{jax.default_backend()}; {common.versions(jax, hk, optax, np)}{torch_versions}.",
        f"NFNet-{args.variant}, batch {args.batch} at {args.px} px, float32: {work}. "
        f"Interleaved {args.rounds} rounds x {args.steps} steps after a warm-up step; "
        "median seconds per step. Speed-up is the first row's step time over the row's; "
        "vs timm is timm's step time over the row's (above 1: faster than timm).",
        "",
        "| step | conv lowering | compile (s) | step (s) | img/s | speed-up | vs timm |",
        "|---|---|---|---|---|---|---|",
    ]
    base = rows[0]["step_s"]
    timm_s = next((r["step_s"] for r in rows if r["impl"] == "timm"), None)
    for r in rows:
        compile_s = "n/a" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        vs_timm = "n/a" if timm_s is None else f"{timm_s / r['step_s']:.2f}x"
        lines.append(
            f"| {r['name']} | {r['conv']} | {compile_s} | {r['step_s']:.3f} | "
            f"{args.batch / r['step_s']:.1f} | {base / r['step_s']:.2f}x | {vs_timm} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="F0")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--px", type=int, default=128)
    parser.add_argument(
        "--impls", default="native,auto", help="comma-separated conv_impls (or patches@N)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round and run")
    parser.add_argument("--no-timm", action="store_true", help="skip timm's PyTorch step")
    parser.add_argument(
        "--inference", action="store_true", help="time the evaluation forward instead"
    )
    parser.add_argument("--no-keep-host-memory", action="store_true",
                        help="leave glibc's malloc defaults")  # fmt: skip
    parser.add_argument("--record", action="store_true", help="write into BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # NFNETS_JAX_KEEP_HOST_MEMORY=1 in experiments.train, for the whole process (timm too).
    if not args.no_keep_host_memory and host_memory.cpu_only_host():
        host_memory.keep_host_memory()
    runs, rows = {}, []
    for impl in (i.strip() for i in args.impls.split(",")):
        make = jax_inference if args.inference else jax_step
        name, _, positions = impl.partition("@")
        default_positions = conv_module.PATCHES_MIN_POSITIONS
        try:  # 'patches@N': PATCHES_MIN_POSITIONS = N while this step is traced
            conv_module.PATCHES_MIN_POSITIONS = int(positions or default_positions)
            runs[impl], compile_s = make(args.variant, args.batch, args.px, name)
        finally:
            conv_module.PATCHES_MIN_POSITIONS = default_positions
        conv = impl if name == resolve_conv_impl(name) else f"{impl} ({resolve_conv_impl(name)})"
        rows.append({"name": f"nfnets_jax NFNet-{args.variant}", "conv": conv, "impl": impl})
        rows[-1]["compile_s"] = compile_s
        print(f"compiled {impl} in {compile_s:.1f} s", flush=True)
    torch_versions = ""
    if not args.no_timm:
        try:
            import timm
            import torch
        except ImportError as e:
            print(f"timm step skipped: {e}", flush=True)
        else:
            make = torch_inference if args.inference else torch_step
            runs["timm"] = make(args.variant, args.batch, args.px)
            rows.append({"name": f"timm dm_nfnet_{args.variant.lower()} (torch)",
                         "conv": "torch", "impl": "timm", "compile_s": None})  # fmt: skip
            torch_versions = f", torch {torch.__version__}, timm {timm.__version__}"
    results = interleaved_medians(runs, args.rounds, args.steps)
    for row in rows:
        row["step_s"], row["loss"] = results[row["impl"]]
        print(row, flush=True)
    text = render(rows, args, torch_versions)
    print(text)
    if args.record:
        common.write_section(INFERENCE_SECTION if args.inference else SECTION, text)


if __name__ == "__main__":
    main()

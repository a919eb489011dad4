"""Cost of AGC in the NFNet optimizer step, on NFNet-F0's real parameter shapes.

Times one jitted optimizer update (``tx.update`` + ``apply_updates``, no model) over the
71.5M-parameter F0 tree for: Nesterov SGD with coupled weight decay (no AGC), the full
NFNet recipe (AGC with statistics -> decay -> Nesterov SGD), the same with
``optax.adaptive_grad_clip`` in place of ours, and each AGC alone.

Run from the repository root::

    python -m benchmarks.agc_overhead            # print
    python -m benchmarks.agc_overhead --write    # and record into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from nfnets_jax.optim import (
    IMAGENET_TRAIN_EXAMPLES,
    NFNET_NO_CLIP_PATTERNS,
    adaptive_grad_clip,
    build_optimizer,
    mask_from_patterns,
    nfnet_optimizer_config,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The repository's copy of the official F0 tree (paths and shapes from DeepMind's code).
TREES = ROOT / "tests" / "optim" / "param_trees.json"
SECTION = "## Optimisation (AGC)"


def f0_params(seed: int = 0) -> dict:
    shapes = json.loads(TREES.read_text())["NFNet-F0"]
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for path, shape in sorted(shapes.items()):
        module, name = path.rsplit("/", 1)
        tree.setdefault(module, {})[name] = jnp.asarray(
            rng.standard_normal(shape, dtype=np.float32) * 0.05
        )
    return tree


def make_step(tx):
    """Jitted update + apply, donating params and state as a training loop would."""

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return jax.jit(step, donate_argnums=(0, 1))


def time_cases(cases: dict, params, grads, rounds: int) -> dict[str, tuple[float, list]]:
    """Compile time and per-round update times, interleaving the cases round by round so
    that load from other jobs on the machine hits them alike."""
    steps, carry, compile_s = {}, {}, {}
    for name, tx in cases.items():
        steps[name] = make_step(tx)
        p = jax.tree.map(jnp.copy, params)
        start = time.perf_counter()
        carry[name] = jax.block_until_ready(steps[name](p, tx.init(p), grads))
        compile_s[name] = time.perf_counter() - start
    times: dict[str, list] = {name: [] for name in cases}
    for _ in range(rounds):
        for name in cases:
            start = time.perf_counter()
            carry[name] = jax.block_until_ready(steps[name](*carry[name], grads))
            times[name].append(time.perf_counter() - start)
    return {name: (compile_s[name], times[name]) for name in cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per case")
    parser.add_argument("--write", action="store_true", help="record into BENCHMARKS.md")
    args = parser.parse_args()

    params = f0_params()
    grads = jax.tree.map(lambda p: p * 0.02 + 1e-4, params)
    num = sum(p.size for p in jax.tree.leaves(params))
    clip_mask = mask_from_patterns(params, NFNET_NO_CLIP_PATTERNS, invert=True)
    # ImageNet, batch 4096, 360 epochs; `plain` is the same recipe without AGC.
    run = dict(
        batch_size=4096,
        steps_per_epoch=IMAGENET_TRAIN_EXAMPLES / 4096,
        total_steps=IMAGENET_TRAIN_EXAMPLES * 360 // 4096,
    )
    recipe, _ = build_optimizer(nfnet_optimizer_config(), params, **run)
    plain, _ = build_optimizer(nfnet_optimizer_config(name="sgd", clipping=None), params, **run)
    with_optax_agc = optax.chain(
        optax.masked(optax.adaptive_grad_clip(0.01, 1e-3), clip_mask), plain
    )
    cases = {
        "SGD Nesterov + weight decay (no AGC)": plain,
        "NFNet recipe (nfnets_jax AGC -> decay -> SGD)": recipe,
        "same with optax.adaptive_grad_clip": with_optax_agc,
        "nfnets_jax adaptive_grad_clip alone": optax.masked(adaptive_grad_clip(0.01), clip_mask),
        "optax.adaptive_grad_clip alone": optax.masked(optax.adaptive_grad_clip(0.01), clip_mask),
    }
    load_before = os.getloadavg()[0]
    results = time_cases(cases, params, grads, args.repeats)
    load_after = os.getloadavg()[0]
    rows = []
    for name, (first, times) in results.items():
        median, best = statistics.median(times), min(times)
        rows.append((name, first, median, best))
        print(
            f"{name:50s} compile+first {first:6.2f} s   median {median * 1e3:7.1f} ms"
            f"   min {best * 1e3:7.1f} ms"
        )

    machine = f"{common.machine()} ({jax.devices()[0].platform}); {common.versions(jax, optax)}"
    lines = [
        SECTION,
        "",
        "`python -m benchmarks.agc_overhead`: one jitted optimizer update (update +",
        f"apply_updates with donated params/state, no model) over NFNet-F0's {num:,}",
        f"float32 parameters; {args.repeats} timed rounds after compiling, the cases",
        "interleaved so that load from other jobs hits them alike.",
        "",
        f"Machine: {machine}. It is shared with other jobs (1-minute load average",
        f"{load_before:.1f} before, {load_after:.1f} after on 2 cores), so expect noise of",
        "tens of percent between runs; compare rows of one run only.",
        "",
        "| Update | Compile + first run (s) | Median per update (ms) | Min (ms) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {f:.2f} | {m * 1e3:.1f} | {b * 1e3:.1f} |" for n, f, m, b in rows]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.write:
        common.write_section(SECTION, text)


if __name__ == "__main__":
    main()

"""End-to-end training throughput: the real input pipeline vs data already on the devices.

Builds the experiment exactly as `python -m experiments.train` does (same config loading
and overrides, same model, optimizer, mapped step and input pipeline), then measures in
one run:

* compile time: the first training step, compilation included;
* synthetic: `--steps` steps on one batch that stays on the devices (the model's speed);
* real: `--steps` steps fed by the tf.data pipeline and device prefetcher (what a run
  gets), and the pipeline alone (batches per second with no training);
* the real/synthetic ratio: near 1 means the input keeps up; well below 1 means the
  accelerators wait for data;
* peak memory (device peak where the backend reports it, else the process peak RSS).

Examples:

    python -m benchmarks.train_throughput --config=nfnet_demo
    # The F0 recipe's input pipeline (MixUp, CutMix, RandAugment 4x5) on real JPEGs
    # (a small imagenet2012 built from photos shipped in packages) with a narrow NFNet:
    python -m benchmarks.train_throughput --preset=f0_pipeline --write
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import common  # noqa: E402
from experiments import configs  # noqa: E402
from nfnets_jax import data  # noqa: E402
from nfnets_jax.training import config as config_lib  # noqa: E402
from nfnets_jax.training import inputs, parallel, startup  # noqa: E402

SECTION = "## Training throughput"

# Overrides of the --preset cases recorded in BENCHMARKS.md.
PRESETS = {
    "demo": ("nfnet_demo", []),
    "f0_pipeline": (
        "nfnet_f0",
        [
            ("model_kwargs.width_pattern", "(32, 64, 128, 128)"),
            ("model_kwargs.depth_pattern", "(1, 1, 1, 1)"),
            ("model_kwargs.group_width", "16"),
            ("model_kwargs.stem_widths", "(8, 16, 16)"),
            ("dataset.image_size", "128"),
            ("train_batch_size", "32"),
            ("bfloat16", "false"),
        ],
    ),
}


def measure(config, steps: int) -> dict:
    """Runs the measurements for one config; returns the figures."""
    mapper = parallel.DeviceMapper(config.parallelism)
    config_lib.validate_config(config, num_devices=mapper.num_devices)
    plan = startup.plan_run(config, mapper)
    setup = startup.build_setup(config, plan, mapper)
    state = jax.jit(setup.init, out_shardings=mapper.replicated)(
        jax.random.PRNGKey(config.seed), jnp.zeros(setup.image_shape)
    )
    mapped_step = startup.build_train_step(config, plan, setup, mapper)

    def train_fn(device_state, batch):
        return mapped_step.fn(device_state, batch, *mapped_step.extra_args)

    device_state = mapper.to_device_state(state)
    # Both the iterator and the prefetch thread are closed on the way out, before
    # TensorFlow shuts down.
    with inputs.train_iterator(config, plan, mapper) as host_batches:
        # The input pipeline alone (host batches, no training), after one warm-up batch.
        next(host_batches)
        start = time.perf_counter()
        for _ in range(steps):
            next(host_batches)
        pipeline_s = (time.perf_counter() - start) / steps
        with data.prefetch_to_device(
            host_batches, size=2, sharding=mapper.batch_sharding
        ) as batches:
            return _measure_steps(
                config, mapper, train_fn, device_state, batches, steps, pipeline_s
            )


def _measure_steps(config, mapper, train_fn, device_state, batches, steps, pipeline_s) -> dict:
    """Compile, synthetic and real step timings (see `measure`)."""
    fixed = next(batches)
    start = time.perf_counter()
    device_state, metrics = train_fn(device_state, fixed)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start

    def synthetic_step():
        nonlocal device_state
        device_state, out = train_fn(device_state, fixed)
        jax.block_until_ready(out)

    step_s = common.median_seconds(synthetic_step, steps, warmup=2)

    next(batches)  # refill the prefetch queue before timing
    start = time.perf_counter()
    for _ in range(steps):
        device_state, metrics = train_fn(device_state, next(batches))
    jax.block_until_ready(metrics)
    real_s = (time.perf_counter() - start) / steps
    peak, peak_kind = common.peak_memory()
    batch = config.train_batch_size
    return {
        "devices": f"{mapper.num_devices} x {jax.devices()[0].device_kind}",
        "batch": batch,
        "image_size": config.dataset.image_size,
        "augment": config.dataset.augment_name or config.dataset.train_preproc,
        "compile_s": compile_s,
        "step_s": step_s,
        "synthetic_ips": batch / step_s,
        "real_ips": batch / real_s,
        "pipeline_ips": batch / pipeline_s,
        "peak_mib": peak / 2**20,
        "peak_kind": peak_kind,
        "finite": bool(float(metrics["finite"]) == 1.0),
    }


def render(rows: list[tuple[str, str, dict]]) -> str:
    import haiku as hk
    import optax
    import tensorflow as tf

    lines = [
        SECTION,
        "",
        "`python -m benchmarks.train_throughput --preset=NAME`: the real training step of "
        "`experiments.train` fed by the real input pipeline, next to the same step on one "
        "batch kept on the devices, measured in one run (real/synthetic near 1: the input "
        "keeps up). img/s counts training images per second.",
        "",
        f"Machine: {common.machine()}; backend {jax.default_backend()}; "
        f"{common.versions(jax, hk, optax, tf)}.",
        "",
        "| case | config | devices | batch | px | input | compile + 1st step (s) | "
        "step (s) | synthetic img/s | real img/s | real / synthetic | pipeline alone img/s | "
        "peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, spec, r in rows:
        lines.append(
            f"| {case} | `{spec}` | {r['devices']} | {r['batch']} | {r['image_size']} | "
            f"{r['augment']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | "
            f"{r['synthetic_ips']:,.0f} | {r['real_ips']:,.0f} | "
            f"{r['real_ips'] / r['synthetic_ips']:.2f} | {r['pipeline_ips']:,.0f} | "
            f"{r['peak_mib']:,.0f} ({r['peak_kind']}) |"
        )
    return "\n".join(lines) + "\n"


def build_config(spec: str, overrides, tmp_root: str):
    config = configs.load_config(spec)
    config_lib.apply_overrides(config, overrides)
    if config.dataset.name == "imagenet2012" and not config.dataset.data_dir:
        # No ImageNet here: build a small real one from photos shipped in packages.
        from benchmarks.input_pipeline import build_imagenet

        with config.unlocked():
            config.dataset.data_dir = build_imagenet(tmp_root)
    return config


def _split_overrides(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """`--config.KEY=VALUE` pairs (applied per case by `build_config`), and the rest."""
    overrides, rest = [], argv[:1]
    for arg in argv[1:]:
        if arg.startswith("--config.") and "=" in arg:
            key, value = arg[len("--config.") :].split("=", 1)
            overrides.append((key, value))
        else:
            rest.append(arg)
    return overrides, rest


def main(argv: list[str]) -> None:
    spec, rest = configs.pop_config_spec(argv)
    overrides, rest = _split_overrides(rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset",
        action="append",
        choices=sorted(PRESETS),
        help="recorded case(s) to run instead of --config",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(rest[1:])
    cases = [(name, *PRESETS[name]) for name in args.preset or []]
    if spec:
        cases.append(("custom", spec, overrides))
    if not cases:
        parser.error("pass --config=NAME [--config.x=...] or --preset=NAME")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_root:
        for case, config_spec, case_overrides in cases:
            config = build_config(config_spec, case_overrides, tmp_root)
            result = measure(config, args.steps)
            shown = " ".join([config_spec] + [f"{k}={v}" for k, v in case_overrides])
            rows.append((case, shown, result))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()})
    text = render(rows)
    print(text)
    if args.write:
        common.write_section(SECTION, text)


if __name__ == "__main__":
    main(sys.argv)

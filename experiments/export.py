r"""Exports a run's parameters as a standalone file: `python -m experiments.export`.

Examples:

    # DeepMind's layout (a pickle of {module: {param: float32 array}}, loadable by their
    # code, by nfnets_jax.checkpoints.load_params and by nfnets_jax.pretrained.load).
    python -m experiments.export --workdir=/tmp/nfnet_demo --out=demo_haiku.npz

    # A numpy archive with 'module/param' keys, the raw (not EMA) parameters of step 400.
    python -m experiments.export --workdir=RUN --out=mine.npz --format=npz --no-ema --step=400

    # timm's state-dict layout (.safetensors) of a standard F0..F7 run: see README "timm weights".
    python -m experiments.export --workdir=RUN --out=dm_nfnet_f0.safetensors --format=timm

Next to the file goes `<out>.json`, the model's spec (architecture, classes, test size,
preprocessing, class names), so `pretrained.load`, `experiments.predict` and
`experiments.evaluate` rebuild the exact model. Share both files.
"""

from __future__ import annotations

import argparse
import os
import sys

from nfnets_jax import cli
from nfnets_jax.errors import ConfigError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.export",
        description="Write a training run's parameters as a pickle (DeepMind's layout) or .npz.",
        allow_abbrev=False,
    )
    parser.add_argument("--workdir", required=True, help="the training run directory")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--format", choices=("pickle", "npz", "timm"), default="pickle")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export the EMA parameters (default, when the run kept them) or the raw ones",
    )
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    parser.add_argument("--verbose", action="store_true", help="show library start-up output")
    return parser.parse_args(argv)


def _export(args: argparse.Namespace) -> int:
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # absl logging without absl.app
    from nfnets_jax import checkpoints

    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise ConfigError(f"the directory of --out ({out_dir}) does not exist.")
    if args.format == "timm":
        loaded = checkpoints.read_run(args.workdir, use_ema=args.ema, step=args.step)
        model = checkpoints.save_timm(loaded.params, args.out)
        sidecar = checkpoints.write_sidecar(loaded.spec, args.out) if loaded.spec else None
        print(f"Wrote timm's {model.timm_name} state dict ({loaded.description}) to {args.out}.")
        return 0
    loaded, sidecar = checkpoints.export_run(
        args.workdir, args.out, format=args.format, use_ema=args.ema, step=args.step
    )
    count = sum(int(v.size) for sub in loaded.params.values() for v in sub.values())
    layout = "pickle, DeepMind's layout" if args.format == "pickle" else "npz"
    print(f"Wrote {count:,} parameters ({loaded.description}) to {args.out} ({layout}).")
    if sidecar:
        print(f"Wrote the model spec to {sidecar}.")
    else:
        print("The run has no config.json: no spec written (pass the architecture to load()).")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cli.quiet_console(args.verbose)
    return cli.run_main(lambda: _export(args))


if __name__ == "__main__":
    sys.exit(main())

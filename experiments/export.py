r"""Exports a run's parameters as a standalone file: `python -m experiments.export`.

Examples:

    # DeepMind's layout (a pickle of {module: {param: float32 array}}, loadable by their
    # code, by nfnets_jax.checkpoints.load_params and by nfnets_jax.pretrained.load).
    python -m experiments.export --workdir=/tmp/nfnet_demo --out=demo_haiku.npz

    # A numpy archive with 'module/param' keys, the raw (not EMA) parameters of step 400.
    python -m experiments.export --workdir=RUN --out=mine.npz --format=npz --no-ema --step=400

    # timm's state-dict layout (.safetensors) of a standard F0..F7 run: see README "timm weights".
    python -m experiments.export --workdir=RUN --out=dm_nfnet_f0.safetensors --format=timm

    # Deployable directories (nfnets_jax.deploy): a TensorFlow SavedModel (TF Serving,
    # TFLite) or a serialized jax.export (StableHLO), of a run or of any checkpoint file.
    python -m experiments.export --workdir=RUN --out=nfnet_savedmodel --format=savedmodel
    python -m experiments.export --checkpoint=F0_haiku.npz --out=f0_stablehlo --format=stablehlo

Next to a pickle, npz or timm file goes `<out>.json`, the model's spec (architecture, classes,
test size, preprocessing, class names), so `pretrained.load`, `experiments.predict` and
`experiments.evaluate` rebuild the exact model. Share both files. The deployable formats
write a new directory `--out` holding the model and `nfnets_jax.json` (the spec and the
input contract); `--checkpoint` (DeepMind's released files, exports, runs) works with
them only, since pickle/npz exports of a file are the file itself.
"""

from __future__ import annotations

import argparse
import os
import sys

from nfnets_jax import cli
from nfnets_jax.errors import ConfigError

# nfnets_jax.deploy.FORMATS, repeated so that a mistyped flag fails before JAX loads.
DEPLOY_FORMATS = ("savedmodel", "stablehlo")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.export",
        description="Write a training run's parameters as a pickle (DeepMind's layout) or .npz, "
        "or a model as a TensorFlow SavedModel or jax.export (StableHLO) directory.",
        allow_abbrev=False,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="the training run directory")
    source.add_argument(
        "--checkpoint",
        help="a checkpoint file or run (--format=savedmodel/stablehlo only): DeepMind's "
        "{V}_haiku.npz, an export with its .json spec, a run directory",
    )
    parser.add_argument("--out", required=True, help="file (pickle, npz) or new directory to write")
    parser.add_argument(
        "--format", choices=("pickle", "npz", "timm", *DEPLOY_FORMATS), default="pickle"
    )
    parser.add_argument(
        "--platforms",
        default="cpu,cuda,tpu",
        help="savedmodel/stablehlo: comma-separated JAX platforms to lower for "
        "(cpu, cuda, rocm, tpu)",
    )
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
    if args.format in DEPLOY_FORMATS:
        return _export_deployable(args)
    if args.checkpoint is not None:
        raise ConfigError(
            "--checkpoint works with --format=savedmodel or --format=stablehlo; "
            "--format=pickle/npz/timm export a training run (--workdir)."
        )
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


def _export_deployable(args: argparse.Namespace) -> int:
    from nfnets_jax import checkpoints, deploy

    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    unknown = sorted(set(platforms) - {"cpu", "cuda", "rocm", "tpu"})
    if unknown or not platforms:
        raise ConfigError(
            f"--platforms={args.platforms}: expected a comma-separated subset of cpu, cuda, "
            "rocm, tpu."
        )
    if args.checkpoint is not None:
        if args.step is not None:
            raise ConfigError("--step picks a checkpoint of a --workdir run; drop it.")
        loaded = checkpoints.load_checkpoint(args.checkpoint, use_ema=args.ema)
    else:
        loaded = checkpoints.read_run(args.workdir, use_ema=args.ema, step=args.step)
    spec = deploy.export_checkpoint(loaded, args.out, format=args.format, platforms=platforms)
    kind = {"savedmodel": "TensorFlow SavedModel", "stablehlo": "jax.export (StableHLO)"}
    print(f"Wrote a {kind[args.format]} of {spec.describe()} ({loaded.description}) to {args.out}.")
    metadata = deploy.read_metadata(args.out)
    for name, contract in metadata["inputs"].items():
        shape = "x".join("batch" if d is None else str(d) for d in contract["shape"])
        print(f"  input {name}: {contract['dtype']} [{shape}], {contract['preprocessing']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cli.quiet_console(args.verbose)
    return cli.run_main(lambda: _export(args))


if __name__ == "__main__":
    sys.exit(main())

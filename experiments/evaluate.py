r"""Evaluates a checkpoint on a validation split: `python -m experiments.evaluate`.

Examples:

    # DeepMind's F0 on ImageNet's 50,000 validation images (resize_crop_32 at 256 px).
    python -m experiments.evaluate --config=nfnet_f0 --checkpoint=F0_haiku.npz \
        --config.dataset.data_dir=/data/tfds

    # The config can be left out: a run directory brings its config.json, an exported
    # file its .json spec, a released file the preset of its variant (F0 -> nfnet_f0).
    python -m experiments.evaluate --checkpoint=/tmp/nfnet_demo

    # Any dataset, split, resolution or preprocessing through --config.* overrides.
    python -m experiments.evaluate --config=nfnet_demo --checkpoint=demo.npz \
        --config.dataset.name=digits --config.dataset.eval_split='validation[:100]'

Every example of the split is evaluated exactly once, with the training loop's eval step
and the config's evaluation preprocessing. Prints top-1/top-5 (and writes them as JSON
with `--output=results.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nfnets_jax import cli


def config_for_checkpoint(checkpoint: str):
    """A config to evaluate `checkpoint` with when none is given (see the module doc)."""
    import ml_collections

    from experiments import configs
    from experiments.configs import common
    from nfnets_jax import checkpoints
    from nfnets_jax.data import imagenet
    from nfnets_jax.training.config import ConfigError, config_from_json

    if checkpoints.is_run_directory(checkpoint):
        for directory in (checkpoint, os.path.dirname(os.path.abspath(checkpoint))):
            path = os.path.join(directory, "config.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    return config_from_json(json.load(f)), f"the run's {path}"
        raise ConfigError(f"{checkpoint} has no config.json: pass --config=...")
    if not os.path.isfile(checkpoint):
        raise checkpoints.CheckpointNotFoundError(
            f"Checkpoint {checkpoint!r} does not exist. Download DeepMind's weights, e.g. "
            f"`wget {checkpoints.released_weights_url('F0')}`, or pass an exported file or a "
            "run directory."
        )
    spec = checkpoints.read_sidecar(checkpoint)
    origin = f"the spec {checkpoints.sidecar_path(checkpoint)}"
    if spec is None and checkpoints.is_timm_file(checkpoint):
        spec = checkpoints.load_checkpoint(checkpoint).spec
        origin = "the timm model recognised in the file, with timm's numerics and test crop"
    if spec is None:
        spec = checkpoints.infer_model_spec(checkpoints.load_params(checkpoint))
        origin = "the preset of the variant recognised in the checkpoint"
        if spec.model == "NFNet" and spec.variant is not None:
            preset = "nfnet_" + spec.variant.lower().replace("+", "_plus")
            return configs.load_config(preset), f"preset {preset} ({origin})"
    dataset = spec.dataset or ("imagenet2012" if spec.num_classes == imagenet.NUM_CLASSES else "")
    if not dataset:
        raise ConfigError(
            f"{checkpoint} does not say which dataset it was trained on: pass --config=... "
            "and --config.dataset.name=..."
        )
    config = common.base_config()
    config.model = spec.model
    config.model_kwargs = ml_collections.ConfigDict(dict(spec.model_kwargs))
    config.dataset.update(
        dict(name=dataset, eval_image_size=spec.image_size, eval_preproc=spec.eval_preproc)
    )
    return config, origin


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.evaluate",
        description=(
            "Evaluate a checkpoint (released file, exported file or run directory) on a "
            "validation split. --config=NAME|FILE[:arg] and --config.key=value work as in "
            "experiments.train."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--checkpoint", required=True, help="file or run directory")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="EMA parameters of a run directory (default) or raw ones (--no-ema)",
    )
    parser.add_argument("--output", default=None, help="also write the results to this JSON")
    parser.add_argument("--verbose", action="store_true", help="show library start-up output")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This command's own arguments, and the others (the `--config.*` overrides)."""
    return _parser().parse_known_args(argv)


def _evaluate(argv: list[str]) -> int:
    from experiments import configs
    from nfnets_jax.training import config as config_lib

    spec, rest = configs.pop_config_spec(argv)
    args, others = parse_args(rest[1:])
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # absl logging without absl.app
    from nfnets_jax.training import evaluation, writers

    writers.quiet_library_logs()
    if spec:
        config, origin = configs.load_config(spec), f"--config={spec}"
    else:
        config, origin = config_for_checkpoint(args.checkpoint)
    unknown = config_lib.parse_config_flags(config, [argv[0], *others])[1:]
    if unknown:
        _parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    results = evaluation.evaluate_checkpoint(config, args.checkpoint, use_ema=args.ema)
    results["config"] = origin
    print(f"Checkpoint: {results['checkpoint']}")
    print(f"Config:     {origin}")
    print(
        f"Dataset:    {results['dataset']} {results['split']!r}, "
        f"{int(results['num_examples'])} images, {results['eval_preproc']} at "
        f"{results['image_size']} px"
    )
    print(
        f"top-1 {100 * results['top_1_acc']:.2f}%  top-5 {100 * results['top_5_acc']:.2f}%  "
        f"loss {results['loss']:.4f}  ({results['images_per_sec']:.1f} images/s)"
    )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    cli.quiet_console(cli.wants_verbose(argv))
    return cli.run_main(lambda: _evaluate(argv))


if __name__ == "__main__":
    sys.exit(main())

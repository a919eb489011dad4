r"""Classifies images with a pretrained NFNet: `python -m experiments.predict`.

Examples:

    # DeepMind's F0 (download it first: 286 MB).
    wget https://storage.googleapis.com/dm-nfnets/F0_haiku.npz
    python -m experiments.predict --checkpoint=F0_haiku.npz cat.jpg dog.png

    # A model of your own: an exported file or a training run directory.
    python -m experiments.predict --checkpoint=/tmp/nfnet_demo --top_k=3 digit.png

    # timm's weights (.safetensors, or .pth with torch installed): dm_nfnet_f0..f6 and
    # timm's NF family (eca_nfnet_l0, nf_resnet50, nf_regnet_b1, ...), with timm's
    # numerics and test crop.
    python -m experiments.predict --checkpoint=eca_nfnet_l0.safetensors cat.jpg

For each image it prints the `--top_k` most probable classes with their probabilities
and names (ImageNet's for 1,000-class checkpoints, the dataset's for exports and runs).
The network, its test resolution and its preprocessing are recognised from the
checkpoint (`nfnets_jax.pretrained.load`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nfnets_jax import cli
from nfnets_jax.errors import ImageNotFoundError


def format_predictions(label: str, predictions) -> str:
    """The block printed for one image: its name, then one line per class."""
    lines = [label]
    for rank, p in enumerate(predictions, start=1):
        lines.append(f"  {rank:>2}. {100 * p.probability:6.2f}%  {p.name} (class {p.index})")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.predict",
        description="Print the top-k classes of images under a pretrained NFNet.",
        allow_abbrev=False,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG...)")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="F0..F6_haiku.npz, a timm .safetensors/.pth file, a file from experiments.export, "
        "or a run directory",
    )
    parser.add_argument("--top_k", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--image_size", type=int, default=None, help="override the test size")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="EMA parameters of a run directory (default) or raw ones (--no-ema)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--verbose", action="store_true", help="show library start-up output")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top_k must be >= 1.")
    return args


def _predict(args: argparse.Namespace) -> int:
    missing = [image for image in args.images if not os.path.isfile(image)]
    if missing:
        raise ImageNotFoundError(
            f"image file(s) not found: {', '.join(missing)} (pass JPEG, PNG, GIF or BMP files)."
        )
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # absl logging without absl.app
    from nfnets_jax import pretrained

    model = pretrained.load(args.checkpoint, use_ema=args.ema, image_size=args.image_size)
    results = model.top_k(args.images, k=args.top_k)
    if args.json:
        payload = {
            "model": model.description,
            "predictions": {
                image: [p._asdict() for p in preds]
                for image, preds in zip(args.images, results, strict=True)
            },
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(f"Model: {model.description}")
    for image, predictions in zip(args.images, results, strict=True):
        print()
        print(format_predictions(image, predictions))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cli.quiet_console(args.verbose)
    return cli.run_main(lambda: _predict(args))


if __name__ == "__main__":
    sys.exit(main())

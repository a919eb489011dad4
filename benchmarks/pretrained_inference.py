"""What `pretrained.load(...)` and `model.predict(...)` cost for a full-size NFNet.

A checkpoint of the real size and layout is written (random weights of the variant in
DeepMind's pickle layout: the released files could not be downloaded here), then timed:
reading it (restricted unpickler), recognising the variant, the whole `pretrained.load`,
the evaluation preprocessing of real JPEG photos (scikit-image / matplotlib samples,
decoded and resized by TensorFlow as in `resize_crop_32`), and the jitted forward pass at
the variant's test size for a few batch sizes (compile time, then the median of
`--repeats` runs). `--record` writes the ``## Pretrained inference`` section of
BENCHMARKS.md.

    python -m benchmarks.pretrained_inference --variant F0 --batch 1,8 --record
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from nfnets_jax import checkpoints, pretrained

SECTION = "## Pretrained inference"


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _photos() -> list[bytes]:
    """Eight real photos as JPEG bytes (quality 90), of several sizes."""
    import matplotlib
    from PIL import Image
    from skimage import data

    arrays = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.immunohistochemistry(),
        data.astronaut()[::-1],
        data.chelsea()[:, ::-1],
    ]
    hopper = os.path.join(
        os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"
    )
    encoded = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    with open(hopper, "rb") as f:
        encoded.append(f.read())
    return encoded


def run(args) -> tuple[list[tuple[str, str]], list[dict]]:
    spec = checkpoints.ModelSpec(
        "NFNet", {"variant": args.variant}, 1000, 0, checkpoints.NFNET_EVAL_PREPROC
    )
    abstract = spec.abstract_params()
    rng = np.random.default_rng(0)
    params = {
        m: {n: (rng.standard_normal(v.shape) * 0.01).astype(np.float32) for n, v in sub.items()}
        for m, sub in abstract.items()
    }
    count = sum(int(v.size) for sub in params.values() for v in sub.values())
    stages = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{args.variant}_haiku.npz")
        checkpoints.save_params(params, path)
        del params
        size_mb = os.path.getsize(path) / 2**20
        start = time.perf_counter()
        loaded = checkpoints.load_params(path)
        stages.append(
            ("read the file (restricted unpickler)", f"{time.perf_counter() - start:.2f} s")
        )
        start = time.perf_counter()
        recognised = checkpoints.infer_model_spec(loaded)
        stages.append(
            (
                f"recognise the variant ({recognised.variant})",
                f"{time.perf_counter() - start:.3f} s",
            )
        )
        del loaded
        start = time.perf_counter()
        model = pretrained.load(path, conv_impl=args.conv_impl)
        stages.append(
            (
                "pretrained.load (all of the above + checks + device)",
                f"{time.perf_counter() - start:.2f} s",
            )
        )
    stages.insert(0, ("checkpoint", f"{count:,} parameters, {size_mb:.1f} MiB"))

    photos = _photos()
    model.preprocess(photos[:1])  # TensorFlow's first call builds its kernels
    per_image = _median_seconds(lambda: model.preprocess(photos), args.repeats) / len(photos)
    stages.append(
        (f"preprocess (JPEG decode + resize_crop_32 at {model.image_size} px)",
         f"{1000 * per_image:.1f} ms/image ({1 / per_image:.0f} images/s)")
    )  # fmt: skip
    rows = []
    for batch in args.batch:
        inputs = model.preprocess([photos[i % len(photos)] for i in range(batch)])
        model.batch_size = batch
        start = time.perf_counter()
        model.apply(inputs)
        compile_s = time.perf_counter() - start
        seconds = _median_seconds(lambda inputs=inputs: model.apply(inputs), args.repeats)
        rows.append(dict(batch=batch, compile=compile_s, seconds=seconds))
    return stages, rows


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    import haiku

    device = jax.devices()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores; JAX backend {device.platform} ({device.device_kind}); "
        f"Python {platform.python_version()}, jax {jax.__version__}, dm-haiku "
        f"{haiku.__version__}, numpy {np.__version__}; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end"
    )


def render(args, stages, rows) -> str:
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.pretrained_inference --variant {args.variant} "
        f"--batch {','.join(map(str, args.batch))} --repeats {args.repeats} "
        f"--conv-impl {args.conv_impl} --record`",
        "",
        "NFNet-" + args.variant + " with random weights written in DeepMind's pickle layout (the "
        "released files cannot be downloaded here; sizes and code paths are the same), "
        "float32, on the default device.",
        "",
        f"Machine: {_machine()}.",
        "",
        "| stage | time |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in stages),
        "",
        "| forward batch | compile + first run (s) | median per batch (s) | images/s |",
        "|---|---|---|---|",
        *(
            f"| {r['batch']} | {r['compile']:.1f} | {r['seconds']:.2f} | "
            f"{r['batch'] / r['seconds']:.1f} |"
            for r in rows
        ),
    ]
    return "\n".join(lines) + "\n"


def record(text: str, path: str = "BENCHMARKS.md") -> None:
    """Replaces (or appends) the ``## Pretrained inference`` section of BENCHMARKS.md."""
    with open(path, encoding="utf-8") as f:
        content = f.read()
    start = content.find(SECTION)
    if start < 0:
        content = content.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        following = content.find("\n## ", start + len(SECTION))
        tail = "" if following < 0 else "\n" + content[following + 1 :]
        content = content[:start] + text.rstrip("\n") + "\n" + tail
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="F0")
    parser.add_argument("--batch", default="1,8", help="comma-separated forward batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--conv-impl", default="auto", help="auto, native or per_group")
    parser.add_argument("--record", action="store_true", help="write into BENCHMARKS.md")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    stages, rows = run(args)
    text = render(args, stages, rows)
    print(text)
    if args.record:
        record(text)


if __name__ == "__main__":
    main()

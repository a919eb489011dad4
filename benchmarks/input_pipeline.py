"""Input-pipeline throughput: training and evaluation preprocessing, per CPU core.

Builds a small real `imagenet2012` tfds dataset in a temporary directory (JPEG-encoded
crops of the real photographs that ship with scikit-image, scikit-learn and matplotlib,
at ImageNet-like sizes of 300-500 px), then times, at 192 and 256 px:

* the raw rate: read + full JPEG decode + bicubic resize to S x S, nothing else;
* training preprocessing (`train_iterator`): inception crop fused with decoding, flip,
  resize, with and without MixUp/CutMix and RandAugment;
* evaluation preprocessing (`eval_iterator`, `resize_crop_32`).

Each configuration runs with tf.data restricted to one thread (the per-core figure) and
with its default thread pool over all cores. Rates count output images (a mixed training
image consumes two source images). Run from the repository root:

    python -m benchmarks.input_pipeline            # print the table
    python -m benchmarks.input_pipeline --write    # also update BENCHMARKS.md
    python -m benchmarks.input_pipeline --only F0 --sizes 192   # some rows only

Comparing two implementations: `--compare DIR` times the code of another checkout (e.g.
`git worktree add /tmp/ip_before HEAD~3`) against this one. For every row, size and
thread setting it starts one long-lived worker process per implementation (this script
run with the checkout's `nfnets_jax` first on `sys.path`) and alternates timed windows
between them, so both see the same machine load; each window starts with a warm-up
that drains what the pipeline buffered while the other worker ran. `--profile` prints
where the time of the F0 recipe goes, stage by stage, in ms per output image (with
`--compare`, for both implementations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

# Quiet TensorFlow before it is imported; the pipelines never use JAX devices here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from benchmarks import common  # noqa: E402
from nfnets_jax import data  # noqa: E402
from nfnets_jax.data import preprocess  # noqa: E402
from nfnets_jax.data.prepare import prepare_dataset, write_imagenet_tars  # noqa: E402

SECTION = "## Input pipeline"
CLASSES = 8
TRAIN_PER_CLASS = 24
VALIDATION = 256
PER_DEVICE_BATCH = 16
# Seconds of warm-up and of measurement per configuration (BENCH_SECONDS overrides),
# the measurement split into WINDOWS windows.
WARMUP_SECONDS = 2.0
MIN_SECONDS = float(os.environ.get("BENCH_SECONDS", "9"))
WINDOWS = 3

CONFIGS = (
    # (label, kind, augment_name)
    ("raw decode + resize", "raw", None),
    ("train: crop + flip", "train", None),
    ("train: + mixup/cutmix", "train", "mixup_cutmix"),
    ("train: + randaugment 4x5", "train", "randaugment_405"),
    ("train: F0 recipe (cutmix_mixup_randaugment_405)", "train", "cutmix_mixup_randaugment_405"),
    ("train: F3+ recipe (cutmix_mixup_randaugment_415)", "train", "cutmix_mixup_randaugment_415"),
    ("eval: resize_crop_32", "eval", None),
)


def _photos() -> list[np.ndarray]:
    import matplotlib.cbook
    from skimage import data as skdata
    from skimage import io as skio
    from sklearn.datasets import load_sample_images

    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    photos += list(load_sample_images().images)
    photos.append(skio.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))
    return [np.ascontiguousarray(p[..., :3]) for p in photos]


def _jpegs(count: int, rng: np.random.Generator) -> list[bytes]:
    """`count` JPEGs (quality 90) of random 300-500 px windows of the real photos."""
    photos = _photos()
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h = int(rng.integers(min(300, photo.shape[0]), min(500, photo.shape[0]) + 1))
        w = int(rng.integers(min(300, photo.shape[1]), min(500, photo.shape[1]) + 1))
        y = int(rng.integers(0, photo.shape[0] - h + 1))
        x = int(rng.integers(0, photo.shape[1] - w + 1))
        crop = np.ascontiguousarray(photo[y : y + h, x : x + w])
        if rng.random() < 0.5:
            crop = np.ascontiguousarray(crop[:, ::-1])
        out.append(tf.io.encode_jpeg(crop, quality=90).numpy())
    return out


def build_imagenet(root: str) -> str:
    """Writes the two ImageNet tars and builds tfds `imagenet2012` under `root`."""
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    wnids = tfds.builder("imagenet2012").info.features["label"].names
    jpegs = _jpegs(CLASSES * TRAIN_PER_CLASS + VALIDATION, rng)
    train = {
        wnids[100 * c]: jpegs[c * TRAIN_PER_CLASS : (c + 1) * TRAIN_PER_CLASS]
        for c in range(CLASSES)
    }
    manual = os.path.join(root, "manual")
    write_imagenet_tars(manual, train, jpegs[-VALIDATION:])
    data_dir = os.path.join(root, "tfds")
    prepare_dataset("imagenet2012", data_dir, manual)
    return data_dir


def _raw_iterator(data_dir: str, size: int, threads: int | None):
    """Read + full decode + bicubic resize + batch: the floor any crop pipeline pays."""
    source = data.sources.get_source("imagenet2012", data_dir)
    ds = source.read("train", 0, source.info.splits["train"]).repeat()
    ds = ds.map(
        lambda ex: preprocess.resize(preprocess.decode_image(ex["image"]), size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ds = ds.batch(PER_DEVICE_BATCH).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    if threads:
        options.threading.private_threadpool_size = threads
    return ds.with_options(options).as_numpy_iterator()


def _iterator(kind: str, augment: str | None, data_dir: str, size: int, threads: int | None):
    common = dict(
        data_dir=data_dir,
        local_device_count=1,
        per_device_batch=PER_DEVICE_BATCH,
        image_size=size,
        num_threads=threads,
    )
    if kind == "raw":
        return _raw_iterator(data_dir, size, threads)
    if kind == "train":
        return data.train_iterator("imagenet2012", augment_name=augment, **common)
    return data.eval_iterator("imagenet2012", **common)


def _batch_size(batch) -> int:
    images = batch["images"] if isinstance(batch, dict) else batch
    return images.shape[-4] * (images.shape[0] if images.ndim == 5 else 1)


def _timed_eval_pass(data_dir: str, size: int, threads: int | None) -> tuple[int, float]:
    """Images and seconds of one evaluation pass (building the pipeline is not timed)."""
    with _iterator("eval", None, data_dir, size, threads) as iterator:
        began = time.perf_counter()
        images = sum(_batch_size(batch) for batch in iterator)
        return images, time.perf_counter() - began


def measure(kind: str, augment: str | None, data_dir: str, size: int, threads: int | None) -> float:
    """Output images per second: the best of `WINDOWS` timed windows after a warm-up.

    The best window is reported because the cores are shared with other jobs: slower
    windows measure the other jobs, not the pipeline.
    """
    rates = []
    if kind == "eval":
        _timed_eval_pass(data_dir, size, threads)  # warm-up
        for _ in range(WINDOWS):
            images, seconds = 0, 0.0
            while seconds < MIN_SECONDS / WINDOWS:
                done, spent = _timed_eval_pass(data_dir, size, threads)
                images, seconds = images + done, seconds + spent
            rates.append(images / seconds)
        return max(rates)
    iterator = _iterator(kind, augment, data_dir, size, threads)
    try:
        began = time.perf_counter()
        while time.perf_counter() - began < WARMUP_SECONDS:
            next(iterator)
        for _ in range(WINDOWS):
            images, began = 0, time.perf_counter()
            while time.perf_counter() - began < MIN_SECONDS / WINDOWS:
                images += _batch_size(next(iterator))
            rates.append(images / (time.perf_counter() - began))
    finally:
        if hasattr(iterator, "close"):  # the pipeline's iterators release tf.data's
            iterator.close()
    return max(rates)


# The paper's F0 training rate per TPUv3 core: 1024 images per 73.3 ms step on 32 cores
# (arXiv:2102.06171, Table 3 and Appendix A.2).
F0_TPU_CORE_RATE = 1024 / 0.0733 / 32
F0_AUGMENT = "cutmix_mixup_randaugment_405"
# Seconds of warm-up at the start of every compared window (see the module docstring).
DRAIN_SECONDS = 1.0


def _selected(only: str | None):
    return [c for c in CONFIGS if only is None or only.lower() in c[0].lower()]


def measure_all(data_dir: str, sizes=(192, 256), only: str | None = None) -> list[list[str]]:
    """Runs every configuration; one row of formatted rates per configuration."""
    cores = os.cpu_count() or 1
    rows = []
    for label, kind, augment in _selected(only):
        row = [label]
        for size in sizes:
            one = measure(kind, augment, data_dir, size, 1)
            full = measure(kind, augment, data_dir, size, None)
            row += [f"{one:.0f}", f"{full:.0f}"]
            print(
                f"{label:52s} {size}px: {one:7.1f} img/s on 1 thread, "
                f"{full:7.1f} img/s on {cores} cores",
                flush=True,
            )
        rows.append(row)
    return rows


class _WindowTimer:
    """Times windows of one pipeline configuration on demand (a worker's state)."""

    def __init__(self, kind, augment, data_dir, size, threads) -> None:
        self._args = (kind, augment, data_dir, size, threads)
        self._kind = kind
        self._iterator = None if kind == "eval" else _iterator(*self._args)

    def _run(self, seconds: float) -> tuple[int, float]:
        images, spent = 0, 0.0
        while spent < seconds:
            if self._kind == "eval":
                done, took = _timed_eval_pass(*self._args[2:])
            else:
                began = time.perf_counter()
                done = _batch_size(next(self._iterator))
                took = time.perf_counter() - began
            images, spent = images + done, spent + took
        return images, spent

    def window(self, seconds: float, drain: float) -> tuple[float, float]:
        """Images per second and per CPU second of this process over about `seconds`.

        The window follows `drain` seconds of warm-up.
        """
        self._run(drain)
        cpu = time.process_time()
        images, spent = self._run(seconds)
        return images / spent, images / (time.process_time() - cpu)


def _worker(args) -> None:
    """Serves `window SECONDS` requests on stdin with one rate per line on stdout."""
    timer = _WindowTimer(args.kind, args.augment, args.data_dir, args.size, args.threads or None)
    timer.window(WARMUP_SECONDS, 0.0)
    print(json.dumps({"ready": True, "module": data.__file__}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        rate, cpu_rate = timer.window(float(command[1]), DRAIN_SECONDS)
        print(json.dumps({"rate": rate, "cpu_rate": cpu_rate}), flush=True)


def _spawn(root: str, extra: list[str]) -> subprocess.Popen:
    """This script in a subprocess whose `nfnets_jax` (and `benchmarks`) come from `root`."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=os.path.abspath(root),
    )


def _reply(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"benchmark worker exited with {process.wait()}")
    return json.loads(line)


def compare(
    data_dir: str,
    before: str,
    sizes=(192,),
    only: str | None = "F0",
    windows: int = 6,
    seconds: float = 3.0,
) -> list[list[str]]:
    """Interleaved windows of the checkout `before` and of this one, per row.

    Returns:
        Rows `[label, size, threads, before, after, after / before]` (best windows), each
        rate as `'images/s (images per CPU second)'`, and the ratio of both.
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for label, kind, augment in _selected(only):
        for size in sizes:
            for threads in (1, 0):
                extra = ["--worker", "--data-dir", data_dir, "--kind", kind, "--size", str(size)]
                extra += ["--threads", str(threads)] + (["--augment", augment] if augment else [])
                workers = {"before": _spawn(before, extra), "after": _spawn(here, extra)}
                rates = {name: [] for name in workers}
                cpu_rates = {name: [] for name in workers}
                try:
                    for name, process in workers.items():
                        print(f"  {name}: {_reply(process)['module']}", flush=True)
                    for _ in range(windows):
                        for name, process in workers.items():
                            process.stdin.write(f"window {seconds}\n")
                            process.stdin.flush()
                            reply = _reply(process)
                            rates[name].append(reply["rate"])
                            cpu_rates[name].append(reply["cpu_rate"])
                finally:
                    for process in workers.values():
                        if process.poll() is None:
                            process.stdin.write("quit\n")
                            process.stdin.flush()
                            process.wait()
                old, new = max(rates["before"]), max(rates["after"])
                old_cpu, new_cpu = max(cpu_rates["before"]), max(cpu_rates["after"])
                where = "1 thread" if threads == 1 else f"{os.cpu_count()} cores"
                print(
                    f"{label:52s} {size}px {where}: before {old:6.1f}, after {new:6.1f} "
                    f"img/s ({new / old:.2f}x); per CPU second before {old_cpu:6.1f}, after "
                    f"{new_cpu:6.1f} ({new_cpu / old_cpu:.2f}x); windows before "
                    f"{[round(r) for r in rates['before']]}, after "
                    f"{[round(r) for r in rates['after']]}",
                    flush=True,
                )
                rows.append(
                    [
                        label,
                        str(size),
                        where,
                        f"{old:.0f} ({old_cpu:.0f})",
                        f"{new:.0f} ({new_cpu:.0f})",
                        f"{new / old:.2f}x ({new_cpu / old_cpu:.2f}x)",
                    ]
                )
    return rows


def _stage_ms(ds, images_per_element: float, seconds: float) -> float:
    """ms of one-thread tf.data time per output image of the elements of `ds`."""
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    options.threading.private_threadpool_size = 1
    iterator = iter(ds.with_options(options))
    began = time.perf_counter()
    while time.perf_counter() - began < min(1.0, seconds):
        next(iterator)
    best = float("inf")
    for _ in range(2):
        count, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds / 2:
            next(iterator)
            count += 1
        best = min(best, (time.perf_counter() - began) / count)
    return 1000.0 * best / images_per_element


def profile_stages(data_dir: str, size: int, seconds: float = 2.0) -> list[tuple[str, float]]:
    """Where the time of the F0 recipe goes: ms per output image, per stage, one thread.

    Each stage runs alone in a one-thread tf.data pipeline over cached inputs (the
    reading of the cache is subtracted); a mixed image consumes two source images, so
    the source stages count twice. The last line is the whole `train_iterator`, and the
    line before it the rest (its iterator, shuffle, batching, seeds and copies).
    """
    from nfnets_jax.data import mix, randaugment, sources

    config = data.parse_augment_name(F0_AUGMENT)
    source = sources.get_source("imagenet2012", data_dir)
    records = source.read("train", 0, source.info.splits["train"]).cache().repeat()
    key = tf.constant([0, 1], tf.int64)

    def fold(i):
        return tf.random.experimental.stateless_fold_in(key, tf.cast(i, tf.int64))

    def crop(i, ex):
        window = lambda shape: preprocess.inception_crop_window(shape, fold(i), size)  # noqa: E731
        return preprocess.decode_and_crop(ex["image"], window)

    def source_image(i, ex):
        return preprocess.train_preprocess(ex["image"], fold(i), size)

    floats = records.enumerate().take(64).map(source_image).cache().repeat()
    pixels = floats.map(lambda x: tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8))
    pixels = pixels.take(64).cache().repeat()
    pairs = floats.batch(2 * PER_DEVICE_BATCH, drop_remainder=True).enumerate()

    def mixed(i, images):
        labels = tf.zeros([2 * PER_DEVICE_BATCH], tf.int32)
        batch = {"images": images, "labels": labels}
        return mix.mix_batch(batch, fold(i), mixup=True, cutmix=True)

    def augment(i, image):
        layers, magnitude = config.randaugment_layers, config.randaugment_magnitude
        return randaugment.randaugment(image, layers, magnitude, fold(i))

    cached = _stage_ms(records, 0.5, seconds)
    cached_floats = _stage_ms(floats, 1.0, seconds)
    cached_pixels = _stage_ms(pixels, 1.0, seconds)
    read_2 = 2 * _stage_ms(
        source.read("train", 0, source.info.splits["train"]).repeat(), 1.0, seconds
    )
    decoded = _stage_ms(records.enumerate().map(crop), 0.5, seconds) - cached
    prepared = _stage_ms(records.enumerate().map(source_image), 0.5, seconds) - cached
    stages = [
        ("read 2 records", read_2),
        ("decode 2 JPEGs with the inception crop", decoded),
        ("flip + bicubic resize of the 2 crops", prepared - decoded),
        ("MixUp / CutMix", _stage_ms(pairs.map(mixed), PER_DEVICE_BATCH, seconds) - cached_floats),
        (
            "clip + cast to uint8",
            _stage_ms(
                floats.map(lambda x: tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)),
                1.0,
                seconds,
            )
            - cached_floats,
        ),
        (
            "RandAugment (4 layers, M = 5)",
            _stage_ms(pixels.enumerate().map(augment), 1.0, seconds) - cached_pixels,
        ),
        ("normalize", _stage_ms(pixels.map(preprocess.normalize), 1.0, seconds) - cached_pixels),
    ]
    for index, name in enumerate(randaugment.OP_NAMES):
        op = _stage_ms(
            pixels.map(
                lambda x, i=index: randaugment.apply_op(x, i, 5.0, 1.0, (size // 2, size // 2))
            ),
            1.0,
            seconds / 4,
        )
        stages.append((f"  one {name}", op - cached_pixels))
    iterator = _iterator("train", F0_AUGMENT, data_dir, size, 1)
    try:
        began = time.perf_counter()
        while time.perf_counter() - began < WARMUP_SECONDS:
            next(iterator)
        best = float("inf")
        for _ in range(2):
            images, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                images += _batch_size(next(iterator))
            best = min(best, 1000.0 * (time.perf_counter() - began) / images)
    finally:
        iterator.close()
    pipeline_stages = sum(ms for name, ms in stages if not name.startswith("  "))
    stages.append(
        ("rest of the pipeline (iterator, shuffle, batching, seeds)", best - pipeline_stages)
    )
    stages.append(("whole train_iterator, 1 thread", best))
    return stages


def _profile_worker(args) -> None:
    stages = profile_stages(args.data_dir, args.size)
    print(json.dumps({"module": data.__file__, "stages": stages}), flush=True)


def profile(data_dir: str, size: int, before: str | None, repeats: int = 2) -> list[list[str]]:
    """`profile_stages` of this checkout (and of `before`), alternated; best of `repeats`.

    Returns:
        Rows `[stage, ms before, ms after]` (without the before column if `before` is None).
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = {"before": before, "after": here} if before else {"after": here}
    best: dict[str, dict[str, float]] = {name: {} for name in roots}
    order: list[str] = []
    for _ in range(repeats):
        for name, root in roots.items():
            process = _spawn(
                root, ["--profile-worker", "--data-dir", data_dir, "--size", str(size)]
            )
            reply = _reply(process)
            process.wait()
            for stage, ms in reply["stages"]:
                if stage not in order:
                    order.append(stage)
                best[name][stage] = min(ms, best[name].get(stage, float("inf")))
    rows = [[stage] + [f"{best[name][stage]:.3f}" for name in roots] for stage in order]
    for row in rows:
        print(
            "  ".join(f"{cell:>10s}" if i else f"{cell:60s}" for i, cell in enumerate(row)),
            flush=True,
        )
    return rows


def format_section(
    rows: list[list[str]],
    machine: str,
    cores: int,
    comparison: list[list[str]] | None = None,
    stages: list[list[str]] | None = None,
    before: str | None = None,
) -> str:
    """The BENCHMARKS.md section for measured `rows` (see `measure_all`).

    Args:
        rows: `measure_all` rows.
        machine: machine and versions line.
        cores: CPU cores of the machine.
        comparison: optional `compare` rows.
        stages: optional `profile` rows (with a before column if `comparison` is given).
        before: what the "before" implementation is (for the text).

    Returns:
        The section's markdown.
    """
    header = (
        f"| Pipeline | 192 px, 1 core | 192 px, {cores} cores | 256 px, 1 core | "
        f"256 px, {cores} cores |\n|---|---|---|---|---|\n"
    )
    table = header + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    f0_per_core = float(next(r for r in rows if r[0].startswith("train: F0"))[1])
    paragraphs = [
        "Images per second out of the pipeline (`python -m benchmarks.input_pipeline`), on "
        f"a real `imagenet2012` tfds build of {CLASSES * TRAIN_PER_CLASS} train / "
        f"{VALIDATION} validation JPEGs (quality 90, 300-500 px crops of the sample photos "
        "shipped with scikit-image, scikit-learn and matplotlib), per-device batch "
        f"{PER_DEVICE_BATCH}. '1 core' restricts tf.data to one thread; the other column "
        "uses its default pool. Mixed training images each consume two decoded source "
        "images. Eval at S decodes the whole image and resizes to S + 32; its figure "
        "excludes building the pipeline of each pass. Each figure is the best of "
        f"{WINDOWS} windows of {MIN_SECONDS / WINDOWS:.0f} s after a warm-up.",
        f"Machine: {machine}. The cores were shared with other jobs while measuring, so "
        "figures vary by 10-30% between runs.",
        f"Reading: the F0 recipe at 192 px gives {f0_per_core:.0f} images/s per core, so "
        f"feeding one TPUv3 core at the paper's F0 rate ({F0_TPU_CORE_RATE:.0f} images/s: "
        f"1024 images per 73.3 ms on 32 cores) takes about "
        f"{F0_TPU_CORE_RATE / f0_per_core:.1f} host cores.",
    ]
    text = "\n\n".join(textwrap.fill(p, width=88, break_on_hyphens=False) for p in paragraphs)
    section = f"{SECTION}\n\n{text}\n\n{table}"
    if comparison:
        intro = (
            f"Before/after (`--compare`): the implementation of {before} against this one, "
            "each in its own worker process, alternating windows of the same length (best "
            "window of each): images/s, and in brackets images per CPU second of the "
            "worker process (less sensitive to the other jobs on the machine). Both "
            "produce the same images for the same seed (tests/data/test_identity.py)."
        )
        compared = "| Pipeline | Size | tf.data threads | Before | After | After / before |\n"
        compared += "|---|---|---|---|---|---|\n"
        compared += "".join("| " + " | ".join(r) + " |\n" for r in comparison)
        section += f"\n### Before and after\n\n{textwrap.fill(intro, width=88)}\n\n{compared}"
    if stages:
        intro = (
            "Where the time of the F0 recipe goes (`--profile`), in ms of one tf.data thread "
            "per output image at 192 px: each stage timed alone over cached inputs; a mixed "
            "image consumes two source images; 'one <op>' is the cost of that RandAugment op "
            "once (each of the 4 layers picks one of the 16 uniformly). The rest is the "
            "whole pipeline minus the stages. Stages and pipeline are timed one after the "
            "other on a shared machine, so a stage measured in a busier moment can make "
            "the rest negative; the before/after table above is the interleaved "
            "comparison."
        )
        columns = ["Stage", "Before (ms)", "After (ms)"] if comparison else ["Stage", "ms"]
        profiled = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        profiled += "".join("| " + " | ".join([r[0].strip()] + r[1:]) + " |\n" for r in stages)
        section += f"\n### Where the time goes\n\n{textwrap.fill(intro, width=88)}\n\n{profiled}"
    return section


def _describe(root: str) -> str:
    """`'commit 1234abc'` of the checkout at `root` (or just the path outside git)."""
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return root
    return f"commit {commit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--only", help="rows whose label contains this (e.g. F0)")
    parser.add_argument("--sizes", default="192,256", help="comma-separated image sizes")
    parser.add_argument("--compare", metavar="DIR", help="checkout to compare against")
    parser.add_argument(
        "--compare-only", default="F0", help="rows compared with --compare (default: F0)"
    )
    parser.add_argument("--windows", type=int, default=6, help="compared windows per side")
    parser.add_argument("--window-seconds", type=float, default=3.0, help="seconds per window")
    parser.add_argument("--profile", action="store_true", help="F0 stage profile at 192 px")
    parser.add_argument("--data-dir", help="reuse this tfds data dir (from a previous build)")
    # Worker modes (used by --compare and --profile).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--augment", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    if args.profile_worker:
        return _profile_worker(args)
    sizes = tuple(int(size) for size in args.sizes.split(","))
    if args.write and (args.only or sizes != (192, 256)):
        parser.error("--write records the whole table: drop --only and --sizes.")
    with tempfile.TemporaryDirectory() as root:
        data_dir = args.data_dir or build_imagenet(root)
        comparison = stages = None
        if args.compare:
            comparison = compare(
                data_dir, args.compare, sizes, args.compare_only, args.windows, args.window_seconds
            )
        if args.profile:
            stages = profile(data_dir, 192, args.compare)
        rows = measure_all(data_dir, sizes, args.only)
    if args.only or sizes != (192, 256):
        return
    section = format_section(
        rows,
        f"{common.machine()}; {common.versions(tf, tfds, jax)}",
        os.cpu_count() or 1,
        comparison,
        stages,
        _describe(args.compare) if args.compare else None,
    )
    print(section)
    if args.write:
        common.write_section(SECTION, section)


if __name__ == "__main__":
    main()

"""The fast data path gives exactly the images of its plain definition, bit for bit.

RandAugment's Solarize, SolarizeAdd, Cutout, Equalize and AutoContrast, its geometric
ops (a gather through a table made by the projective-transform kernel), the
normalization (full-shape constants) and MixUp/CutMix (full-shape weights) are written
for speed. This module holds plain reference definitions of them, written independently
(tf.where selects, the projective-transform kernel per image, per-channel numpy
equalisation and autocontrast, broadcasting arithmetic), and checks that the pipelines
built on either give bitwise-equal batches for the same seed: the F0 recipe, and an eval
pass.
"""

import numpy as np
import pytest

from nfnets_jax import data
from nfnets_jax.data import mix, pipeline, preprocess, randaugment
from nfnets_jax.data.tf_setup import tf


def _solarize(image, threshold):
    return tf.where(image < int(threshold) % 256, image, 255 - image)


def _solarize_add(image, addition, threshold=randaugment.SOLARIZE_ADD_THRESHOLD):
    added = tf.clip_by_value(tf.cast(image, tf.int32) + int(addition), 0, 255)
    return tf.where(image < threshold, tf.cast(added, tf.uint8), image)


def _cutout(image, pad_size, center_y, center_x, fill=randaugment.FILL_VALUE):
    shape = tf.shape(image)
    rows = tf.range(shape[0])[:, None, None]
    cols = tf.range(shape[1])[None, :, None]
    inside = (
        (rows >= center_y - pad_size)
        & (rows < center_y + pad_size)
        & (cols >= center_x - pad_size)
        & (cols < center_x + pad_size)
    )
    return tf.where(inside, tf.constant(fill, tf.uint8), image)


def _equalize_numpy(image: np.ndarray) -> np.ndarray:
    """PIL's `ImageOps.equalize` rule, one channel at a time, in numpy."""
    out = image.copy()
    for c in range(image.shape[-1]):
        channel = image[..., c]
        histogram = np.bincount(channel.ravel(), minlength=256)
        last = np.flatnonzero(histogram)[-1]
        step = (histogram.sum() - histogram[last]) // 255
        if step == 0:
            continue
        lut = np.concatenate([[0], (np.cumsum(histogram) + step // 2) // step])[:256]
        out[..., c] = np.minimum(lut, 255)[channel]
    return out


def _equalize(image):
    out = tf.numpy_function(_equalize_numpy, [image], tf.uint8, stateful=False)
    return tf.ensure_shape(out, image.shape)


def _autocontrast_numpy(image: np.ndarray) -> np.ndarray:
    """Each channel stretched by float32 `v * scale + offset`, one channel at a time."""
    out = image.copy()
    for c in range(image.shape[-1]):
        values = image[..., c].astype(np.float32)
        low, high = values.min(), values.max()
        if high > low:
            scale = np.float32(255.0) / (high - low)
            offset = -low * scale
            out[..., c] = np.clip(values * scale + offset, 0.0, 255.0).astype(np.uint8)
    return out


def _autocontrast(image):
    out = tf.numpy_function(_autocontrast_numpy, [image], tf.uint8, stateful=False)
    return tf.ensure_shape(out, image.shape)


def _warp(name, image, argument, sign, fill):
    # The projective-transform kernel on the image itself.
    return randaugment._geometric(name, image, sign * argument, fill)


def _normalize(image):
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(preprocess.MEAN_RGB)) / tf.constant(preprocess.STDDEV_RGB)


def _mix_batch(batch, seed, *, mixup, cutmix, mixup_alpha):
    """MixUp on the first quarter pairs, CutMix on the second, broadcasting the weights."""
    assert mixup and cutmix
    images = batch["images"]
    q = images.shape[0] // 4
    keys = tf.random.experimental.stateless_split(seed, num=2)
    ratio_up = mix.mixup_ratios(keys[0], mixup_alpha, q)
    r = ratio_up[:, None, None, None]
    mixed_up = r * images[:q] + (1.0 - r) * images[q : 2 * q]
    masks = mix.cutmix_masks(keys[1], q, tf.shape(images)[1], tf.shape(images)[2])
    mixed_cut = masks * images[2 * q : 3 * q] + (1.0 - masks) * images[3 * q :]
    out = {
        "images": tf.concat([mixed_up, mixed_cut], 0),
        "ratio": tf.concat([ratio_up, tf.reduce_mean(masks, axis=[1, 2, 3])], 0),
    }
    for field, partner in (("labels", "mix_labels"), ("index", "mix_index")):
        out[field] = tf.concat([batch[field][:q], batch[field][2 * q : 3 * q]], 0)
        out[partner] = tf.concat([batch[field][q : 2 * q], batch[field][3 * q :]], 0)
    return out


@pytest.fixture
def reference_ops(monkeypatch):
    """Swaps the reference definitions in (and the per-example augment map back)."""
    randaugment._layer_function.cache_clear()  # traces made with the fast ops
    for name, op in (
        ("solarize", _solarize),
        ("solarize_add", _solarize_add),
        ("cutout", _cutout),
        ("equalize", _equalize),
        ("autocontrast", _autocontrast),
        ("_warp", _warp),
    ):
        monkeypatch.setattr(randaugment, name, op)
    monkeypatch.setattr(preprocess, "normalize", _normalize)
    monkeypatch.setattr(pipeline, "mix_batch", _mix_batch)
    yield
    randaugment._layer_function.cache_clear()  # traces made with the reference ops


def _train_batches(data_dir, count=3):
    it = data.train_iterator(
        "imagenet2012",
        data_dir=data_dir,
        local_device_count=1,
        per_device_batch=8,
        image_size=40,
        augment_name="cutmix_mixup_randaugment_405",
        seed=7,
        start_step=1,
        with_index=True,
    )
    with it:
        return [next(it) for _ in range(count)]


def _eval_batches(data_dir):
    it = data.eval_iterator(
        "imagenet2012", data_dir=data_dir, local_device_count=1, per_device_batch=5, image_size=40
    )
    with it:
        return list(it)


def _assert_bitwise_equal(fast, reference):
    assert len(fast) == len(reference)
    for got, want in zip(fast, reference, strict=True):
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            assert got[key].shape == want[key].shape, key
            assert got[key].tobytes() == want[key].tobytes(), (
                key,
                float(np.max(np.abs(got[key].astype(np.float64) - want[key]))),
            )


@pytest.fixture(scope="module")
def fast_batches(tiny_imagenet):
    randaugment._layer_function.cache_clear()
    return _train_batches(tiny_imagenet), _eval_batches(tiny_imagenet)


def test_f0_recipe_and_eval_match_the_reference_definitions(
    fast_batches, tiny_imagenet, reference_ops
):
    fast_train, fast_eval = fast_batches
    # Enough draws that every RandAugment op runs: 3 batches x 8 images x 4 layers.
    assert fast_train[0]["images"].shape == (1, 8, 40, 40, 3)
    _assert_bitwise_equal(fast_train, _train_batches(tiny_imagenet))
    _assert_bitwise_equal(fast_eval, _eval_batches(tiny_imagenet))


def _op_images(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    smooth = np.linspace(0, 255, height * width * 3).reshape(height, width, 3)
    return [
        rng.integers(0, 256, (height, width, 3)).astype(np.uint8),
        smooth.astype(np.uint8),
        np.full((height, width, 3), 200, np.uint8),  # constant: Equalize leaves it
        (rng.integers(0, 2, (height, width, 3)) * 255).astype(np.uint8),
        # One constant channel and two narrow ones: AutoContrast stretches only those.
        np.concatenate(
            [np.full((height, width, 1), 7), rng.integers(40, 90, (height, width, 2))], axis=-1
        ).astype(np.uint8),
    ]


@pytest.mark.parametrize("height,width", [(40, 40), (23, 37)])
def test_every_fast_op_matches_its_reference(height, width):
    reference = {
        "Solarize": lambda x, m, s, c: _solarize(x, randaugment.op_argument("Solarize", m)),
        "SolarizeAdd": lambda x, m, s, c: _solarize_add(
            x, randaugment.op_argument("SolarizeAdd", m)
        ),
        "Cutout": lambda x, m, s, c: _cutout(x, randaugment.op_argument("Cutout", m), *c),
        "Equalize": lambda x, m, s, c: _equalize(x),
        "AutoContrast": lambda x, m, s, c: _autocontrast(x),
    }
    for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
        reference[name] = lambda x, m, s, c, name=name: randaugment._geometric(
            name, x, s * randaugment.op_argument(name, m), randaugment.FILL_VALUE
        )
    centers = [(0, 0), (height // 2, width // 3), (height - 1, width + 4), (-3, 2)]
    for image in _op_images(height, width):
        x = tf.constant(image)
        for name, ref in reference.items():
            index = randaugment.OP_NAMES.index(name)
            for magnitude in (0, 3, 5, 10, 12, 15):
                for sign in (-1.0, 1.0):
                    for center in centers if name == "Cutout" else centers[:1]:
                        got = randaugment.apply_op(x, index, float(magnitude), sign, center)
                        want = ref(x, float(magnitude), tf.constant(sign), center)
                        np.testing.assert_array_equal(
                            got.numpy(), want.numpy(), err_msg=f"{name} M={magnitude} {sign}"
                        )

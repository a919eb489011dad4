"""Decoding, crops, flips, bicubic resizing and normalization against closed forms."""

import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax.data import preprocess as pp
from tests.data.conftest import encode

SEED = tf.constant([5, 6], tf.int64)


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    """A real 120x160 photo."""
    return np.ascontiguousarray(photos[1][::2, ::2][:120, :160])


def keys_cubic(x, a):
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def cubic_weights(n_in, n_out, a):
    """Keys cubic with half-pixel centres; out-of-range taps dropped and renormalized."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale - 0.5
        base = int(np.floor(center))
        for k in range(base - 1, base + 3):
            if 0 <= k < n_in:
                weights[i, k] = keys_cubic(center - k, a)
        weights[i] /= weights[i].sum()
    return weights


def np_resize(image, height, width, a=-0.5):
    wh = cubic_weights(image.shape[0], height, a)
    ww = cubic_weights(image.shape[1], width, a)
    return np.einsum("ih,hwc,jw->ijc", wh, image.astype(np.float64), ww, optimize=True)


def np_normalize(image):
    return (image - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])


def test_normalization_constants():
    np.testing.assert_allclose(pp.MEAN_RGB, [123.675, 116.28, 103.53], rtol=1e-12)
    np.testing.assert_allclose(pp.STDDEV_RGB, [58.395, 57.12, 57.375], rtol=1e-12)
    mean = tf.constant(pp.MEAN_RGB, tf.float32)[None, None]
    std = tf.constant(pp.STDDEV_RGB, tf.float32)[None, None]
    np.testing.assert_allclose(pp.normalize(mean), 0, atol=1e-6)
    np.testing.assert_allclose(pp.normalize(mean + std), 1, atol=1e-6)


def test_resize_is_unclamped_keys_bicubic(photo):
    for height, width in [(288, 288), (50, 200), (64, 64)]:
        out = pp.resize(photo, height, width).numpy()
        assert out.dtype == np.float32 and out.shape == (height, width, 3)
        # TF quantizes the kernel coefficients: agreement to ~0.1 grey levels.
        np.testing.assert_allclose(out, np_resize(photo, height, width), atol=0.15)
        # Not PyTorch's a = -0.75 kernel, and not clamped to [0, 255].
        assert np.abs(out - np_resize(photo, height, width, a=-0.75)).max() > 1
        assert out.min() < 0 or out.max() > 255


@pytest.mark.parametrize(
    "shape, size, window",
    [
        ((480, 640), 224, [30, 110, 420, 420]),
        ((256, 256), 224, [16, 16, 224, 224]),  # crop 224/256 of the short side
        ((100, 50), 192, [29, 4, 42, 42]),  # int(50 / 224 * 192) = 42
    ],
)
def test_center_crop_window(shape, size, window):
    assert pp.center_crop_window(tf.constant(shape), size).numpy().tolist() == window


def test_inception_crop_windows_satisfy_the_constraints():
    shape = tf.constant([200, 300])
    ds = tf.data.Dataset.range(400).map(
        lambda i: pp.inception_crop_window(shape, tf.stack([tf.constant(1, tf.int64), i]), 64)
    )
    windows = np.array(list(ds.as_numpy_iterator()))
    y, x, h, w = windows.T
    assert np.all((y >= 0) & (x >= 0) & (y + h <= 200) & (x + w <= 300))
    center = pp.center_crop_window(shape, 64).numpy()
    fallback = np.all(windows == center, axis=1)
    assert fallback.mean() < 0.05  # sampling rarely fails on a normal image
    area = h * w / (200 * 300)
    aspect = w / h
    random = ~fallback
    assert np.all((area[random] >= 0.08 - 0.01) & (area[random] <= 1.0))
    # Integer rounding of the box may move the aspect ratio slightly off 3/4..4/3.
    assert np.all((aspect[random] > 0.75 * 0.95) & (aspect[random] < 4 / 3 * 1.05))
    # The range is used (an aspect <= 4/3 caps the area at 200 * 266 / 60000 = 0.89).
    assert area[random].min() < 0.2 and area[random].max() > 0.8
    assert len({tuple(wd) for wd in windows}) > 350


def test_inception_crop_falls_back_to_the_padded_center_crop():
    # A 10 x 1000 strip has no crop with area >= 8% and aspect in [3/4, 4/3].
    shape = tf.constant([10, 1000])
    center = pp.center_crop_window(shape, 64).numpy()
    for i in range(5):
        window = pp.inception_crop_window(shape, tf.constant([0, i], tf.int64), 64).numpy()
        np.testing.assert_array_equal(window, center)


def test_decode_and_crop_for_every_encoding(photo):
    window = tf.constant([13, 27, 61, 77])
    expected = photo[13:74, 27:104]
    # Decoded arrays and PNG bytes: exactly the crop.
    np.testing.assert_array_equal(
        pp.decode_and_crop(tf.constant(photo), lambda s: window), expected
    )
    png = tf.constant(encode(photo, "png"))
    np.testing.assert_array_equal(pp.decode_and_crop(png, lambda s: window), expected)
    # JPEG: cropped while decoding; equals decode-then-crop up to chroma upsampling at
    # the crop border.
    jpeg = tf.constant(encode(photo, "jpeg"))
    full = tf.io.decode_jpeg(jpeg, channels=3).numpy()[13:74, 27:104].astype(int)
    fused = pp.decode_and_crop(jpeg, lambda s: window).numpy().astype(int)
    assert fused.shape == (61, 77, 3)
    assert np.abs(fused - full).max() <= 10 and np.mean(fused != full) < 0.02


def test_jpeg_decoding_uses_the_integer_fast_dct(photo):
    # The original decodes with TF's default, INTEGER_FAST (IFAST), not the accurate DCT.
    jpeg = tf.constant(encode(photo, "jpeg"))
    decoded = pp.decode_image(jpeg).numpy()
    fast = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_FAST").numpy()
    accurate = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(decoded, fast)
    assert not np.array_equal(decoded, accurate)
    full = [0, 0, *photo.shape[:2]]
    np.testing.assert_array_equal(pp.decode_and_crop(jpeg, lambda s: tf.constant(full)), fast)


def test_train_crop_maths_are_the_same_for_jpeg_png_and_arrays(photo):
    jpeg = encode(photo, "jpeg")
    decoded_jpeg = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    for i in range(4):
        seed = tf.constant([9, i], tf.int64)
        from_array = pp.train_preprocess(tf.constant(decoded_jpeg), seed, 48).numpy()
        from_png = pp.train_preprocess(tf.constant(encode(decoded_jpeg, "png")), seed, 48)
        from_jpeg = pp.train_preprocess(tf.constant(jpeg), seed, 48).numpy()
        assert from_array.shape == (48, 48, 3) and from_array.dtype == np.float32
        np.testing.assert_array_equal(from_png, from_array)
        assert np.abs(from_jpeg - from_array).mean() < 0.5


def test_train_preprocess_inside_tf_data_matches_eager(photo):
    jpeg = encode(photo, "jpeg")
    eager = [
        pp.train_preprocess(tf.constant(jpeg), tf.constant([0, i], tf.int64), 40) for i in range(3)
    ]
    ds = tf.data.Dataset.range(3).map(
        lambda i: pp.train_preprocess(
            tf.constant(jpeg), tf.stack([tf.constant(0, tf.int64), i]), 40
        )
    )
    for got, want in zip(ds.as_numpy_iterator(), eager, strict=True):
        np.testing.assert_array_equal(got, want)
    # Different seeds give different crops.
    assert not np.array_equal(eager[0], eager[1])


def test_tiny_image_train_crops():
    digit = np.zeros((8, 8, 3), np.uint8)
    digit[1:7, 2:4] = 255  # an asymmetric stroke
    base = pp.resize(digit, 32).numpy()
    outputs = [
        pp.train_preprocess(tf.constant(digit), tf.constant([1, i], tf.int64), 32, "resize_flip")
        for i in range(8)
    ]
    flips = [bool(np.array_equal(o, base[:, ::-1])) for o in outputs]
    assert all(np.array_equal(o, base) or f for o, f in zip(outputs, flips, strict=True))
    assert 0 < sum(flips) < 8
    np.testing.assert_array_equal(pp.train_preprocess(tf.constant(digit), SEED, 32, "resize"), base)
    # resize_shift: a 32x32 window of the resize zero-padded by 32 // 8 = 4 pixels.
    padded = np.pad(base, [(4, 4), (4, 4), (0, 0)])
    offsets = set()
    for i in range(12):
        out = pp.train_preprocess(
            tf.constant(digit), tf.constant([2, i], tf.int64), 32, "resize_shift"
        )
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(out.numpy(), padded[dy : dy + 32, dx : dx + 32])
        ]
        assert matches
        offsets.add(matches[0])
    assert len(offsets) > 3
    with pytest.raises(ValueError, match="Unknown train_preproc"):
        pp.train_preprocess(tf.constant(digit), SEED, 32, "random_crop")


def test_eval_resize_crop_32_against_numpy(photo):
    png = tf.constant(encode(photo, "png"))
    out = pp.eval_preprocess(png, 64, "resize_crop_32").numpy()
    # Resize the whole 120x160 image to 96x96 (aspect ignored), centre crop at 16.
    expected = np_normalize(np_resize(photo, 96, 96)[16:80, 16:80])
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out, expected, atol=0.15 / 57)


def test_eval_resize_crop_fraction_and_resize(photo):
    # p <= 1 is a crop fraction: int(56 / 0.875) = 64, offset (64 - 56 + 1) // 2 = 4.
    out = pp.eval_preprocess(tf.constant(photo), 56, "resize_crop_0.875").numpy()
    np.testing.assert_allclose(out, np_normalize(np_resize(photo, 64, 64)[4:60, 4:60]), atol=0.003)
    out = pp.eval_preprocess(tf.constant(photo), 40, "resize").numpy()
    np.testing.assert_allclose(out, np_normalize(np_resize(photo, 40, 40)), atol=0.003)


def test_eval_crop_resize_against_numpy(photo):
    out = pp.eval_preprocess(tf.constant(encode(photo, "png")), 64, "crop_resize").numpy()
    # scale = min(120, 160) / 96 = 1.25, crop int(1.25 * 64) = 80, offsets (41 // 2, 81 // 2).
    crop = photo[20:100, 40:120]
    np.testing.assert_allclose(out, np_normalize(np_resize(crop, 64, 64)), atol=0.003)


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("resize_crop_32", ("resize_crop", 32.0)),
        ("crop_resize", ("crop_resize", 0.0)),
        ("resize", ("resize_crop", 1.0)),
        ("resize_crop_0.875", ("resize_crop", 0.875)),
    ],
)
def test_parse_eval_preproc(name, parsed):
    assert pp.parse_eval_preproc(name) == parsed


@pytest.mark.parametrize("name", ["center_crop", "resize_crop_", "resize_crop_-3", "resize_crop_x"])
def test_bad_eval_preproc(name):
    with pytest.raises(ValueError, match="Unknown eval_preproc"):
        pp.parse_eval_preproc(name)


def test_augment_and_normalize(photo):
    from nfnets_jax.data.augment import parse_augment_name

    image = pp.resize(photo, 40).numpy()  # floats outside [0, 255] at sharp edges
    plain = pp.augment_and_normalize(image, parse_augment_name(None), SEED).numpy()
    np.testing.assert_allclose(plain, np_normalize(image), atol=1e-5)
    # RandAugment first clips and truncates to uint8, so the result lies on the uint8
    # grid within [0, 255].
    ra = pp.augment_and_normalize(image, parse_augment_name("randaugment_205"), SEED).numpy()
    pixels = ra * np.array(pp.STDDEV_RGB) + np.array(pp.MEAN_RGB)
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3

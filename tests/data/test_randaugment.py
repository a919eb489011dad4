"""RandAugment ops against numpy references, the original's quirks, and the policy."""

import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax.data import randaugment as ra

OP = {name: i for i, name in enumerate(ra.OP_NAMES)}


@pytest.fixture(scope="module")
def image(photos) -> np.ndarray:
    """A real 48x64 RGB photo (non-square, to catch H/W mix-ups)."""
    return np.ascontiguousarray(photos[0][::8, ::8][:48, :64])


def in_tf_data(fn, *args):
    """Runs `fn(*args)` inside a tf.data map and returns the numpy result."""
    ds = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(a) for a in args)).map(fn)
    return next(iter(ds.as_numpy_iterator()))


# ---------------------------------------------------------------- numpy references


def np_blend(image1, image2, factor):
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    a = image1.astype(np.float32)
    b = image2.astype(np.float32)
    out = a + np.float32(factor) * (b - a)
    if not 0 < factor < 1:
        out = np.clip(out, 0, 255)
    return out.astype(np.uint8)


def np_round_half_away(x):
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5))


def np_affine(image, transform, fill=128):
    """Nearest-neighbour projective warp, output -> input coordinates, float32 maths."""
    a0, a1, a2, b0, b1, b2, c0, c1 = np.asarray(transform, np.float32)
    h, w = image.shape[:2]
    y, x = np.meshgrid(
        np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
    )
    k = c0 * x + c1 * y + np.float32(1)
    xin = np_round_half_away((a0 * x + a1 * y + a2) / k).astype(np.int64)
    yin = np_round_half_away((b0 * x + b1 * y + b2) / k).astype(np.int64)
    valid = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    out = np.full_like(image, fill)
    out[valid] = image[yin[valid], xin[valid]]
    return out


def np_rotation(degrees, h, w):
    t = np.deg2rad(degrees)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    c, s = np.cos(t), np.sin(t)
    return [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0, 0]


def np_equalize(image):
    out = np.empty_like(image)
    for ch in range(3):
        values = image[:, :, ch].astype(np.int64)
        hist = np.bincount(values.ravel(), minlength=256)
        last_nonzero = hist[np.nonzero(hist)[0][-1]]
        step = (hist.sum() - last_nonzero) // 255
        if step == 0:
            out[:, :, ch] = image[:, :, ch]
            continue
        lut = np.concatenate([[0], (np.cumsum(hist) + step // 2) // step])[:256]
        out[:, :, ch] = np.clip(lut, 0, 255)[values]
    return out


def np_autocontrast(image):
    out = np.empty_like(image)
    for ch in range(3):
        v = image[:, :, ch].astype(np.float32)
        lo, hi = v.min(), v.max()
        if hi > lo:
            scale = np.float32(255.0) / (hi - lo)
            out[:, :, ch] = np.clip(v * scale + (-lo * scale), 0, 255).astype(np.uint8)
        else:
            out[:, :, ch] = image[:, :, ch]
    return out


def np_grey(image):
    weights = np.array([0.2989, 0.587, 0.114], np.float32)
    grey = (image.astype(np.float32) / np.float32(255.0)) @ weights
    return np.repeat((grey * np.float32(255.5)).astype(np.uint8)[..., None], 3, axis=-1)


def np_smooth(image):
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float64) / 13
    f = image.astype(np.float64)
    h, w = image.shape[:2]
    acc = sum(kernel[i, j] * f[i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3))
    out = image.copy()
    out[1:-1, 1:-1] = np.clip(acc, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------- op arguments


@pytest.mark.parametrize(
    "magnitude, expected",
    [
        (
            5,
            dict(
                Rotate=15,
                ShearX=0.15,
                TranslateX=50,
                Posterize=2,
                Solarize=128,
                SolarizeAdd=55,
                Color=1.0,
                Cutout=20,
            ),
        ),
        (
            10,
            dict(
                Rotate=30,
                ShearX=0.30,
                TranslateX=100,
                Posterize=4,
                Solarize=256,
                SolarizeAdd=110,
                Color=1.9,
                Cutout=40,
            ),
        ),
        (
            15,
            dict(
                Rotate=45,
                ShearX=0.45,
                TranslateX=150,
                Posterize=6,
                Solarize=384,
                SolarizeAdd=165,
                Color=2.8,
                Cutout=60,
            ),
        ),
    ],
)
def test_op_arguments_match_the_spec_table(magnitude, expected):
    for name, value in expected.items():
        assert ra.op_argument(name, magnitude) == pytest.approx(value, abs=1e-12), name
    # The same factor for all four enhancement ops, and for both shear/translate axes.
    for name in ("Contrast", "Brightness", "Sharpness"):
        assert ra.op_argument(name, magnitude) == ra.op_argument("Color", magnitude)
    assert ra.op_argument("ShearY", magnitude) == ra.op_argument("ShearX", magnitude)
    assert ra.op_argument("TranslateY", magnitude) == ra.op_argument("TranslateX", magnitude)
    for name in ("AutoContrast", "Equalize", "Invert"):
        assert ra.op_argument(name, magnitude) is None
    with pytest.raises(ValueError, match="Unknown RandAugment op"):
        ra.op_argument("Cutmix", magnitude)


def test_op_list_is_the_original_order():
    assert ra.OP_NAMES == (
        "AutoContrast",
        "Equalize",
        "Invert",
        "Rotate",
        "Posterize",
        "Solarize",
        "Color",
        "Contrast",
        "Brightness",
        "Sharpness",
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Cutout",
        "SolarizeAdd",
    )


# ---------------------------------------------------------------- quirks


def test_solarize_threshold_wraps_modulo_256(image):
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    inverted = 255 - ramp
    # M = 10: threshold 256 wraps to 0, so every pixel is inverted.
    np.testing.assert_array_equal(ra.apply_op(ramp, OP["Solarize"], 10), inverted)
    # M = 15: 384 wraps to 128, the same as M = 5.
    half = np.where(ramp < 128, ramp, inverted)
    np.testing.assert_array_equal(ra.apply_op(ramp, OP["Solarize"], 15), half)
    np.testing.assert_array_equal(ra.apply_op(ramp, OP["Solarize"], 5), half)
    np.testing.assert_array_equal(ra.apply_op(image, OP["Solarize"], 10), 255 - image)


@pytest.mark.parametrize("size, constant", [(192, 144), (224, 196), (256, 255), (320, 255)])
def test_contrast_blends_towards_pixel_count_over_256(size, constant):
    zeros = tf.zeros([size, size, 3], tf.uint8)
    # Factor 0 returns the degenerate image itself: the flat constant H*W/256 (<= 255).
    np.testing.assert_array_equal(ra.contrast(zeros, 0.0), np.full((size, size, 3), constant))


def test_contrast_blend_at_m10_against_numpy(photos):
    img = np.ascontiguousarray(photos[1][:192, :192])
    expected = np_blend(np.full_like(img, 144), img, 1.9)
    np.testing.assert_array_equal(ra.apply_op(img, OP["Contrast"], 10), expected)


@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness", "Sharpness"])
def test_enhancement_ops_are_exact_noops_at_magnitude_5(image, name):
    np.testing.assert_array_equal(ra.apply_op(image, OP[name], 5), image)
    assert not np.array_equal(ra.apply_op(image, OP[name], 10), image)


@pytest.mark.parametrize("magnitude, mask", [(5, 0xC0), (10, 0xF0), (15, 0xFC)])
def test_posterize_keeps_int_m_times_0_4_bits(image, magnitude, mask):
    np.testing.assert_array_equal(ra.apply_op(image, OP["Posterize"], magnitude), image & mask)


def test_posterize_extremes(image):
    np.testing.assert_array_equal(ra.posterize(image, 8), image)
    np.testing.assert_array_equal(ra.posterize(image, 12), image)


def test_uncovered_pixels_get_128(image):
    h, w = image.shape[:2]
    np.testing.assert_array_equal(ra.translate_x(image, w), np.full_like(image, 128))
    np.testing.assert_array_equal(ra.translate_y(image, -h), np.full_like(image, 128))
    rotated = ra.rotate(image, 45.0).numpy()
    for corner in (rotated[0, 0], rotated[0, -1], rotated[-1, 0], rotated[-1, -1]):
        np.testing.assert_array_equal(corner, [128, 128, 128])
    out = ra.cutout(image, 5, 10, 20).numpy()
    expected = image.copy()
    expected[5:15, 15:25] = 128
    np.testing.assert_array_equal(out, expected)
    # The square is clipped at the border.
    expected = image.copy()
    expected[0:3, 57:64] = 128
    np.testing.assert_array_equal(ra.cutout(image, 5, -2, 62), expected)


# ---------------------------------------------------------------- ops vs numpy


@pytest.mark.parametrize("pixels", [50.0, -50.0, 17.0, -3.0])
def test_translate_against_numpy(image, pixels):
    np.testing.assert_array_equal(
        ra.translate_x(image, pixels), np_affine(image, [1, 0, pixels, 0, 1, 0, 0, 0])
    )
    np.testing.assert_array_equal(
        ra.translate_y(image, pixels), np_affine(image, [1, 0, 0, 0, 1, pixels, 0, 0])
    )
    # Content moves left by `pixels` (x_out = x_in - pixels) for positive pixels.
    if pixels == 17.0:
        np.testing.assert_array_equal(ra.translate_x(image, pixels)[:, :47], image[:, 17:])


@pytest.mark.parametrize("level", [0.15, -0.3, 0.45])
def test_shear_against_numpy(image, level):
    np.testing.assert_array_equal(
        ra.shear_x(image, level), np_affine(image, [1, level, 0, 0, 1, 0, 0, 0])
    )
    np.testing.assert_array_equal(
        ra.shear_y(image, level), np_affine(image, [1, 0, 0, level, 1, 0, 0, 0])
    )


@pytest.mark.parametrize("degrees", [15.0, -30.0, 45.0, 90.0])
def test_rotate_against_numpy(image, degrees):
    out = ra.rotate(image, degrees).numpy()
    expected = np_affine(image, np_rotation(degrees, *image.shape[:2]))
    # float32 coefficients may flip an exact rounding tie on a handful of pixels.
    assert np.mean(np.all(out == expected, axis=-1)) > 0.995


def test_rotate_90_is_a_transpose_for_square_images(photos):
    img = np.ascontiguousarray(photos[2][:40, :40])
    # Counter-clockwise by 90 degrees: output (x, y) reads input (W-1-y, x).
    np.testing.assert_array_equal(ra.rotate(img, 90.0), np.rot90(img, k=1))


def test_point_ops_against_numpy(image):
    np.testing.assert_array_equal(ra.invert(image), 255 - image)
    np.testing.assert_array_equal(ra.equalize(image), np_equalize(image))
    np.testing.assert_array_equal(ra.autocontrast(image), np_autocontrast(image))
    added = np.clip(image.astype(int) + 110, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(
        ra.apply_op(image, OP["SolarizeAdd"], 10), np.where(image < 128, added, image)
    )
    np.testing.assert_array_equal(
        ra.apply_op(image, OP["Brightness"], 10), np_blend(np.zeros_like(image), image, 1.9)
    )
    np.testing.assert_array_equal(
        ra.brightness(image, 0.4), np_blend(np.zeros_like(image), image, 0.4)
    )


def test_equalize_and_autocontrast_leave_flat_channels(image):
    flat = image.copy()
    flat[:, :, 1] = 77
    np.testing.assert_array_equal(ra.equalize(flat)[:, :, 1], flat[:, :, 1])
    np.testing.assert_array_equal(ra.autocontrast(flat)[:, :, 1], flat[:, :, 1])
    # Autocontrast stretches a channel to span exactly [0, 255].
    stretched = ra.autocontrast(image).numpy()
    assert stretched.min(axis=(0, 1)).tolist() == [0, 0, 0]
    assert stretched.max(axis=(0, 1)).tolist() == [255, 255, 255]


def test_color_and_sharpness_against_numpy(image):
    # TF's grey conversion and filter sum in float32 in their own order: a truncation
    # can land one level apart.
    color = ra.color(image, 1.9).numpy().astype(int)
    expected = np_blend(np_grey(image), image, 1.9).astype(int)
    assert np.abs(color - expected).max() <= 2
    assert np.mean(color == expected) > 0.97
    sharp = ra.sharpness(image, 2.8).numpy().astype(int)
    expected = np_blend(np_smooth(image), image, 2.8).astype(int)
    assert np.abs(sharp - expected).max() <= 3
    assert np.mean(sharp == expected) > 0.97
    # The one-pixel border is never changed by sharpness.
    np.testing.assert_array_equal(sharp[0], image[0])
    np.testing.assert_array_equal(sharp[:, -1], image[:, -1])


def test_blend_rules():
    a = np.array([[[10, 200, 0]]], np.uint8)
    b = np.array([[[20, 100, 255]]], np.uint8)
    np.testing.assert_array_equal(ra.blend(a, b, 0.0), a)
    np.testing.assert_array_equal(ra.blend(a, b, 1.0), b)
    # Interpolation truncates; extrapolation clips then truncates.
    np.testing.assert_array_equal(ra.blend(a, b, 0.55), [[[15, 145, 140]]])
    np.testing.assert_array_equal(ra.blend(a, b, 2.0), [[[30, 0, 255]]])


def test_ops_reject_float_images():
    with pytest.raises(TypeError, match="uint8"):
        ra.invert(tf.zeros([4, 4, 3]))


# ---------------------------------------------------------------- tf.data and policy


@pytest.mark.slow
def test_each_op_eagerly_and_inside_tf_data(image):
    image = image // 2 + 40  # a reduced range, so that AutoContrast has work to do

    def fn(index):
        return ra.apply_op(tf.constant(image), index, 10, -1.0, (10, 20))

    # Inside tf.data the op index is a tensor, so all 16 branches go through switch_case.
    in_pipeline = list(tf.data.Dataset.range(len(ra.OP_NAMES)).map(fn).as_numpy_iterator())
    for op_index, name in enumerate(ra.OP_NAMES):
        eager = fn(op_index).numpy()
        assert eager.dtype == np.uint8 and eager.shape == image.shape, name
        np.testing.assert_array_equal(in_pipeline[op_index], eager, err_msg=name)
        # Every op changes this image at M = 10 (the enhancement ops included).
        assert not np.array_equal(eager, image), name


@pytest.mark.slow
def test_randaugment_is_the_composition_of_its_layers(image):
    seed = tf.constant([3, 1234], tf.int64)
    out = ra.randaugment(image, 3, 10, seed).numpy()
    expected = tf.constant(image)
    ops = []
    for layer in range(3):
        op_index, sign, center = ra.layer_choices(seed, layer, 48, 64)
        ops.append(int(op_index))
        expected = ra.apply_op(expected, op_index, 10, sign, center)
    np.testing.assert_array_equal(out, expected)
    # Reproducible, the same inside tf.data, and seed-dependent.
    np.testing.assert_array_equal(ra.randaugment(image, 3, 10, seed), out)
    np.testing.assert_array_equal(
        in_tf_data(lambda img, s: ra.randaugment(img, 3, 10, s), image, seed), out
    )
    others = [ra.randaugment(image, 3, 10, tf.constant([3, s], tf.int64)).numpy() for s in range(4)]
    assert any(not np.array_equal(o, out) for o in others)


def test_randaugment_zero_layers_is_identity(image):
    np.testing.assert_array_equal(ra.randaugment(image, 0, 10, tf.constant([0, 0])), image)


def test_layer_draws_are_uniform():
    n = 3200
    ds = tf.data.Dataset.range(n).map(
        lambda i: ra.layer_choices(tf.stack([tf.constant(7, tf.int64), i]), 0, 48, 64)
    )
    ops, signs, centers = zip(*ds.as_numpy_iterator(), strict=True)
    counts = np.bincount(np.array(ops), minlength=16)
    # 200 expected per op; 5 binomial standard deviations is ~68.
    assert counts.min() > 200 - 68 and counts.max() < 200 + 68
    assert abs(np.mean(signs)) < 0.1 and set(signs) == {-1.0, 1.0}
    centers = np.array(centers)
    assert centers[:, 0].min() == 0 and centers[:, 0].max() == 47
    assert centers[:, 1].min() == 0 and centers[:, 1].max() == 63

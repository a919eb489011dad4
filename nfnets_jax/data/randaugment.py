"""RandAugment on uint8 images, with the original NFNet implementation's quirks.

The NFNet recipe uses the TF-TPU EfficientNet RandAugment (16 ops, every op applied with
probability 1, magnitudes on a 0-10 scale). This module re-implements those ops with
plain TensorFlow ops (no tensorflow-addons: the geometric ops go through
`tf.raw_ops.ImageProjectiveTransformV3` with nearest-neighbour sampling), and keeps the
behaviours that the published numbers were trained with (spec section 6.5):

* Solarize's threshold `int(M / 10 * 256)` wraps modulo 256 (it is a uint8 in the
  original): M = 10 gives 0, so every pixel is inverted; M = 15 gives 128.
* Contrast blends towards the constant `H * W / 256` (clipped to 255), not the mean
  grey level: 144 at 192 px, 196 at 224 px, 255 from 256 px.
* Color, Contrast, Brightness and Sharpness use the factor `M / 10 * 1.8 + 0.1`, which is
  exactly 1 at M = 5: they are exact no-ops for NFNet-F0.
* Posterize keeps `int(M / 10 * 4)` high bits: lower magnitudes are stronger.
* Pixels uncovered by Rotate/Shear/Translate and the Cutout square get the value 128.

Randomness is stateless: `randaugment(image, layers, magnitude, seed)` is a pure
function of `seed` (shape [2] integer tensor), so pipelines can be made reproducible.

Several ops are written for speed on CPU, with exactly the values of their plain
definitions (tests/data/test_identity.py compares them bit for bit): Solarize and
SolarizeAdd by uint8 arithmetic instead of a full-image select, Cutout from slices,
Equalize on one 768-bin histogram of all channels (indexed through full-shape channel
offsets), AutoContrast on the channels as contiguous rows, and, for images of static
size, the geometric ops as a row gather through a table that the projective-transform
kernel itself produced for that size, op, magnitude and sign (`_warp_table`).

References:
    Cubuk, Zoph, Shlens, Le. RandAugment: Practical automated data augmentation with a
    reduced search space. arXiv:1909.13719.
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from nfnets_jax.data.tf_setup import tf

__all__ = [
    "OP_NAMES",
    "affine_transform",
    "autocontrast",
    "blend",
    "brightness",
    "color",
    "contrast",
    "cutout",
    "equalize",
    "invert",
    "op_argument",
    "posterize",
    "randaugment",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "solarize_add",
    "translate_x",
    "translate_y",
]

# The op list, in the original's order: the layer's op index is uniform over it.
OP_NAMES = (
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
# Magnitudes are expressed on a 0..10 scale in the original (`_MAX_LEVEL`).
MAX_LEVEL = 10.0
# Value given to pixels uncovered by a geometric op or covered by Cutout (the
# original's RandAugment `replace_value = [128] * 3`).
FILL_VALUE = 128
# RandAugment hyperparameters of the original (`translate_const`, `cutout_const`).
TRANSLATE_CONST = 100.0
CUTOUT_CONST = 40.0
# SolarizeAdd only touches pixels below this value (the original's default).
SOLARIZE_ADD_THRESHOLD = 128


def _as_uint8(image: tf.Tensor) -> tf.Tensor:
    if image.dtype != tf.uint8:
        raise TypeError(f"RandAugment ops take uint8 images, got {image.dtype}.")
    return image


def blend(image1: tf.Tensor, image2: tf.Tensor, factor: float) -> tf.Tensor:
    """Linear blend `image1 + factor * (image2 - image1)`, truncated back to uint8.

    A factor of 0 returns `image1` and 1 returns `image2` exactly. Interpolation
    (0 < factor < 1) cannot leave [0, 255] and is cast directly; extrapolation is
    clipped to [0, 255] first. The cast truncates, as the original's does.

    Args:
        image1: uint8 image (the "degenerate" image of the enhancement ops).
        image2: uint8 image of the same shape (usually the input).
        factor: blend factor, a Python float.

    Returns:
        uint8 image.

    Example:
        >>> grey = tf.fill([2, 2, 3], tf.constant(100, tf.uint8))
        >>> blend(tf.zeros([2, 2, 3], tf.uint8), grey, 0.5)[0, 0].numpy().tolist()
        [50, 50, 50]
        >>> blend(tf.zeros([2, 2, 3], tf.uint8), grey, 3.0)[0, 0].numpy().tolist()  # clipped
        [255, 255, 255]
    """
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    first = tf.cast(image1, tf.float32)
    second = tf.cast(image2, tf.float32)
    blended = first + factor * (second - first)
    if not 0.0 < factor < 1.0:
        blended = tf.clip_by_value(blended, 0.0, 255.0)
    return tf.cast(blended, tf.uint8)


def invert(image: tf.Tensor) -> tf.Tensor:
    """`255 - image`."""
    return 255 - _as_uint8(image)


def solarize(image: tf.Tensor, threshold: int) -> tf.Tensor:
    """Inverts pixels at or above `threshold % 256` (the original's uint8 wrap-around).

    For uint8, `255 - v` is `v XOR 255`: the selected pixels are XOR-ed with 255 (a
    full-image select is several times slower on CPU than this arithmetic).
    """
    wrapped = int(threshold) % 256
    image = _as_uint8(image)
    if wrapped == 0:
        return 255 - image
    flip = tf.cast(image >= tf.constant(wrapped, tf.uint8), tf.uint8) * tf.constant(255, tf.uint8)
    return tf.bitwise.bitwise_xor(image, flip)


def solarize_add(
    image: tf.Tensor, addition: int, threshold: int = SOLARIZE_ADD_THRESHOLD
) -> tf.Tensor:
    """Adds `addition` (clipped to [0, 255]) to pixels below `threshold`.

    When no sum can leave [0, 255] (`0 <= addition <= 256 - threshold`, as at every
    magnitude up to 11) the addition is done in uint8 on the selected pixels; otherwise
    it is clipped in int32.
    """
    image = _as_uint8(image)
    addition, threshold = int(addition), int(threshold)
    if threshold <= 0 or addition == 0:
        return image
    if 0 < addition <= 256 - threshold:
        selected = tf.cast(image < tf.constant(threshold, tf.uint8), tf.uint8)
        return image + selected * tf.constant(addition, tf.uint8)
    added = tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255)
    return tf.where(image < threshold, tf.cast(added, tf.uint8), image)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
    """Keeps the `bits` most significant bits of every pixel (bits >= 8: identity)."""
    shift = 8 - min(int(bits), 8)
    image = _as_uint8(image)
    shift_t = tf.constant(shift, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift_t), shift_t)


def _to_grey(image: tf.Tensor) -> tf.Tensor:
    # TF's uint8 grey conversion (weights 0.2989/0.587/0.114), as the original uses.
    return tf.image.rgb_to_grayscale(image)


def color(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blends from the grey version of the image towards the image by `factor`."""
    image = _as_uint8(image)
    return blend(tf.image.grayscale_to_rgb(_to_grey(image)), image, factor)


def contrast(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blends from a flat image towards the image by `factor`, with the original's bug.

    The flat value should be the mean grey level, but the original divides the sum of
    the 256-bin histogram (the pixel count `H * W`) by 256, so it is `H * W / 256`
    clipped to 255 (then truncated to uint8).
    """
    image = _as_uint8(image)
    shape = tf.shape(image)
    pixels = tf.cast(shape[0] * shape[1], tf.float32)
    flat_value = tf.cast(tf.clip_by_value(pixels / 256.0, 0.0, 255.0), tf.uint8)
    degenerate = tf.fill(shape, flat_value)
    return blend(degenerate, image, factor)


def brightness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blends from black towards the image by `factor`."""
    image = _as_uint8(image)
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blends from a smoothed image towards the image by `factor`.

    The smoothed image is the 3x3 filter [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 over the
    interior ('VALID'), clipped and truncated to uint8; the one-pixel border keeps the
    original pixels.
    """
    image = _as_uint8(image)
    # The PIL ImageFilter.SMOOTH kernel that the original uses for sharpness.
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smoothed = tf.nn.depthwise_conv2d(
        tf.cast(image, tf.float32)[None], kernel, strides=[1, 1, 1, 1], padding="VALID"
    )[0]
    smoothed = tf.cast(tf.clip_by_value(smoothed, 0.0, 255.0), tf.uint8)
    interior = tf.pad(tf.ones_like(smoothed, tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(interior, tf.pad(smoothed, [[1, 1], [1, 1], [0, 0]]), image)
    return blend(degenerate, image, factor)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel linearly so its min becomes 0 and its max 255.

    Constant channels are left unchanged. Values are truncated to uint8. The channels
    are processed as the contiguous rows of the transposed `[3, H * W]` image: slicing
    the interleaved channels and stacking them back costs TensorFlow's CPU kernels more
    than the two transposes (BENCHMARKS.md, "Where the time goes").
    """
    image = _as_uint8(image)
    rows = tf.transpose(tf.reshape(image, [-1, 3]))

    def stretch(channel: tf.Tensor) -> tf.Tensor:
        values = tf.cast(channel, tf.float32)
        low, high = tf.reduce_min(values), tf.reduce_max(values)

        def scaled() -> tf.Tensor:
            scale = 255.0 / (high - low)
            offset = -low * scale
            return tf.cast(tf.clip_by_value(values * scale + offset, 0.0, 255.0), tf.uint8)

        return tf.cond(high > low, scaled, lambda: channel)

    stretched = tf.stack([stretch(rows[c]) for c in range(3)])
    out = tf.reshape(tf.transpose(stretched), tf.shape(image))
    return tf.ensure_shape(out, image.shape)


@functools.cache
def _channel_offsets(height: int, width: int) -> np.ndarray:
    """`256 * c` at every pixel of channel c of an [height, width, 3] image (int32)."""
    offsets = np.arange(3, dtype=np.int32) * 256
    return np.ascontiguousarray(np.broadcast_to(offsets, (height, width, 3)))


def _channel_codes(image: tf.Tensor) -> tf.Tensor:
    """`pixel + 256 * channel` as int32: the index of each value in a [3 * 256] table.

    With a static image size the offsets are a full-shape constant: TensorFlow's CPU
    kernel adds a [3] vector broadcast over the pixels far more slowly than two arrays
    of one shape.
    """
    values = tf.cast(image, tf.int32)
    height, width, channels = image.shape
    if height is None or width is None or channels != 3:
        return values + tf.range(3, dtype=tf.int32) * 256
    return values + tf.constant(_channel_offsets(height, width))


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation of each channel (the PIL `ImageOps.equalize` rule).

    With the 256-bin histogram `h` of a channel and `step = (sum(h) - h[last nonzero
    bin]) // 255`, pixel value v maps to `(cumsum(h)[v - 1] + step // 2) // step`
    (0 for v = 0), clipped to 255; channels with `step == 0` are unchanged. All three
    channels share one 768-bin histogram and one lookup (integer maths throughout).
    """
    image = _as_uint8(image)
    codes = _channel_codes(image)
    histogram = tf.reshape(
        tf.math.bincount(tf.reshape(codes, [-1]), minlength=768, maxlength=768), [3, 256]
    )
    # Pixels below each value: cumsum(h)[v - 1], and 0 for v = 0.
    below = tf.cumsum(histogram, axis=1, exclusive=True)
    # sum(h) - h[last nonzero bin] is the count below the last nonzero bin, the largest
    # count below a nonzero bin.
    step = tf.reduce_max(tf.where(histogram > 0, below, 0), axis=1, keepdims=True) // 255
    # (below + step // 2) // step is 0 at v = 0, as the original's shifted table.
    lut = tf.minimum((below + step // 2) // tf.maximum(step, 1), 255)
    lut = tf.cast(tf.where(step > 0, lut, tf.range(256, dtype=tf.int32)), tf.uint8)
    out = tf.gather(tf.reshape(lut, [-1]), codes)
    return tf.ensure_shape(out, image.shape)


def affine_transform(
    image: tf.Tensor, transform: tf.Tensor | list[float], fill: int = FILL_VALUE
) -> tf.Tensor:
    """Resamples `image` by a projective map from output to input coordinates.

    With `transform = [a0, a1, a2, b0, b1, b2, c0, c1]`, output pixel (x, y) reads the
    input at `((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k)`, `k = c0 x + c1 y + 1`,
    rounded to the nearest pixel (half away from zero); reads outside the image give
    `fill`. This is `tfa.image.transform` with nearest interpolation, which the original
    used, followed by its wrap/unwrap trick that sets uncovered pixels to `fill`.

    Args:
        image: uint8 image [H, W, C].
        transform: the 8 coefficients.
        fill: value of uncovered pixels.

    Returns:
        uint8 image [H, W, C].

    Example:
        >>> row = tf.reshape(tf.cast(tf.range(8), tf.uint8), [1, 8, 1])  # pixels 0..7
        >>> shifted = affine_transform(row, [1, 0, 5, 0, 1, 0, 0, 0])  # x_in = x + 5
        >>> shifted[0, :, 0].numpy().tolist()  # uncovered pixels get the fill, 128
        [5, 6, 7, 128, 128, 128, 128, 128]
    """
    image = _as_uint8(image)
    transform = tf.reshape(tf.cast(transform, tf.float32), [1, 8])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=float(fill),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0]
    return tf.ensure_shape(out, image.shape)


def _rotate_transform(degrees, height, width) -> tf.Tensor:
    theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(theta), tf.sin(theta)
    return tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
    )


def _shear_x_transform(level, height, width) -> tf.Tensor:
    del height, width
    return tf.stack([1.0, tf.cast(level, tf.float32), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def _shear_y_transform(level, height, width) -> tf.Tensor:
    del height, width
    return tf.stack([1.0, 0.0, 0.0, tf.cast(level, tf.float32), 1.0, 0.0, 0.0, 0.0])


def _translate_x_transform(pixels, height, width) -> tf.Tensor:
    del height, width
    return tf.stack([1.0, 0.0, tf.cast(pixels, tf.float32), 0.0, 1.0, 0.0, 0.0, 0.0])


def _translate_y_transform(pixels, height, width) -> tf.Tensor:
    del height, width
    return tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, tf.cast(pixels, tf.float32), 0.0, 0.0])


# The geometric ops: the projective map of each, from (signed argument, height, width).
_TRANSFORMS = {
    "Rotate": _rotate_transform,
    "ShearX": _shear_x_transform,
    "ShearY": _shear_y_transform,
    "TranslateX": _translate_x_transform,
    "TranslateY": _translate_y_transform,
}


def _geometric(name: str, image: tf.Tensor, argument, fill: int) -> tf.Tensor:
    shape = tf.shape(image)
    return affine_transform(image, _TRANSFORMS[name](argument, shape[0], shape[1]), fill)


def rotate(image: tf.Tensor, degrees: tf.Tensor | float, fill: int = FILL_VALUE) -> tf.Tensor:
    """Rotates counter-clockwise by `degrees` about the image centre.

    Output pixel p reads the input at `R(theta) (p - c) + c`, with
    `c = ((W - 1) / 2, (H - 1) / 2)` and `R` the rotation by `theta` in (x, y) pixel
    coordinates (y pointing down), as `tfa.image.rotate` does.
    """
    return _geometric("Rotate", image, degrees, fill)


def shear_x(image: tf.Tensor, level: tf.Tensor | float, fill: int = FILL_VALUE) -> tf.Tensor:
    """Horizontal shear: output (x, y) reads input (x + level * y, y)."""
    return _geometric("ShearX", image, level, fill)


def shear_y(image: tf.Tensor, level: tf.Tensor | float, fill: int = FILL_VALUE) -> tf.Tensor:
    """Vertical shear: output (x, y) reads input (x, level * x + y)."""
    return _geometric("ShearY", image, level, fill)


def translate_x(image: tf.Tensor, pixels: tf.Tensor | float, fill: int = FILL_VALUE) -> tf.Tensor:
    """Output (x, y) reads input (x + pixels, y): content moves left by `pixels`."""
    return _geometric("TranslateX", image, pixels, fill)


def translate_y(image: tf.Tensor, pixels: tf.Tensor | float, fill: int = FILL_VALUE) -> tf.Tensor:
    """Output (x, y) reads input (x, y + pixels): content moves up by `pixels`."""
    return _geometric("TranslateY", image, pixels, fill)


@functools.cache
def _warp_table(name: str, argument: float, height: int, width: int, fill: int):
    """Source pixel of every output pixel of geometric op `name`, for sign -1 and +1.

    The table is made by `affine_transform` itself (same op, same uint8 kernel, same
    coefficients computed by the same ops) on an image whose pixels spell their own
    index in 3 bytes, so gathering through it reproduces the op exactly. Pixels the op
    fills read `(fill, fill, fill)`, the code `fill * 0x010101`, which is no pixel index
    while `height * width <= fill * 0x010101` (`_warp` checks it); they get index
    `height * width` (a fill row appended to the image).

    Returns:
        int32 numpy array [2, height * width] (row 0: sign -1, row 1: sign +1).
    """
    with tf.init_scope():
        index = np.arange(height * width, dtype=np.int64)
        spelled = np.stack([index & 255, (index >> 8) & 255, (index >> 16) & 255], axis=-1)
        probe = tf.constant(spelled.reshape(height, width, 3).astype(np.uint8))
        rows = []
        for sign in (-1.0, 1.0):
            signed = tf.constant(sign, tf.float32) * argument
            read = _geometric(name, probe, signed, fill).numpy().astype(np.int64)
            source = read[..., 0] | (read[..., 1] << 8) | (read[..., 2] << 16)
            filled = source == fill * 0x010101
            rows.append(np.where(filled, height * width, source).reshape(-1))
    return np.stack(rows).astype(np.int32)


def _warp(name: str, image: tf.Tensor, argument: float, sign: tf.Tensor, fill: int):
    """Geometric op `name` with argument `sign * argument` (sign +-1 float32 tensor).

    With a static image size the op is a row gather through `_warp_table` (several times
    faster than the projective-transform kernel, and identical); otherwise the kernel
    runs.
    """
    height, width, channels = image.shape
    if height is None or width is None or channels is None or height * width > fill * 0x010101:
        return _geometric(name, image, sign * argument, fill)
    table = tf.constant(_warp_table(name, float(argument), height, width, fill))
    source = tf.gather(table, tf.cast(sign > 0, tf.int32))
    pixels = tf.concat(
        [
            tf.reshape(image, [height * width, channels]),
            tf.fill([1, channels], tf.constant(fill, tf.uint8)),
        ],
        axis=0,
    )
    return tf.reshape(tf.gather(pixels, source), [height, width, channels])


def cutout(
    image: tf.Tensor,
    pad_size: int,
    center_y: tf.Tensor | int,
    center_x: tf.Tensor | int,
    fill: int = FILL_VALUE,
) -> tf.Tensor:
    """Fills rows `[cy - pad, cy + pad)` x columns `[cx - pad, cx + pad)` (clipped) with `fill`.

    The image is reassembled from slices around a filled box (copies only, no select).
    """
    image = _as_uint8(image)
    shape = tf.shape(image)
    center_y = tf.cast(center_y, tf.int32)
    center_x = tf.cast(center_x, tf.int32)
    y0 = tf.clip_by_value(center_y - pad_size, 0, shape[0])
    y1 = tf.maximum(tf.clip_by_value(center_y + pad_size, 0, shape[0]), y0)
    x0 = tf.clip_by_value(center_x - pad_size, 0, shape[1])
    x1 = tf.maximum(tf.clip_by_value(center_x + pad_size, 0, shape[1]), x0)
    band = image[y0:y1]
    box = tf.fill(tf.stack([y1 - y0, x1 - x0, shape[2]]), tf.constant(fill, tf.uint8))
    middle = tf.concat([band[:, :x0], box, band[:, x1:]], axis=1)
    out = tf.concat([image[:y0], middle, image[y1:]], axis=0)
    return tf.ensure_shape(out, image.shape)


def op_argument(name: str, magnitude: float) -> float | int | None:
    """The unsigned argument the original passes to op `name` at magnitude M.

    Args:
        name: one of `OP_NAMES`.
        magnitude: RandAugment magnitude on the 0-10 scale.

    Returns:
        Rotate: degrees `M / 10 * 30`; ShearX/Y: `M / 10 * 0.3`; TranslateX/Y: pixels
        `M / 10 * 100`; Posterize: bits `int(M / 10 * 4)`; Solarize: threshold
        `int(M / 10 * 256)` (before the uint8 wrap); SolarizeAdd: `int(M / 10 * 110)`;
        Color/Contrast/Brightness/Sharpness: factor `M / 10 * 1.8 + 0.1`; Cutout: half
        side `int(M / 10 * 40)`; None for AutoContrast, Equalize and Invert. Rotate,
        Shear and Translate get a random sign when applied.

    Raises:
        ValueError: for an unknown op name.

    Example:
        >>> op_argument('Solarize', 15)
        384
    """
    level = magnitude / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return level * 30.0
    if name in ("ShearX", "ShearY"):
        return level * 0.3
    if name in ("TranslateX", "TranslateY"):
        return level * TRANSLATE_CONST
    if name == "Posterize":
        return int(level * 4)
    if name == "Solarize":
        return int(level * 256)
    if name == "SolarizeAdd":
        return int(level * 110)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name == "Cutout":
        return int(level * CUTOUT_CONST)
    raise ValueError(f"Unknown RandAugment op {name!r}; expected one of {OP_NAMES}.")


def _op_branches(image: tf.Tensor, magnitude: float, sign: tf.Tensor, center: tf.Tensor):
    """One zero-argument callable per op of `OP_NAMES`, in order."""
    arg = {name: op_argument(name, magnitude) for name in OP_NAMES}

    def warp(name):
        return lambda: _warp(name, image, arg[name], sign, FILL_VALUE)

    return [
        lambda: autocontrast(image),
        lambda: equalize(image),
        lambda: invert(image),
        warp("Rotate"),
        lambda: posterize(image, arg["Posterize"]),
        lambda: solarize(image, arg["Solarize"]),
        lambda: color(image, arg["Color"]),
        lambda: contrast(image, arg["Contrast"]),
        lambda: brightness(image, arg["Brightness"]),
        lambda: sharpness(image, arg["Sharpness"]),
        warp("ShearX"),
        warp("ShearY"),
        warp("TranslateX"),
        warp("TranslateY"),
        lambda: cutout(image, arg["Cutout"], center[0], center[1]),
        lambda: solarize_add(image, arg["SolarizeAdd"]),
    ]


def layer_choices(seed: tf.Tensor, layer, height: tf.Tensor, width: tf.Tensor):
    """The random draws of one RandAugment layer: (op index, sign, cutout centre).

    Args:
        seed: [2] integer stateless seed of the image.
        layer: layer number (int or int64 tensor; each layer has its own draws).
        height: image height (Cutout centre row is uniform in [0, height)).
        width: image width.

    Returns:
        `(op_index int32 in [0, 16), sign float32 in {-1, 1}, center int32 [2] (y, x))`.
    """
    keys = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, tf.cast(layer, tf.int64)), num=4
    )
    op_index = tf.random.stateless_uniform(
        [], keys[0], minval=0, maxval=len(OP_NAMES), dtype=tf.int32
    )
    sign = tf.where(tf.random.stateless_uniform([], keys[1]) < 0.5, -1.0, 1.0)
    center_y = tf.random.stateless_uniform([], keys[2], minval=0, maxval=height, dtype=tf.int32)
    center_x = tf.random.stateless_uniform([], keys[3], minval=0, maxval=width, dtype=tf.int32)
    return op_index, sign, tf.stack([center_y, center_x])


def apply_op(
    image: tf.Tensor, op_index: tf.Tensor | int, magnitude: float, sign=1.0, center=(0, 0)
) -> tf.Tensor:
    """Applies op number `op_index` of `OP_NAMES` at `magnitude` (only that branch runs).

    Args:
        image: uint8 image [H, W, 3].
        op_index: index into `OP_NAMES` (int or int32 scalar tensor).
        magnitude: magnitude on the 0-10 scale.
        sign: +1 or -1, the sign of Rotate/Shear/Translate arguments.
        center: (y, x) centre of the Cutout square.

    Returns:
        uint8 image [H, W, 3].
    """
    image = _as_uint8(image)
    sign = tf.cast(sign, tf.float32)
    center = tf.cast(center, tf.int32)
    branches = _op_branches(image, magnitude, sign, center)
    if isinstance(op_index, int):
        # A known op: build only its branch.
        out = branches[op_index]()
    else:
        out = tf.switch_case(tf.cast(op_index, tf.int32), branches)
    return tf.ensure_shape(out, image.shape)


def randaugment(image: tf.Tensor, num_layers: int, magnitude: float, seed: tf.Tensor) -> tf.Tensor:
    """RandAugment: `num_layers` ops drawn uniformly (with repetition) from `OP_NAMES`.

    Every drawn op is applied (the original also draws a probability in [0.2, 0.8] per op
    but never uses it, so no such draw is made here). The draws are stateless functions
    of `seed`.

    Args:
        image: uint8 image [H, W, 3].
        num_layers: number of ops applied in sequence (4 for NFNets).
        magnitude: magnitude M (5 for F0, 10 for F1-F2, 15 for F3+).
        seed: [2] integer tensor, the stateless seed of this image.

    Returns:
        The augmented uint8 image [H, W, 3].

    Example:
        >>> image = tf.reshape(tf.cast(tf.range(32 * 32 * 3) % 251, tf.uint8), [32, 32, 3])
        >>> out = randaugment(image, 4, 5, tf.constant([0, 42], tf.int64))
        >>> out.shape.as_list(), out.dtype.name
        ([32, 32, 3], 'uint8')
        >>> same = randaugment(image, 4, 5, tf.constant([0, 42], tf.int64))  # stateless
        >>> bool(tf.reduce_all(same == out))
        True
    """
    image = _as_uint8(image)
    if num_layers == 0:
        return image
    seed = tf.cast(seed, tf.int64)
    layer_fn = _layer_function(float(magnitude))
    for layer in range(num_layers):
        image = layer_fn(image, seed, tf.constant(layer, tf.int64))
    return image


@functools.cache
def _layer_function(magnitude: float):
    """One RandAugment layer as a `tf.function`, traced once and reused by every layer.

    Tracing the 16 branches is the slow part of building a pipeline; sharing one
    traced function between the layers builds it once instead of `num_layers` times.
    """

    @tf.function(autograph=False)
    def layer(image: tf.Tensor, seed: tf.Tensor, layer_index: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(image)
        op_index, sign, center = layer_choices(seed, layer_index, shape[0], shape[1])
        return apply_op(image, op_index, magnitude, sign, center)

    return layer

"""Per-example preprocessing: decode, crop, flip, resize, augment and normalize.

Images arrive either encoded (a scalar `tf.string` of JPEG/PNG/GIF/BMP bytes, as tfds
and image folders give them) or decoded (uint8 [h, w, 3], as the digits dataset gives
them). Both go through the same crop maths:

* JPEG bytes are cropped while decoding (`tf.image.decode_and_crop_jpeg`, which only
  decodes the needed blocks), as the original does;
* other encodings are decoded whole, then cropped with the same window;
* decoded arrays are cropped with the same window.

JPEG decoding uses TensorFlow's default (INTEGER_FAST DCT), like the original; resizing
is TF2's bicubic (Keys a = -0.5, half-pixel centres, no antialiasing) and is **not**
clamped, so training images can leave [0, 255] before normalization (spec section 6.3).

Training crops (`train_preproc`):

* `'inception_crop'` (default, the original): random area 8%-100%, aspect 3/4-4/3,
  10 attempts, min object covered 0.1, falling back to the padded centre crop; then a
  random horizontal flip and a bicubic resize to S x S.
* For tiny images (e.g. 8x8 digits at 32-64 px), where an inception crop is meaningless:
  `'resize'` (plain bicubic resize to S x S), `'resize_flip'` (plus a random flip),
  `'resize_shift'` (resize, zero-pad by S // 8 and take a random S x S window: a random
  translation of up to S / 8 pixels) and `'resize_shift_flip'`.

Evaluation crops (`eval_preproc`), S = the variant's test size:

* `'resize_crop_{p}'` (NFNets use `'resize_crop_32'`): resize the whole image to
  (S + p) x (S + p) ignoring its aspect ratio when p > 1 (or int(S / p) per side when
  p <= 1), then take the centre S x S crop.
* `'crop_resize'` (NF-RegNets): padded centre crop of side `min(h, w) * S / (S + 32)`,
  then bicubic resize to S x S.
* `'resize'`: bicubic resize of the whole image to S x S (same as `'resize_crop_1'`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from nfnets_jax.data import randaugment as randaugment_lib
from nfnets_jax.data.augment import TRAIN_PREPROCS, AugmentConfig, parse_eval_preproc
from nfnets_jax.data.tf_setup import tf

__all__ = [
    "MEAN_RGB",
    "STDDEV_RGB",
    "TRAIN_PREPROCS",
    "augment_and_normalize",
    "center_crop_window",
    "decode_and_crop",
    "decode_image",
    "eval_preprocess",
    "inception_crop_window",
    "normalize",
    "parse_eval_preproc",
    "resize",
    "train_preprocess",
]

# ImageNet channel mean and standard deviation, x255 (spec section 6.3).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Inception crop parameters of the original (spec section 6.3).
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_MIN_OBJECT_COVERED = 0.1
CROP_MAX_ATTEMPTS = 10
# Pixel padding of the centre crop (`crop_resize` and the inception-crop fallback).
CENTER_CROP_PADDING = 32
# Images of at most this many values normalize with full-shape constants (see `normalize`).
_MAX_CONSTANT_ELEMENTS = 2**22


def _window(y, x, h, w) -> tf.Tensor:
    return tf.cast(tf.stack([y, x, h, w]), tf.int32)


def center_crop_window(shape: tf.Tensor, image_size: int) -> tf.Tensor:
    """The original's padded centre crop window `[y, x, h, w]` for an image of `shape`.

    `scale = min(h, w) / (S + 32)`, crop side `int(scale * S)`, offsets
    `((dim - crop) + 1) // 2`: the crop covers the fraction S / (S + 32) of the short
    side, centred.

    Args:
        shape: int tensor `[h, w]` (more entries are ignored).
        image_size: S.

    Returns:
        int32 `[offset_y, offset_x, crop_h, crop_w]`.

    Example:
        >>> center_crop_window(tf.constant([480, 640]), 224).numpy().tolist()
        [30, 110, 420, 420]
    """
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    padded = float(image_size + CENTER_CROP_PADDING)
    scale = tf.minimum(height / padded, width / padded)
    crop_h = tf.cast(scale * image_size, tf.int32)
    crop_w = tf.cast(scale * image_size, tf.int32)
    offset_y = (tf.cast(shape[0], tf.int32) - crop_h + 1) // 2
    offset_x = (tf.cast(shape[1], tf.int32) - crop_w + 1) // 2
    return _window(offset_y, offset_x, crop_h, crop_w)


def inception_crop_window(shape: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """A random Inception-style crop window, or the centre crop when sampling fails.

    `tf.image.stateless_sample_distorted_bounding_box` with the original's settings
    (area 0.08-1, aspect 3/4-4/3, 10 attempts, min object covered 0.1). When it returns
    the whole image (all attempts failed) the padded centre crop for `image_size` is
    used instead, as in the original.

    Args:
        shape: int tensor `[h, w]`.
        seed: [2] integer stateless seed.
        image_size: the training size S (for the fallback).

    Returns:
        int32 `[offset_y, offset_x, crop_h, crop_w]`.
    """
    size = tf.cast(tf.stack([shape[0], shape[1], 3]), tf.int32)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        size,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=CROP_MIN_OBJECT_COVERED,
        aspect_ratio_range=CROP_ASPECT_RANGE,
        area_range=CROP_AREA_RANGE,
        max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    random_window = _window(begin[0], begin[1], crop_size[0], crop_size[1])
    failed = tf.reduce_all(tf.equal(crop_size[:2], size[:2]))
    return tf.where(failed, center_crop_window(size, image_size), random_window)


def _crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    return image[window[0] : window[0] + window[2], window[1] : window[1] + window[3], :]


def decode_image(image: tf.Tensor) -> tf.Tensor:
    """Decodes encoded bytes (any format TF reads) to uint8 RGB; passes arrays through."""
    if image.dtype != tf.string:
        return image
    decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
    decoded.set_shape([None, None, 3])
    return decoded


def decode_and_crop(image: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Decodes (if encoded) and crops `image` to `window_fn([h, w])`.

    JPEG bytes are cropped during decoding; other encodings are decoded then cropped;
    uint8 arrays are cropped. The window maths are the same in all three cases.

    Args:
        image: scalar tf.string (encoded) or uint8 [h, w, 3].
        window_fn: maps the image shape `[h, w]` to `[y, x, crop_h, crop_w]`.

    Returns:
        uint8 [crop_h, crop_w, 3].
    """
    if image.dtype != tf.string:
        return _crop(image, window_fn(tf.shape(image)))

    def jpeg() -> tf.Tensor:
        window = window_fn(tf.image.extract_jpeg_shape(image))
        return tf.image.decode_and_crop_jpeg(image, window, channels=3)

    def other() -> tf.Tensor:
        decoded = decode_image(image)
        return _crop(decoded, window_fn(tf.shape(decoded)))

    cropped = tf.cond(tf.io.is_jpeg(image), jpeg, other)
    cropped.set_shape([None, None, 3])
    return cropped


def resize(image: tf.Tensor, height: int, width: int | None = None) -> tf.Tensor:
    """TF2 bicubic resize (Keys a = -0.5, half-pixel centres, no antialias), float32, unclamped."""
    width = height if width is None else width
    return tf.image.resize(image, [height, width], method="bicubic", antialias=False)


@functools.cache
def _channel_constants(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    mean = np.broadcast_to(np.asarray(MEAN_RGB, np.float32), shape)
    stddev = np.broadcast_to(np.asarray(STDDEV_RGB, np.float32), shape)
    return np.ascontiguousarray(mean), np.ascontiguousarray(stddev)


def normalize(image: tf.Tensor) -> tf.Tensor:
    """`(image - MEAN_RGB) / STDDEV_RGB` in float32.

    With a static shape the mean and standard deviation are constants of the image's
    full shape: the same float32 operations per pixel, without the per-channel
    broadcast (which made TF's CPU kernels several times slower).
    """
    image = tf.cast(image, tf.float32)
    shape = image.shape
    if (
        shape.is_fully_defined()
        and shape[-1] == 3
        and shape.num_elements() <= _MAX_CONSTANT_ELEMENTS
    ):
        mean, stddev = _channel_constants(tuple(shape.as_list()))
        return (image - tf.constant(mean)) / tf.constant(stddev)
    return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def augment_and_normalize(image: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Optional RandAugment, then normalization (the original's `augment_normalize`).

    With RandAugment the float image is clipped to [0, 255] and truncated to uint8
    first, as the original does; without it the (possibly out-of-range) float image is
    normalized as is.

    Args:
        image: float [H, W, 3] (pixel scale 0-255).
        config: the parsed augmentation name.
        seed: [2] integer stateless seed of this example.

    Returns:
        Normalized float32 [H, W, 3].
    """
    if config.randaugment:
        pixels = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        pixels = randaugment_lib.randaugment(
            pixels, config.randaugment_layers, config.randaugment_magnitude, seed
        )
        image = tf.cast(pixels, tf.float32)
    return normalize(image)


def train_preprocess(
    image: tf.Tensor, seed: tf.Tensor, image_size: int, method: str = "inception_crop"
) -> tf.Tensor:
    """Training crop/flip/resize of one example, before mixing and RandAugment.

    Args:
        image: scalar tf.string (encoded) or uint8 [h, w, 3].
        seed: [2] integer stateless seed of this example.
        image_size: output side S.
        method: one of `TRAIN_PREPROCS` (see the module docstring).

    Returns:
        float32 [S, S, 3] on the 0-255 scale, not clamped.

    Raises:
        ValueError: for an unknown `method`.

    Example:
        >>> jpeg_bytes = tf.io.encode_jpeg(tf.zeros([64, 48, 3], tf.uint8))
        >>> x = train_preprocess(jpeg_bytes, tf.constant([0, 7]), 32)
        >>> x.shape.as_list(), x.dtype.name
        ([32, 32, 3], 'float32')
        >>> same = train_preprocess(jpeg_bytes, tf.constant([0, 7]), 32)  # stateless draws
        >>> bool(tf.reduce_all(same == x))
        True
    """
    if method not in TRAIN_PREPROCS:
        raise ValueError(f"Unknown train_preproc {method!r}; expected one of {TRAIN_PREPROCS}.")
    crop_seed, flip_seed, shift_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3)
    )
    if method == "inception_crop":
        image = decode_and_crop(
            image, lambda shape: inception_crop_window(shape, crop_seed, image_size)
        )
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return tf.ensure_shape(resize(image, image_size), [image_size, image_size, 3])
    image = decode_image(image)
    if method.endswith("_flip"):
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = resize(image, image_size)
    if method.startswith("resize_shift"):
        pad = max(image_size // 8, 1)
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        offsets = tf.random.stateless_uniform(
            [2], shift_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
        )
        image = padded[
            offsets[0] : offsets[0] + image_size, offsets[1] : offsets[1] + image_size, :
        ]
    return tf.ensure_shape(image, [image_size, image_size, 3])


def eval_preprocess(image: tf.Tensor, image_size: int, method: str = "resize_crop_32") -> tf.Tensor:
    """Evaluation crop/resize and normalization of one example.

    Args:
        image: scalar tf.string (encoded) or uint8 [h, w, 3].
        image_size: output side S (the variant's test size).
        method: `'resize_crop_{p}'`, `'crop_resize'` or `'resize'`.

    Returns:
        Normalized float32 [S, S, 3].

    Example:
        >>> jpeg_bytes = tf.io.encode_jpeg(tf.zeros([64, 48, 3], tf.uint8))
        >>> x = eval_preprocess(jpeg_bytes, 32, 'resize_crop_32')  # resize to 64, crop 32
        >>> x.shape.as_list()
        [32, 32, 3]
        >>> [round(float(v), 3) for v in x[0, 0]]  # black: -MEAN_RGB / STDDEV_RGB
        [-2.118, -2.036, -1.804]
    """
    kind, pad = parse_eval_preproc(method)
    if kind == "crop_resize":
        image = decode_and_crop(image, lambda shape: center_crop_window(shape, image_size))
        image = resize(image, image_size)
    else:
        # p > 1 is a pixel pad; p <= 1 is the crop fraction (spec section 6.4).
        target = int(image_size + pad) if pad > 1 else int(image_size / pad)
        offset = (target - image_size + 1) // 2
        image = resize(decode_image(image), target)
        image = image[offset : offset + image_size, offset : offset + image_size, :]
    return normalize(tf.ensure_shape(image, [image_size, image_size, 3]))

"""MixUp and CutMix on batches of example pairs, as the original NFNet pipeline does them.

A mixing step takes a batch of `2 * b` preprocessed examples and returns `b` mixed
examples with three label fields: `labels` (the first example of each pair),
`mix_labels` (its partner) and `ratio` (the weight of `labels`). The loss builds the
target `ratio * onehot(labels) + (1 - ratio) * onehot(mix_labels)` and then applies
label smoothing.

With both MixUp and CutMix (`my_mixup_cutmix` in the original), for `q = b / 2`:

* output rows `[0, q)`: MixUp of inputs `[0, q)` with inputs `[q, 2q)`;
* output rows `[q, 2q)`: CutMix of inputs `[2q, 3q)` with inputs `[3q, 4q)`.

References:
    Zhang, Cisse, Dauphin, Lopez-Paz. mixup: Beyond Empirical Risk Minimization.
    arXiv:1710.09412.
    Yun, Han, Oh, Chun, Choe, Yoo. CutMix: Regularization Strategy to Train Strong
    Classifiers with Localizable Features. arXiv:1905.04899.
"""

from __future__ import annotations

from collections.abc import Mapping

from nfnets_jax.data.tf_setup import tf

__all__ = ["cutmix_masks", "mix_batch", "mixup_ratios"]

# Fields that are per-example identities: mixed like labels (first example + partner).
_PAIRED_FIELDS = (("labels", "mix_labels"), ("index", "mix_index"))


def mixup_ratios(seed: tf.Tensor, alpha: float, num: int | tf.Tensor) -> tf.Tensor:
    """`num` draws of Beta(alpha, alpha), as `X / (X + Y)` with X, Y ~ Gamma(alpha).

    Args:
        seed: [2] integer stateless seed.
        alpha: Beta concentration (0.2 in the NFNet recipe).
        num: number of draws.

    Returns:
        float32 [num] in [0, 1].

    Example:
        >>> r = mixup_ratios(tf.constant([1, 2], tf.int64), 0.2, 8)
        >>> r.shape.as_list(), bool(tf.reduce_all((r >= 0.0) & (r <= 1.0)))
        ([8], True)
    """
    keys = tf.random.experimental.stateless_split(seed, num=2)
    x = tf.random.stateless_gamma([num], keys[0], alpha=alpha, dtype=tf.float32)
    y = tf.random.stateless_gamma([num], keys[1], alpha=alpha, dtype=tf.float32)
    total = x + y
    # Both gammas can underflow to 0 for tiny alpha (probability ~1e-15 at 0.2): 0.5.
    return tf.where(total > 0, x / tf.where(total > 0, total, 1.0), 0.5)


def cutmix_masks(seed: tf.Tensor, num: int | tf.Tensor, height, width) -> tf.Tensor:
    """`num` CutMix box masks of shape [height, width, 1] (1 inside the box).

    The box follows the original (from edward2): centre `(r_y, r_x)` uniform over the
    pixel grid, `L = sqrt(1 - p)` with `p ~ U(0, 1)`, side lengths `r_h = int(L * H)`,
    `r_w = int(L * W)`, and the box rows `[r_y - r_h // 2, r_y + r_h // 2)`, columns
    `[r_x - r_w // 2, r_x + r_w // 2)`, clipped to the image. Its area fraction
    `mean(mask)` is the weight of the first image's label.

    Args:
        seed: [2] integer stateless seed.
        num: number of masks.
        height: image height H.
        width: image width W.

    Returns:
        float32 [num, H, W, 1].
    """
    keys = tf.random.experimental.stateless_split(seed, num=3)
    height = tf.convert_to_tensor(height, tf.int32)
    width = tf.convert_to_tensor(width, tf.int32)
    center_x = tf.random.stateless_uniform([num], keys[0], 0, width, dtype=tf.int32)
    center_y = tf.random.stateless_uniform([num], keys[1], 0, height, dtype=tf.int32)
    length = tf.sqrt(1.0 - tf.random.stateless_uniform([num], keys[2]))
    box_w = tf.cast(length * tf.cast(width, tf.float32), tf.int32)
    box_h = tf.cast(length * tf.cast(height, tf.float32), tf.int32)
    x0 = tf.clip_by_value(center_x - box_w // 2, 0, width)[:, None, None]
    x1 = tf.clip_by_value(center_x + box_w // 2, 0, width)[:, None, None]
    y0 = tf.clip_by_value(center_y - box_h // 2, 0, height)[:, None, None]
    y1 = tf.clip_by_value(center_y + box_h // 2, 0, height)[:, None, None]
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return tf.cast(inside, tf.float32)[..., None]


def _pair(batch: Mapping[str, tf.Tensor], first: slice, second: slice) -> dict:
    out = {}
    for field, partner in _PAIRED_FIELDS:
        if field in batch:
            out[field] = batch[field][first]
            out[partner] = batch[field][second]
    return out


def mix_batch(
    batch: Mapping[str, tf.Tensor],
    seed: tf.Tensor,
    *,
    mixup: bool,
    cutmix: bool,
    mixup_alpha: float = 0.2,
) -> dict[str, tf.Tensor]:
    """Mixes a batch of `2 * b` examples into `b`, the original's way.

    Args:
        batch: `{'images': [2b, H, W, C] float, 'labels': [2b] int, ...}`; an optional
            `'index'` field is paired like the labels (giving `'mix_index'`).
        seed: [2] integer stateless seed of this batch.
        mixup: use MixUp (on the first half of the output if `cutmix` too).
        cutmix: use CutMix (on the second half of the output if `mixup` too).
        mixup_alpha: MixUp Beta concentration.

    Returns:
        `{'images': [b, H, W, C], 'labels': [b], 'mix_labels': [b], 'ratio': [b]}` (plus
        `'index'`/`'mix_index'`); `ratio` is the weight of `labels`.

    Raises:
        ValueError: if neither `mixup` nor `cutmix` is set, or if the static batch size
            is odd (or, with both, not a multiple of 4).

    Example:
        >>> x, y = tf.zeros([8, 16, 16, 3]), tf.range(8)
        >>> mixed = mix_batch({'images': x, 'labels': y}, tf.constant([0, 1]),
        ...                   mixup=True, cutmix=True)
        >>> sorted(mixed), mixed['images'].shape.as_list()
        (['images', 'labels', 'mix_labels', 'ratio'], [4, 16, 16, 3])

        Examples 0-1 are MixUp-ed with 2-3, and 4-5 CutMix-ed with 6-7:

        >>> mixed['labels'].numpy().tolist(), mixed['mix_labels'].numpy().tolist()
        ([0, 1, 4, 5], [2, 3, 6, 7])
    """
    if not (mixup or cutmix):
        raise ValueError("mix_batch needs mixup=True and/or cutmix=True.")
    batch = {key: tf.convert_to_tensor(value) for key, value in batch.items()}
    images = batch["images"]
    total = images.shape[0]
    if total is None:
        raise ValueError("mix_batch needs a static batch size (batch with drop_remainder).")
    parts = 4 if (mixup and cutmix) else 2
    if total % parts:
        raise ValueError(
            f"Mixing takes pairs of examples: a batch of {parts} * k examples is needed "
            f"(got {total}). With both MixUp and CutMix the per-device batch (half the "
            "mixing batch) must be even."
        )
    q = total // parts
    keys = tf.random.experimental.stateless_split(seed, num=2)
    shape = tf.shape(images)
    part_shape = tf.concat([[q], shape[1:]], axis=0)
    outputs = []
    if mixup:
        ratio = mixup_ratios(keys[0], mixup_alpha, q)
        # Full-shape weights: the same float32 products as broadcasting them, faster on CPU.
        r = tf.broadcast_to(ratio[:, None, None, None], part_shape)
        mixed = r * images[:q] + (1.0 - r) * images[q : 2 * q]
        outputs.append(
            {"images": mixed, "ratio": ratio, **_pair(batch, slice(0, q), slice(q, 2 * q))}
        )
    if cutmix:
        start = 2 * q if mixup else 0
        first, second = slice(start, start + q), slice(start + q, start + 2 * q)
        masks = cutmix_masks(keys[1], q, shape[1], shape[2])
        full_masks = tf.broadcast_to(masks, part_shape)
        mixed = full_masks * images[first] + (1.0 - full_masks) * images[second]
        ratio = tf.reduce_mean(masks, axis=[1, 2, 3])
        outputs.append({"images": mixed, "ratio": ratio, **_pair(batch, first, second)})
    if len(outputs) == 1:
        return outputs[0]
    return {key: tf.concat([outputs[0][key], outputs[1][key]], axis=0) for key in outputs[0]}

"""Classification targets, losses and accuracy metrics.

The NFNet recipe (arXiv:2102.06171, and DeepMind's `experiment.py`) builds targets as:
one-hot labels, mixed with the MixUp/CutMix partner by the example's `ratio`, then label
smoothing `y <- (1 - eps) * y + eps / K` applied *after* mixing. The loss is softmax
cross-entropy in float32, averaged over the examples of the (per-device) batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def make_targets(
    labels: jax.Array,
    num_classes: int,
    *,
    mix_labels: jax.Array | None = None,
    ratio: jax.Array | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Soft targets: one-hot, mixed with a partner label, then smoothed.

    `y = ratio * onehot(labels) + (1 - ratio) * onehot(mix_labels)`, then
    `y = (1 - label_smoothing) * y + label_smoothing / num_classes`.

    Args:
      labels: integer labels, any batch shape.
      num_classes: number of classes K.
      mix_labels: labels of the MixUp/CutMix partners (same shape), or None.
      ratio: weight of `labels` in the mix (same shape), required with `mix_labels`.
      label_smoothing: smoothing mass spread uniformly over all K classes.

    Returns:
      float32 targets of shape `labels.shape + (num_classes,)`, each summing to 1.

    Example:
      >>> make_targets(jnp.array([0]), 4, label_smoothing=0.1)
      Array([[0.925, 0.025, 0.025, 0.025]], dtype=float32)
    """
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if mix_labels is not None:
        if ratio is None:
            raise ValueError("make_targets: `mix_labels` needs the mixing `ratio` too.")
        ratio = jnp.asarray(ratio, jnp.float32)[..., None]
        partner = jax.nn.one_hot(mix_labels, num_classes, dtype=jnp.float32)
        targets = ratio * targets + (1.0 - ratio) * partner
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    return targets


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy `-sum(targets * log_softmax(logits))` in float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * log_probs, axis=-1)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where `labels` is among the `k` largest logits, else 0.0 (per example)."""
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    return jnp.any(top == labels[..., None], axis=-1).astype(jnp.float32)

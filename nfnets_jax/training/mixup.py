"""Bag-of-Tricks mixup inside the training step: one lambda per batch, reversed pairing.

For a per-device batch of `B` examples and `lambda ~ Beta(alpha, alpha)` (one draw per
batch), example `n` is mixed with example `B - 1 - n`::

    x_n <- lambda * x_n + (1 - lambda) * x_{B-1-n}
    y_n <- lambda * y_n + (1 - lambda) * y_{B-1-n}

and only the mixed batch is trained on. This is GluonCV's `train_imagenet.py` recipe for
Bag of Tricks (He et al., arXiv:1812.01187 section 5.4; baselines spec 4.4): alpha = 0.2,
targets label-smoothed first, then mixed. Every image of the batch is used (each one
appears in two mixed examples), so one epoch of data is one epoch of steps.

Why not the input pipeline's MixUp (`augment_name='mixup'`)? That is the NFNet
original's: a fresh lambda per example, and each mixed example consumes two new images,
so a step reads `2B` images and "epochs" count twice the data. The Bag-of-Tricks
preset reproduces GluonCV's numbers (200 epochs with mixup), so it mixes here, on
device, after the pipeline, where the teacher of a distillation run sees exactly the
same mixed images.

References:
    Zhang, Cisse, Dauphin, Lopez-Paz. mixup: Beyond Empirical Risk Minimization.
    arXiv:1710.09412.
    He et al. Bag of Tricks for Image Classification with Convolutional Neural Networks.
    arXiv:1812.01187.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["batch_mixup", "mix_reversed", "sample_mixup_lambda"]

# The Bag-of-Tricks / GluonCV mixup concentration (`--mixup-alpha 0.2`).
BOT_MIXUP_ALPHA = 0.2


def sample_mixup_lambda(rng: jax.Array, alpha: float, shape: tuple[int, ...] = ()) -> jax.Array:
    """Draws `lambda ~ Beta(alpha, alpha)` (float32).

    Example:
        >>> lam = sample_mixup_lambda(jax.random.key(0), 0.2)
        >>> bool(0.0 <= lam <= 1.0)
        True
    """
    if not alpha > 0:
        raise ValueError(f"The mixup alpha must be > 0, got {alpha}.")
    return jax.random.beta(rng, alpha, alpha, shape, dtype=jnp.float32)


def mix_reversed(x: jax.Array, lam: jax.Array) -> jax.Array:
    """`lam * x + (1 - lam) * x[::-1]` along the batch axis (axis 0), in x's dtype.

    Example:
        >>> mix_reversed(jnp.eye(3), 0.7)
        Array([[0.7, 0. , 0.3],
               [0. , 1. , 0. ],
               [0.3, 0. , 0.7]], dtype=float32)
    """
    lam = jnp.asarray(lam, jnp.float32)
    mixed = lam * x.astype(jnp.float32) + (1.0 - lam) * x[::-1].astype(jnp.float32)
    return mixed.astype(x.dtype)


def batch_mixup(
    rng: jax.Array, images: jax.Array, targets: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixes a batch with its reverse using one `lambda ~ Beta(alpha, alpha)`.

    Args:
        rng: key for the draw.
        images: `[B, H, W, C]` images.
        targets: `[B, K]` target distributions (already label-smoothed).
        alpha: Beta concentration (0.2 in Bag of Tricks).

    Returns:
        `(mixed images, mixed targets, lambda)`; targets still sum to one.

    Example:
        >>> x, y = jnp.ones((4, 2, 2, 3)), jax.nn.one_hot(jnp.arange(4), 4)
        >>> _, mixed, lam = batch_mixup(jax.random.key(0), x, y, 0.2)
        >>> bool(jnp.allclose(mixed.sum(-1), 1.0))
        True
    """
    if images.shape[0] != targets.shape[0]:
        raise ValueError(f"batch_mixup: {images.shape[0]} images but {targets.shape[0]} targets.")
    lam = sample_mixup_lambda(rng, alpha)
    return mix_reversed(images, lam), mix_reversed(targets, lam), lam

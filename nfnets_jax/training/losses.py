"""Classification targets, losses and accuracy metrics.

The NFNet recipe (arXiv:2102.06171, and DeepMind's `experiment.py`) builds targets as:
one-hot labels, mixed with the MixUp/CutMix partner by the example's `ratio`, then label
smoothing `y <- (1 - eps) * y + eps / K` applied *after* mixing. The loss is softmax
cross-entropy in float32, averaged over the examples of the (per-device) batch.

Two label-smoothing forms (`label_smoothing_form`):

* `'uniform'` (NFNet, GluonCV): `(1 - eps) y + eps / K`, i.e. `1 - eps + eps/K` on the
  true class and `eps / K` elsewhere;
* `'paper'` (Szegedy et al. 2016 as written in Bag of Tricks, arXiv:1812.01187 section
  5.2, and Graphcore): `1 - eps` on the true class and `eps / (K - 1)` elsewhere, i.e.
  `(1 - eps) y + eps / (K - 1) (1 - y)`.

Both are affine maps of the one-hot vector whose weights sum to one, so mixing before
or after smoothing gives the same targets: "smooth, then mix" (GluonCV) equals the
original's "mix, then smooth".

Knowledge distillation (Hinton et al., arXiv:1503.02531; Bag of Tricks section 5.3) adds
a temperature-`T` soft term against a fixed teacher's logits, see
:func:`distillation_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

SMOOTHING_FORMS = ("uniform", "paper")
SOFT_LOSSES = ("cross_entropy", "kl")


def make_targets(
    labels: jax.Array,
    num_classes: int,
    *,
    mix_labels: jax.Array | None = None,
    ratio: jax.Array | None = None,
    label_smoothing: float = 0.0,
    label_smoothing_form: str = "uniform",
) -> jax.Array:
    """Soft targets: one-hot, mixed with a partner label, then smoothed.

    `y = ratio * onehot(labels) + (1 - ratio) * onehot(mix_labels)`, then
    `y = (1 - eps) * y + eps / num_classes` (`'uniform'` form) or
    `y = (1 - eps) * y + eps / (num_classes - 1) * (1 - y)` (`'paper'` form).

    Args:
      labels: integer labels, any batch shape.
      num_classes: number of classes K.
      mix_labels: labels of the MixUp/CutMix partners (same shape), or None.
      ratio: weight of `labels` in the mix (same shape), required with `mix_labels`.
      label_smoothing: the smoothing mass `eps`.
      label_smoothing_form: `'uniform'` (spread over all K classes) or `'paper'` (spread
        over the K - 1 other classes).

    Returns:
      float32 targets of shape `labels.shape + (num_classes,)`, each summing to 1.

    Example:
      >>> make_targets(jnp.array([0]), 4, label_smoothing=0.1).round(6)  # 0.9 + 0.1 / 4
      Array([[0.925, 0.025, 0.025, 0.025]], dtype=float32)
      >>> make_targets(jnp.array([0]), 3, label_smoothing=0.1, label_smoothing_form='paper')
      Array([[0.9 , 0.05, 0.05]], dtype=float32)
    """
    if label_smoothing_form not in SMOOTHING_FORMS:
        raise ValueError(
            f"label_smoothing_form must be one of {SMOOTHING_FORMS}, got {label_smoothing_form!r}."
        )
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if mix_labels is not None:
        if ratio is None:
            raise ValueError("make_targets: `mix_labels` needs the mixing `ratio` too.")
        ratio = jnp.asarray(ratio, jnp.float32)[..., None]
        partner = jax.nn.one_hot(mix_labels, num_classes, dtype=jnp.float32)
        targets = ratio * targets + (1.0 - ratio) * partner
    if label_smoothing and label_smoothing_form == "uniform":
        targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    elif label_smoothing:
        if num_classes < 2:
            raise ValueError("The 'paper' label smoothing form needs at least 2 classes.")
        off = label_smoothing / (num_classes - 1)
        targets = (1.0 - label_smoothing) * targets + off * (1.0 - targets)
    return targets


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy `-sum(targets * log_softmax(logits))` in float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * log_probs, axis=-1)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where `labels` is among the `k` largest logits, else 0.0 (per example)."""
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    return jnp.any(top == labels[..., None], axis=-1).astype(jnp.float32)


def distillation_loss(
    logits: jax.Array,
    targets: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float,
    hard_weight: float = 1.0,
    soft_weight: float = 1.0,
    soft_loss: str = "cross_entropy",
) -> jax.Array:
    r"""Per-example knowledge-distillation loss against a fixed teacher.

    .. math::

        \ell = h \, \mathrm{CE}(p, \mathrm{softmax}(z))
              + s \, T^2 \, \mathrm{CE}(\mathrm{softmax}(r/T), \mathrm{softmax}(z/T))

    with `z` the student logits, `r` the teacher logits and `p` the (smoothed, mixed)
    targets. Bag of Tricks uses `h = s = 1`, `T = 20`; GluonCV's
    `DistillationSoftmaxCrossEntropyLoss` is `h = s = 0.5` (exactly half). With
    `soft_loss='kl'` the soft term is `KL(softmax(r/T) || softmax(z/T))`, which differs
    from the cross-entropy by the teacher's entropy: the same gradient, a smaller value.
    No gradient flows into `teacher_logits`.

    Args:
      logits: student logits `[..., K]`.
      targets: target distributions `[..., K]` (from :func:`make_targets`).
      teacher_logits: teacher logits `[..., K]` on the same inputs.
      temperature: `T > 0`.
      hard_weight: weight `h` of the cross-entropy with the targets.
      soft_weight: weight `s` of the `T^2`-scaled soft term.
      soft_loss: `'cross_entropy'` or `'kl'`.

    Returns:
      float32 per-example losses, shape `logits.shape[:-1]`.

    Example:
      >>> z, r = jnp.array([[2.0, 1.0, 0.1]]), jnp.array([[1.0, 3.0, 0.5]])
      >>> y = make_targets(jnp.array([0]), 3)
      >>> round(float(distillation_loss(z, y, r, temperature=20.0)[0]), 3)
      440.036
    """
    if soft_loss not in SOFT_LOSSES:
        raise ValueError(f"soft_loss must be one of {SOFT_LOSSES}, got {soft_loss!r}.")
    if not temperature > 0:
        raise ValueError(f"The distillation temperature must be > 0, got {temperature}.")
    hard = softmax_cross_entropy(logits, targets)
    teacher_log_probs = jax.nn.log_softmax(
        jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1
    )
    teacher_probs = jnp.exp(teacher_log_probs)
    student_log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    log_ratio = (
        student_log_probs
        if soft_loss == "cross_entropy"
        else (student_log_probs - teacher_log_probs)
    )
    soft = -jnp.sum(teacher_probs * log_ratio, axis=-1)
    return hard_weight * hard + soft_weight * temperature**2 * soft


def make_distillation_loss_fn(
    *,
    temperature: float,
    hard_weight: float = 1.0,
    soft_weight: float = 1.0,
    soft_loss: str = "cross_entropy",
) -> Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], jax.Array]:
    """:func:`distillation_loss` as a `loss_fn(logits, targets, batch)` training-step hook.

    The step puts the teacher's logits on the (possibly mixed) images in
    `batch['teacher_logits']` (see `make_train_step(teacher_fn=...)`).

    Example:
      >>> fn = make_distillation_loss_fn(temperature=1.0)
      >>> z = jnp.array([[2.0, 1.0, 0.1]])
      >>> float(fn(z, jax.nn.softmax(z), {'teacher_logits': z})[0]) > 0
      True
    """
    distillation_loss(  # validate the arguments once, at build time
        jnp.zeros((1, 2)),
        jnp.full((1, 2), 0.5),
        jnp.zeros((1, 2)),
        temperature=temperature,
        hard_weight=hard_weight,
        soft_weight=soft_weight,
        soft_loss=soft_loss,
    )

    def loss_fn(logits, targets, batch):
        if "teacher_logits" not in batch:
            raise ValueError(
                "The distillation loss needs batch['teacher_logits']: build the training "
                "step with teacher_fn=... (the loop does this when distill.teacher_checkpoint "
                "is set)."
            )
        return distillation_loss(
            logits,
            targets,
            batch["teacher_logits"],
            temperature=temperature,
            hard_weight=hard_weight,
            soft_weight=soft_weight,
            soft_loss=soft_loss,
        )

    return loss_fn

"""The NFNet optimizer recipe and its alternatives, built from one config.

``build_optimizer(opt_config, params, *, batch_size, steps_per_epoch, total_steps)`` is
the one way from an optimizer config to ``(tx, lr_schedule)``; ``nfnet_optimizer_config()``
is the NFNet config (pass keyword overrides, or edit the ``ConfigDict`` it returns).

The recipe (``SGD_AGC`` of the original, section 4.2 of ``../shared/spec/nfnets.md``) is,
per step with gradients ``g`` and parameters ``p``:

1. AGC with ``clipping=0.01``, ``eps=1e-3`` on every parameter except the classifier weight;
2. coupled weight decay ``g += 2e-5 * p`` on everything except gains and biases;
3. PyTorch-style Nesterov momentum 0.9, dampening 0:
   ``buf = 0.9 * buf + g``; ``g = g + 0.9 * buf``;
4. ``p -= lr(t) * g`` with ``lr`` = warmup-cosine to ``0.1 * batch / 256`` evaluated at the
   step count *before* the update (the first update uses ``lr(0) = 0``).

It is one ``optax.chain``; the momentum buffer and step count live in its state.

References:
    Brock et al., High-Performance Large-Scale Image Recognition Without Normalization,
    arXiv:2102.06171. Sutskever et al., On the importance of initialization and momentum in
    deep learning, ICML 2013 (Nesterov momentum). Loshchilov & Hutter, Decoupled Weight
    Decay Regularization, arXiv:1711.05101 (AdamW). You et al., Large Batch Optimization for
    Deep Learning, arXiv:1904.00962 (LAMB) and Large Batch Training of Convolutional
    Networks, arXiv:1708.03888 (LARS).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from typing import Any

import ml_collections
import optax

from nfnets_jax.optim import masks, schedules
from nfnets_jax.optim.agc import adaptive_grad_clip

__all__ = [
    "IMAGENET_TRAIN_EXAMPLES",
    "OPTIMIZERS",
    "build_optimizer",
    "nfnet_optimizer_config",
]

# ImageNet-1k (ILSVRC 2012) training split size, used for steps per epoch.
IMAGENET_TRAIN_EXAMPLES = 1_281_167
# Linear scaling rule lr = base_lr * batch / 256 (Goyal et al., arXiv:1706.02677), as in
# the original's lr_scale_by_bs.
_LR_REFERENCE_BATCH = 256

# Keys every optimizer reads, with defaults (None marks a required key).
_COMMON_KEYS: dict[str, Any] = {
    "name": None,
    "base_lr": None,
    "lr_scale_by_bs": False,
    "schedule": None,
    "weight_decay": 0.0,
    "no_decay_patterns": masks.NFNET_NO_DECAY_PATTERNS,
    "clipping": None,
    "eps": 1e-3,
    "no_clip_patterns": masks.NFNET_NO_CLIP_PATTERNS,
    "allow_unmatched_patterns": False,
}
# Optimizer-specific keys and their defaults. A key that belongs to another optimizer is
# ignored (so switching `name` in the NFNet config does not trip over `momentum`); a key
# no optimizer knows is an error.
_OPTIMIZER_KEYS: dict[str, dict[str, Any]] = {
    "sgd_agc": {"momentum": 0.9, "nesterov": True},
    "sgd": {"momentum": 0.9, "nesterov": True},
    # optax defaults: Adam's eps 1e-8 and LAMB's 1e-6.
    "adamw": {"b1": 0.9, "b2": 0.999, "adam_eps": 1e-8},
    "lamb": {"b1": 0.9, "b2": 0.999, "adam_eps": 1e-6},
    # You et al. 2017 use a trust coefficient of 0.001.
    "lars": {"momentum": 0.9, "nesterov": False, "trust_coefficient": 0.001, "lars_eps": 0.0},
}
OPTIMIZERS: tuple[str, ...] = tuple(_OPTIMIZER_KEYS)


def nfnet_optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The NFNet optimizer config (experiment_nfnets.py and the paper), for build_optimizer.

    Without arguments: SGD + AGC, base lr 0.1 scaled by batch/256, Nesterov momentum 0.9,
    coupled weight decay 2e-5, clipping 0.01, eps 1e-3, warmup-cosine schedule (5 warmup
    epochs from 0, down to 0) and the NFNet parameter groups. Keyword overrides are
    applied with ``ConfigDict.update``, so a ``schedule`` dict is merged key by key into
    the NFNet schedule (assign ``cfg.schedule = dict(name=...)`` to replace it). Keys are
    checked by :func:`build_optimizer`.

    Args:
        **overrides: ``opt_config`` keys to change, e.g. ``clipping=0.02``.

    Returns:
        An unlocked ``ConfigDict``.

    Example:
        >>> cfg = nfnet_optimizer_config(clipping=0.02, schedule=dict(warmup_epochs=1.0))
        >>> cfg.name, cfg.clipping, cfg.schedule.name, cfg.schedule.warmup_epochs
        ('sgd_agc', 0.02, 'warmup_cosine', 1.0)
    """
    config = ml_collections.ConfigDict(
        dict(
            name="sgd_agc",
            base_lr=0.1,
            lr_scale_by_bs=True,
            momentum=0.9,
            nesterov=True,
            weight_decay=2e-5,
            clipping=0.01,
            eps=1e-3,
            schedule=dict(name="warmup_cosine", warmup_epochs=5.0, start_val=0.0, min_val=0.0),
            no_decay_patterns=list(masks.NFNET_NO_DECAY_PATTERNS),
            no_clip_patterns=list(masks.NFNET_NO_CLIP_PATTERNS),
            allow_unmatched_patterns=False,
        )
    )
    config.update(overrides)
    return config


def _number(name: str, value: Any, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"opt_config.{name} must be a number, got {value!r}.")
    if value < minimum or (maximum is not None and value >= maximum):
        upper = "" if maximum is None else f" and < {maximum}"
        raise ValueError(f"opt_config.{name} must be >= {minimum}{upper}, got {value}.")
    return float(value)


def _read_config(opt_config: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
    if not hasattr(opt_config, "items"):
        raise ValueError(f"opt_config must be a dict or ConfigDict, got {type(opt_config)}.")
    values = dict(opt_config.items())
    name = values.get("name")
    if name not in _OPTIMIZER_KEYS:
        raise ValueError(
            f"opt_config.name: unknown optimizer {name!r}; choose one of {OPTIMIZERS}."
        )
    all_keys = sorted(set(_COMMON_KEYS).union(*_OPTIMIZER_KEYS.values()))
    unknown = sorted(set(values) - set(all_keys))
    if unknown:
        close = {k: difflib.get_close_matches(k, all_keys, n=1) for k in unknown}
        hints = ", ".join(f"{m[0]!r} for {k!r}" for k, m in close.items() if m)
        hint = f" (did you mean {hints}?)" if hints else ""
        mine = sorted(set(_COMMON_KEYS) | set(_OPTIMIZER_KEYS[name]))
        raise ValueError(
            f"opt_config: unknown key(s) {unknown} for optimizer {name!r}{hint}; it reads {mine}."
        )
    defaults = {**_COMMON_KEYS, **_OPTIMIZER_KEYS[name]}
    missing = sorted(k for k, d in defaults.items() if d is None and values.get(k) is None)
    missing = [k for k in missing if k != "clipping"]
    if missing:
        raise ValueError(f"opt_config: missing required key(s) {missing} for {name!r}.")
    return {k: values.get(k, d) for k, d in defaults.items()}


def build_optimizer(
    opt_config: Mapping[str, Any] | ml_collections.ConfigDict,
    params: Any,
    *,
    batch_size: int,
    steps_per_epoch: float,
    total_steps: int,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer and its learning-rate schedule from a config.

    ``opt_config`` keys (see :func:`nfnet_optimizer_config` for the NFNet values):

    - ``name``: one of ``sgd_agc``, ``sgd`` (no AGC), ``adamw``, ``lamb``, ``lars``.
    - ``base_lr``, ``lr_scale_by_bs`` (peak lr ``base_lr * batch_size / 256`` when True),
      ``schedule`` (a :func:`~nfnets_jax.optim.schedules.build_schedule` config).
    - ``weight_decay`` and ``no_decay_patterns`` (regexes of parameters without decay).
      For ``sgd``/``sgd_agc`` the decay is coupled (added to the clipped gradient, as in
      the original); ``adamw``/``lamb`` decay decoupled (``p -= lr * wd * p``); ``lars``
      adds it before the trust ratio, which applies to the same decayed parameters.
    - ``clipping``, ``eps``, ``no_clip_patterns``: AGC, applied first. Required (> 0) for
      ``sgd_agc``, must be None for ``sgd``, optional (None = off) for the others.
    - ``allow_unmatched_patterns``: accept patterns that match no parameter (default
      False: a typo raises instead of silently changing the groups).
    - ``momentum``, ``nesterov`` (``sgd*``, ``lars``); ``b1``, ``b2``, ``adam_eps``
      (``adamw``, ``lamb``); ``trust_coefficient``, ``lars_eps`` (``lars``). Keys of
      another optimizer are ignored (switching ``name`` is enough); a key no optimizer
      reads raises ``ValueError`` naming it and the closest known key.

    Masks are built once here, from the paths of ``params``. The NFNet training length
    is ``(examples * epochs) // batch_size`` steps (112,602 for ImageNet, 360 epochs,
    batch 4096) with ``steps_per_epoch = examples / batch_size``, as in the original.

    Args:
        opt_config: the optimizer config.
        params: the parameter tree (arrays or ``jax.ShapeDtypeStruct``; only paths are
            read), unreplicated or with a leading device axis.
        batch_size: global batch size (for ``lr_scale_by_bs``).
        steps_per_epoch: training examples / global batch, may be fractional.
        total_steps: training length in steps.

    Returns:
        ``(tx, lr_schedule)``: the optax transformation and ``step -> lr`` for logging.

    Raises:
        ValueError: unknown names or keys, missing keys, invalid values, or patterns
            that match no parameter.

    Example:
        The NFNet recipe on ImageNet at batch 4096 for 360 epochs (pass overrides to
        ``nfnet_optimizer_config``, e.g. ``clipping=0.02``, for a variant):

        >>> import jax.numpy as jnp
        >>> params = {'NFNet/~/conv': {'w': jnp.ones((3, 3, 2, 4)), 'bias': jnp.zeros(4)},
        ...           'NFNet/~/linear': {'w': jnp.ones((4, 10)), 'b': jnp.zeros(10)}}
        >>> n = IMAGENET_TRAIN_EXAMPLES
        >>> tx, lr = build_optimizer(nfnet_optimizer_config(), params, batch_size=4096,
        ...                          steps_per_epoch=n / 4096, total_steps=n * 360 // 4096)
        >>> round(float(lr(1)), 7), round(float(lr(1564)), 4)
        (0.0010231, 1.6)
    """
    cfg = _read_config(opt_config)
    name = cfg["name"]
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise ValueError(f"build_optimizer: batch_size must be an int, got {batch_size!r}.")
    if batch_size <= 0:
        raise ValueError(f"build_optimizer: batch_size must be positive, got {batch_size}.")
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral):
        raise ValueError(f"build_optimizer: total_steps must be an int, got {total_steps!r}.")
    if total_steps <= 0:
        raise ValueError(f"build_optimizer: total_steps must be positive, got {total_steps}.")

    base_lr = _number("base_lr", cfg["base_lr"])
    max_lr = base_lr * batch_size / _LR_REFERENCE_BATCH if cfg["lr_scale_by_bs"] else base_lr
    lr = schedules.build_schedule(
        cfg["schedule"],
        max_val=max_lr,
        steps_per_epoch=steps_per_epoch,
        total_steps=int(total_steps),
    )

    allow_unmatched = bool(cfg["allow_unmatched_patterns"])
    weight_decay = cfg["weight_decay"]
    weight_decay = 0.0 if weight_decay is None else _number("weight_decay", weight_decay)
    decay_mask = masks.mask_from_patterns(
        params,
        cfg["no_decay_patterns"] or (),
        invert=True,
        allow_unmatched=allow_unmatched,
        what="opt_config.no_decay_patterns",
    )

    clipping = cfg["clipping"]
    if name == "sgd_agc" and clipping is None:
        raise ValueError(
            "opt_config.name='sgd_agc' needs opt_config.clipping (0.01 for NFNets); for "
            "SGD without clipping use name='sgd'."
        )
    if name == "sgd" and clipping is not None:
        raise ValueError(
            f"opt_config.name='sgd' does not clip but opt_config.clipping={clipping}; set "
            "clipping=None, or use name='sgd_agc'."
        )
    agc = None
    if clipping is not None:
        clipping = _number("clipping", clipping)
        if clipping == 0:
            raise ValueError("opt_config.clipping must be > 0, or None to turn AGC off.")
        clip_mask = masks.mask_from_patterns(
            params,
            cfg["no_clip_patterns"] or (),
            invert=True,
            allow_unmatched=allow_unmatched,
            what="opt_config.no_clip_patterns",
        )
        agc = optax.masked(adaptive_grad_clip(clipping, _number("eps", cfg["eps"])), clip_mask)

    if name in ("sgd", "sgd_agc"):
        # g += wd * p (coupled); buf = mu * buf + g; g = g + mu * buf (Nesterov) or buf.
        momentum = _number("momentum", cfg["momentum"] or 0.0, maximum=1.0)
        parts = []
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
        if momentum:
            parts.append(optax.trace(decay=momentum, nesterov=bool(cfg["nesterov"])))
        tx = optax.chain(*parts, optax.scale_by_learning_rate(lr))
    elif name in ("adamw", "lamb"):
        make = optax.adamw if name == "adamw" else optax.lamb
        tx = make(
            lr,
            b1=_number("b1", cfg["b1"], maximum=1.0),
            b2=_number("b2", cfg["b2"], maximum=1.0),
            eps=_number("adam_eps", cfg["adam_eps"]),
            weight_decay=weight_decay,
            mask=decay_mask,
        )
    else:  # lars
        tx = optax.lars(
            lr,
            weight_decay=weight_decay,
            weight_decay_mask=decay_mask,
            trust_coefficient=_number("trust_coefficient", cfg["trust_coefficient"]),
            eps=_number("lars_eps", cfg["lars_eps"]),
            trust_ratio_mask=decay_mask,
            momentum=_number("momentum", cfg["momentum"] or 0.0, maximum=1.0),
            nesterov=bool(cfg["nesterov"]),
        )
    if agc is not None:
        tx = optax.chain(agc, tx)
    return tx, lr

"""Optimisation for NFNets: Adaptive Gradient Clipping, parameter groups, schedules, EMA.

``adaptive_grad_clip`` is an optax transformation; ``build_optimizer`` is the one way from
an optimizer config to the chain: the NFNet recipe (AGC -> coupled weight decay ->
Nesterov SGD with a warmup-cosine schedule) from ``nfnet_optimizer_config(**overrides)``, or
one of its alternatives (``OPTIMIZERS``); ``ema_update`` is the original EMA.
"""

from nfnets_jax.optim.agc import (
    AdaptiveGradClipState,
    adaptive_grad_clip,
    default_unit_axes,
    unitwise_clip,
    unitwise_norm,
)
from nfnets_jax.optim.ema import NFNET_EMA_DECAY, ema_decay, ema_update
from nfnets_jax.optim.masks import (
    NFNET_NO_CLIP_PATTERNS,
    NFNET_NO_DECAY_PATTERNS,
    compile_patterns,
    labels_from_patterns,
    mask_from_patterns,
    path_to_str,
    tree_paths,
)
from nfnets_jax.optim.optimizer import (
    IMAGENET_TRAIN_EXAMPLES,
    OPTIMIZERS,
    build_optimizer,
    nfnet_optimizer_config,
)
from nfnets_jax.optim.schedules import (
    SCHEDULES,
    build_schedule,
    constant,
    cosine_decay,
    warmup_cosine_decay,
    warmup_exp_decay,
    warmup_step_decay,
)

__all__ = [
    "IMAGENET_TRAIN_EXAMPLES",
    "NFNET_EMA_DECAY",
    "NFNET_NO_CLIP_PATTERNS",
    "NFNET_NO_DECAY_PATTERNS",
    "OPTIMIZERS",
    "SCHEDULES",
    "AdaptiveGradClipState",
    "adaptive_grad_clip",
    "build_optimizer",
    "build_schedule",
    "compile_patterns",
    "constant",
    "cosine_decay",
    "default_unit_axes",
    "ema_decay",
    "ema_update",
    "labels_from_patterns",
    "mask_from_patterns",
    "nfnet_optimizer_config",
    "path_to_str",
    "tree_paths",
    "unitwise_clip",
    "unitwise_norm",
    "warmup_cosine_decay",
    "warmup_exp_decay",
    "warmup_step_decay",
]

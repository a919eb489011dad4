"""NFNet-F0 ... F7 and F0+ ... F7+ on ImageNet: DeepMind's recipe (arXiv:2102.06171).

Run (one TPU v3-32 pod slice or 8+ GPUs; 112,602 steps of 4096 images):

    python -m experiments.train --config=nfnet_f0 --workdir=$WORKDIR

Recipe (spec section 4.2): batch 4096, 360 epochs, SGD with Nesterov momentum 0.9, lr
0.1 * 4096/256 = 1.6 with 5 warmup epochs from 0 then cosine to 0, AGC clipping 0.01
(not on the classifier weight), weight decay 2e-5 (not on gains/biases), EMA 0.99999,
label smoothing 0.1, stochastic depth 0.25, per-variant dropout, MixUp (first half of each
device batch) + CutMix (second half) then RandAugment, bfloat16 compute, evaluation of raw
and EMA weights with `resize_crop_32` at the variant's test size.

Expected ImageNet top-1 (paper Table 3, mean of 3 seeds): F0 83.6, F1 84.7, F2 85.1,
F3 85.7, F4 85.9, F5 86.0. F6 (86.5) was trained with SAM, which this recipe does not use.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from nfnets_jax.models import nfnet

# RandAugment level per variant: layers x 100 + magnitude (spec section 1.1; the '+'
# variants are missing from the original table and reuse their base variant's level).
RANDAUGMENT_LEVEL = {
    "F0": 405,
    "F1": 410,
    "F2": 410,
    "F3": 415,
    "F4": 415,
    "F5": 415,
    "F6": 415,
    "F7": 415,
}


def get_config(variant: str = "F0") -> ml_collections.ConfigDict:
    """The NFNet recipe for `variant` ('F0'...'F7', 'F0+'...'F7+')."""
    variant = variant.upper()
    if variant not in nfnet.nfnet_params:
        raise ValueError(
            f"Unknown NFNet variant {variant!r}: use one of {', '.join(nfnet.nfnet_params)}."
        )
    params = nfnet.nfnet_params[variant]
    config = common.base_config()
    config.model = "NFNet"
    config.model_kwargs = ml_collections.ConfigDict(
        dict(
            variant=variant,
            width=1.0,
            se_ratio=0.5,
            alpha=0.2,
            stochdepth_rate=0.25,
            drop_rate=params["drop_rate"],
            activation="gelu",
            final_conv_mult=2,
            use_two_convs=True,
            conv_impl="auto",  # CPU: groups split, matrix products ('patches'); native elsewhere
        )
    )
    level = RANDAUGMENT_LEVEL[variant.rstrip("+")]
    config.dataset.update(
        dict(
            name="imagenet2012",
            image_size=params["train_imsize"],
            eval_image_size=params["test_imsize"],
            train_preproc="inception_crop",
            eval_preproc="resize_crop_32",
            augment_name=f"cutmix_mixup_randaugment_{level}",
            augment_before_mix=False,
        )
    )
    config.train_batch_size = 4096
    config.eval_batch_size = 1024
    config.num_epochs = 360.0
    config.bfloat16 = True
    config.use_ema = True
    config.ema_decay = 0.99999
    config.label_smoothing = 0.1
    config.log_every_steps = 100
    config.eval_every_steps = 5000
    config.lock()
    return config

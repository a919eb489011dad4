"""NF-RegNets B0 ... B8 on ImageNet: DeepMind's `experiment_nf_regnets.py` recipe.

Run:

    python -m experiments.train --config=nf_regnet_b0 --workdir=$WORKDIR

Recipe (spec section 1.2): batch 1024, 360 epochs, plain SGD with Nesterov momentum 0.9
(no AGC), lr 0.4 *not* scaled by batch size, 5 warmup epochs from 0 then cosine to 0.001,
weight decay 5e-5 + 1e-5 * level (B0 5e-5 ... B5 1e-4; the original table stops at B5 and
raises for B6-B8; we continue the rule), label smoothing 0.1, EMA 0.99999, MixUp + CutMix
applied after RandAugment-free per-example preprocessing (`augment_before_mix=True`),
float32, `crop_resize` evaluation at the variant's test size.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from nfnets_jax.models import nf_regnet


def get_config(variant: str = "B0") -> ml_collections.ConfigDict:
    """The NF-RegNet recipe for `variant` ('B0' ... 'B8')."""
    variant = variant.upper()
    if variant not in nf_regnet.nf_regnet_params:
        raise ValueError(
            f"Unknown NF-RegNet variant {variant!r}: use one of "
            f"{', '.join(nf_regnet.nf_regnet_params)}."
        )
    params = nf_regnet.nf_regnet_params[variant]
    level = int(variant[1:])
    config = common.base_config()
    config.model = "NFRegNet"
    config.model_kwargs = ml_collections.ConfigDict(
        dict(
            variant=variant,
            width=0.75,
            expansion=2.25,
            se_ratio=0.5,
            alpha=0.2,
            stochdepth_rate=0.1,
            drop_rate=params["drop_rate"],
            activation="silu",
            conv_impl="auto",  # CPU: groups split, matrix products ('patches'); native elsewhere
        )
    )
    config.dataset.update(
        dict(
            image_size=params["train_imsize"],
            eval_image_size=params["test_imsize"],
            train_preproc="inception_crop",
            eval_preproc="crop_resize",
            augment_name="mixup_cutmix",
            augment_before_mix=True,
        )
    )
    config.train_batch_size = 1024
    config.eval_batch_size = 1000
    config.num_epochs = 360.0
    config.optimizer.update(
        dict(
            name="sgd",
            base_lr=0.4,
            lr_scale_by_bs=False,
            weight_decay=5e-5 + 1e-5 * level,
            clipping=None,  # plain SGD: no AGC in the NF-RegNet recipe
        )
    )
    config.optimizer.schedule.min_val = 0.001
    config.bfloat16 = False
    config.eval_every_steps = 5000
    config.lock()
    return config

"""NF-ResNets (arXiv:2101.08692) on ImageNet with the NFNet-paper AGC recipe.

Run:

    python -m experiments.train --config=nf_resnet50 --workdir=$WORKDIR

DeepMind's repository ships no NF-ResNet experiment (spec section 1.3). This preset is
our choice, following the NFNet paper's AGC ablations for NF-ResNets (arXiv:2102.06171,
section 4.1 and Figure 2): batch 1024, 90 epochs, SGD with Nesterov momentum 0.9, lr
0.1 * B/256 with 5 warmup epochs and cosine decay, AGC clipping 0.01 (not on the
classifier weight), weight decay 5e-5, label smoothing 0.1, stochastic depth 0.1,
dropout 0.25, EMA, inception crop + flip at 224 px, `crop_resize` evaluation at 224 px.
The papers report NF-ResNet-50 close to BN-ResNet-50 (about 77-78% top-1 at 224 px).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from nfnets_jax.models import nf_resnet


def get_config(variant: str = "ResNet50") -> ml_collections.ConfigDict:
    """The NF-ResNet recipe for `variant` ('ResNet26' ... 'ResNet288')."""
    if variant not in nf_resnet.nf_resnet_params:
        raise ValueError(
            f"Unknown NF-ResNet variant {variant!r}: use one of "
            f"{', '.join(nf_resnet.nf_resnet_params)}."
        )
    config = common.base_config()
    config.model = "NFResNet"
    config.model_kwargs = ml_collections.ConfigDict(
        dict(
            variant=variant,
            width=4,
            alpha=0.2,
            stochdepth_rate=0.1,
            drop_rate=0.25,
            activation="relu",
        )
    )
    config.dataset.update(common.RESNET_IMAGENET_DATA)
    config.train_batch_size = 1024
    config.eval_batch_size = 1000
    config.num_epochs = 90.0
    config.optimizer.weight_decay = 5e-5
    config.bfloat16 = True
    config.eval_every_steps = 5000
    config.lock()
    return config

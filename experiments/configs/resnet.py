"""Normalized ResNet-50 baselines on ImageNet: BatchNorm, and GN / LN + Proxy Norm.

Run one of (8+ GPUs or a TPU pod slice; 112,602 steps of 1024 images):

    python -m experiments.train --config=resnet50_bn --workdir=$WORKDIR
    python -m experiments.train --config=resnet50_gn_pn --workdir=$WORKDIR
    python -m experiments.train --config=resnet50_ln_pn --workdir=$WORKDIR
    python -m experiments.train --config=nf_resnet50 --workdir=$WORKDIR   # the NF version

`resnet50_bn` is the base config of DeepMind's NFNet repository (spec ``nfnets.md`` 4.2,
`experiment.get_config`): a pre-activation (v2) BatchNorm ResNet-50, batch 1024, 90
epochs, SGD with Nesterov momentum 0.9, lr 0.1 * 1024/256 = 0.4, weight decay 1e-4 on
weights only (gains/biases, i.e. norm scales/offsets and the fc bias, excluded), label
smoothing 0.1, BatchNorm running-average decay 0.9, float32, no EMA, inception-crop
training and ``crop_resize`` evaluation at 224 px. The schedule (not listed in the spec's
summary of the base config) is the repository's default: 5 warmup epochs from 0, then
cosine to 0. BatchNorm statistics are per device; pass
``--config.model_kwargs.cross_replica_axis=data`` for statistics over the global batch.

`resnet50_gn_pn` / `resnet50_ln_pn` keep that recipe and replace every BatchNorm by an
affine-free GroupNorm (32 groups) / LayerNorm followed by Proxy Norm (arXiv:2106.03743,
whose ResNet experiments use ResNet-50 v2). Proxy Norm's ``beta``/``gamma`` are not
weight-decayed, its ``proxy_beta``/``proxy_gamma`` are, with the conv kernels' coefficient
(baselines spec 1.1). The PN paper's own ResNet recipe and results were not available
(baselines spec 3); the same recipe for all four keeps the comparison fair.

Expected top-1: BN ResNet-50 about 76-77% at 90 epochs (GluonCV's ResNet50_v1b reaches
77.67% with a 120-epoch recipe, its GN variant 77.36%); the PN paper reports GN/LN + PN
matching or exceeding BN.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

#: No weight decay on biases and on norm / Proxy Norm affine parameters (`scale`,
#: `offset`, `beta`, `gamma`); `proxy_beta`/`proxy_gamma` and all kernels are decayed.
RESNET_NO_DECAY_PATTERNS = (r".*/(b|scale|offset|beta|gamma)",)

# preset argument -> ResNet norm.
NORMS = {"bn": "batch", "gn_pn": "group_proxy", "ln_pn": "layer_proxy"}


def get_config(arg: str = "bn") -> ml_collections.ConfigDict:
    """The ResNet-50 baseline recipe with the norm `arg` ('bn', 'gn_pn' or 'ln_pn')."""
    if arg not in NORMS:
        raise ValueError(f"Unknown ResNet-50 baseline {arg!r}: use one of {', '.join(NORMS)}.")
    config = common.base_config()
    config.model = "ResNet"
    config.model_kwargs = ml_collections.ConfigDict(
        dict(
            depth=50,
            version="v2",
            norm=NORMS[arg],
            bn_decay=0.9,
            cross_replica_axis=None,
            zero_init_residual=True,
        )
    )
    config.dataset.update(common.RESNET_IMAGENET_DATA)
    config.train_batch_size = 1024
    config.eval_batch_size = 1000
    config.num_epochs = 90.0
    config.optimizer.update(
        dict(
            name="sgd",
            base_lr=0.1,
            lr_scale_by_bs=True,
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-4,
            clipping=None,
            no_decay_patterns=list(RESNET_NO_DECAY_PATTERNS),
            no_clip_patterns=[],
        )
    )
    config.label_smoothing = 0.1
    config.use_ema = False
    config.bfloat16 = False
    config.eval_every_steps = 5000
    config.lock()
    return config

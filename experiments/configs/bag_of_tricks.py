"""Bag of Tricks ResNet-50 recipes (He et al., arXiv:1812.01187; baselines spec 4.5).

Run (8 GPUs; the paper used 8 V100s):

    python -m experiments.train --config=bot_baseline --workdir=$WORKDIR
    python -m experiments.train --config=bot_efficient --workdir=$WORKDIR
    python -m experiments.train --config=bot_refined --workdir=$WORKDIR
    python -m experiments.train --config=bot_refined_mixup --workdir=$WORKDIR
    # + knowledge distillation from a teacher run directory (or a weights file plus
    #   --config.distill.teacher_model=ResNet
    #   --config.distill.teacher_model_kwargs="{'depth': 152, 'version': 'v1d'}"):
    python -m experiments.train --config=bot_refined_mixup --workdir=$WORKDIR \\
        --config.distill.teacher_checkpoint=$TEACHER_WORKDIR

=================== ========== ===== ===== ================================== ======
preset              model      batch lr    schedule                            epochs
=================== ========== ===== ===== ================================== ======
``bot_baseline``    ResNet-50  256   0.1   /10 at epochs 30, 60, 90            120
``bot_efficient``   ResNet-50  1024  0.4   5-epoch warmup, /10 at 30, 60, 90   120
``bot_refined``     ResNet-50-D 1024 0.4   5-epoch warmup, cosine              120
``..._mixup``       ResNet-50-D 1024 0.4   5-epoch warmup, cosine              200
=================== ========== ===== ===== ================================== ======

All use SGD with Nesterov momentum 0.9 and weight decay 1e-4 (GluonCV's defaults; the
paper's text omits them), BatchNorm (per-device statistics, decay 0.9), whole batches
per epoch (``1,281,167 // batch``: 5004 at 256, 1251 at 1024), inception-crop + flip
training and resize-256 / centre-crop-224 evaluation (``crop_resize``), no EMA.

* baseline: fp32, no tricks (weight decay on every parameter, BN gamma initialised to 1).
* efficient: lr scaled linearly (0.1 * 1024/256), linear warmup ``eta * i / m`` from the
  first batch (``warmup_offset=1``), zero gamma in the last BN of every block, no decay on
  biases and BN parameters, bfloat16 compute with float32 master weights (paper: fp16).
* refined: ResNet-D, cosine decay after the warmup, label smoothing 0.1 in the paper's
  form (``1 - eps`` / ``eps / (K - 1)``); ``_mixup`` adds mixup (alpha 0.2, one lambda
  per device batch, batch paired with its reverse) and trains 200 epochs. Distillation
  (T = 20, loss ``CE + T^2 CE(teacher/T)``) is on when ``distill.teacher_checkpoint`` is
  set; the paper's teacher is a ResNet-152-D trained with the refined recipe.

Expected top-1 (paper Tables 3-6, unverified except the last, also GluonCV's zoo):
baseline 75.87, efficient 76.21 (ResNet-50) / 77.16 (ResNet-50-D), + cosine 77.91,
+ label smoothing 78.31 (``bot_refined``), + distillation 78.67, + mixup 79.15
(``bot_refined_mixup``), + both 79.29.

Deviations: He (MSRA) initialisation (paper: Xavier) and a zero-initialised classifier;
no colour jitter / PCA lighting (the pipeline has none); bfloat16 instead of fp16.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from experiments.configs.resnet import RESNET_NO_DECAY_PATTERNS

VARIANTS = ("baseline", "efficient", "refined", "refined_mixup")
DECAY_EPOCHS = [30.0, 60.0, 90.0]  # lr /10 (paper section 2.1)


def get_config(variant: str = "refined") -> ml_collections.ConfigDict:
    """The Bag-of-Tricks recipe `variant` ('baseline', 'efficient', 'refined',
    'refined_mixup')."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown Bag-of-Tricks variant {variant!r}: use one of {VARIANTS}.")
    baseline = variant == "baseline"
    refined = variant.startswith("refined")
    config = common.base_config()
    config.model = "ResNet"
    config.model_kwargs = ml_collections.ConfigDict(
        dict(
            depth=50,
            version="v1d" if refined else "v1",
            norm="batch",
            bn_decay=0.9,
            cross_replica_axis=None,
            zero_init_residual=not baseline,
        )
    )
    config.dataset.update(common.RESNET_IMAGENET_DATA)
    config.train_batch_size = 256 if baseline else 1024
    config.eval_batch_size = 1000
    config.num_epochs = 200.0 if variant == "refined_mixup" else 120.0
    config.integer_steps_per_epoch = True
    if baseline:
        schedule = dict(name="step", decay_epochs=DECAY_EPOCHS, factor=0.1)
    elif refined:
        schedule = dict(name="warmup_cosine", warmup_epochs=5.0, warmup_offset=1.0)
    else:
        schedule = dict(
            name="step", decay_epochs=DECAY_EPOCHS, factor=0.1, warmup_epochs=5.0, warmup_offset=1.0
        )
    config.optimizer = ml_collections.ConfigDict(
        dict(
            name="sgd",
            base_lr=0.1,
            lr_scale_by_bs=True,  # 0.1 at 256, 0.4 at 1024 (linear scaling)
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-4,
            clipping=None,
            schedule=schedule,
            no_decay_patterns=[] if baseline else list(RESNET_NO_DECAY_PATTERNS),
            no_clip_patterns=[],
        )
    )
    config.label_smoothing = 0.1 if refined else 0.0
    config.label_smoothing_form = "paper"
    config.mixup_alpha = 0.2 if variant == "refined_mixup" else 0.0
    config.distill.temperature = 20.0
    config.use_ema = False
    config.bfloat16 = not baseline
    config.eval_every_steps = 5000
    config.lock()
    return config

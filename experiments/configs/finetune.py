"""Fine-tuning DeepMind's pretrained NFNets (F0 ... F6) on a dataset of your own.

Run (after downloading the weights, e.g. F0 from
https://storage.googleapis.com/dm-nfnets/F0_haiku.npz into the working directory):

    # A tfds dataset (prepare it once: python -m nfnets_jax.data.prepare oxford_flowers102)
    python -m experiments.train --config=nfnet_f0_finetune --workdir=$WORKDIR \
        --config.dataset.name=oxford_flowers102

    # Your own images in root/<split>/<class>/*.jpg (splits 'train' and 'validation')
    python -m experiments.train --config=nfnet_f0_finetune --workdir=$WORKDIR \
        --config.dataset.name=folder:/path/to/root --config.init_from=/path/to/F0_haiku.npz

The run starts from `init_from` (a released file, a file from `experiments.export` or
another run's directory): every weight but the classifier is loaded, and the classifier
is re-initialised when the number of classes differs. Our recipe (a common transfer
setting, not tuned or measured here): batch 256, 40 epochs, SGD + Nesterov 0.9 with lr
0.01 * B/256, 1 warmup epoch then cosine decay, AGC 0.01 (not on the classifier), weight
decay 1e-5, label smoothing 0.1, stochastic depth 0.1, no MixUp/CutMix/RandAugment, EMA,
inception crop + flip at the variant's training size and `resize_crop_32` evaluation at
its test size (F0: 192 / 256 px), bfloat16. For large datasets (100k+ images) lower
`num_epochs`; for very small ones raise it or lower `train_batch_size`.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import nfnet
from nfnets_jax import checkpoints

# Defaults of the recipe above (our choice for transfer learning; see the docstring).
FINETUNE_DATASET = "oxford_flowers102"
FINETUNE_BATCH = 256
FINETUNE_EPOCHS = 40.0
FINETUNE_BASE_LR = 0.01
FINETUNE_WEIGHT_DECAY = 1e-5
FINETUNE_STOCHDEPTH = 0.1


def get_config(variant: str = "F0") -> ml_collections.ConfigDict:
    """Fine-tuning recipe starting from DeepMind's `{variant}_haiku.npz` ('F0' ... 'F6')."""
    variant = variant.upper()
    if variant not in checkpoints.RELEASED_VARIANTS:
        raise ValueError(
            f"DeepMind released weights for {', '.join(checkpoints.RELEASED_VARIANTS)}, not "
            f"{variant!r}; fine-tune another model with --config=nfnet_f0 and "
            "--config.init_from=PATH."
        )
    config = nfnet.get_config(variant)
    with config.unlocked():
        config.init_from = f"{variant}_haiku.npz"
        config.model_kwargs.stochdepth_rate = FINETUNE_STOCHDEPTH
        config.dataset.update(
            dict(name=FINETUNE_DATASET, augment_name=None, train_preproc="inception_crop")
        )
        config.train_batch_size = FINETUNE_BATCH
        config.eval_batch_size = FINETUNE_BATCH
        config.num_epochs = FINETUNE_EPOCHS
        config.optimizer.base_lr = FINETUNE_BASE_LR
        config.optimizer.weight_decay = FINETUNE_WEIGHT_DECAY
        config.optimizer.schedule.warmup_epochs = 1.0
        config.log_every_steps = 20
        config.eval_every_steps = 0
        config.checkpoint_every_steps = 500
    config.lock()
    return config

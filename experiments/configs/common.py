"""Fields every experiment config has, with the NFNet recipe's values as defaults.

Per-family configs (`nfnet.py`, `nf_resnet.py`, `nf_regnet.py`, `demo.py`) start from
`base_config()` and change what their recipe changes. A field that is unset by default is
a typed placeholder (`placeholder(int)`): None until set, and type-checked when set, on
the command line too (`--config.dataset.seed=3`; `--config.dataset.seed=None` unsets it).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from nfnets_jax import optim

IMAGENET_TRAIN_EXAMPLES = 1_281_167  # tfds imagenet2012 'train' (spec section 6.1).


#: The ResNet papers' ImageNet data recipe (NF-ResNets, the normalized ResNet baselines and
#: the Bag of Tricks): inception-style crops + flips at 224 px; evaluation on a centre crop
#: of side min(h, w) * 224 / 256 resized to 224 (`crop_resize`, the resize-256 /
#: centre-crop-224 protocol); no MixUp/CutMix/RandAugment.
RESNET_IMAGENET_DATA = dict(
    image_size=224,
    eval_image_size=224,
    train_preproc="inception_crop",
    eval_preproc="crop_resize",
    augment_name=None,
)


def base_config() -> ml_collections.ConfigDict:
    """An unlocked config with every field the training loop reads."""
    config = ml_collections.ConfigDict()
    config.model = "NFNet"
    config.model_kwargs = ml_collections.ConfigDict()

    config.dataset = ml_collections.ConfigDict(
        dict(
            name="imagenet2012",
            # tfds data_dir; unset: TFDS_DATA_DIR or ~/tensorflow_datasets.
            data_dir=placeholder(str),
            train_split=placeholder(str),  # unset: the dataset's default training split.
            eval_split=placeholder(str),  # unset: the dataset's default evaluation split.
            num_classes=placeholder(int),  # unset: the dataset's number of classes.
            image_size=224,
            eval_image_size=224,
            train_preproc="inception_crop",
            eval_preproc="crop_resize",
            augment_name=placeholder(str),  # e.g. "cutmix_mixup_randaugment_405"
            augment_before_mix=False,
            seed=placeholder(int),  # unset: drawn once at the first start, recorded, reused.
        )
    )
    config.train_batch_size = 4096
    config.eval_batch_size = 1000
    config.num_epochs = 90.0
    config.num_train_steps = placeholder(int)  # set: overrides num_epochs.
    config.grad_accum_steps = 1

    config.optimizer = optim.nfnet_optimizer_config()
    config.label_smoothing = 0.1
    # 'uniform': (1 - e) y + e / K (NFNet, GluonCV); 'paper': 1 - e and e / (K - 1) (Bag of
    # Tricks). See nfnets_jax.training.losses.
    config.label_smoothing_form = "uniform"
    # > 0: Bag-of-Tricks mixup in the train step (one Beta(a, a) lambda per device batch,
    # batch paired with its reverse); the pipeline's MixUp is `dataset.augment_name`.
    config.mixup_alpha = 0.0
    # Knowledge distillation from a fixed teacher (on when teacher_checkpoint is set):
    # a run directory of this project, or a weights file plus teacher_model(+_kwargs).
    config.distill = ml_collections.ConfigDict(
        dict(
            teacher_checkpoint=placeholder(str),
            teacher_model=placeholder(str),
            teacher_model_kwargs=placeholder(dict),  # a dict literal on the command line
            teacher_use_ema=True,  # EMA weights of a teacher run directory, if it has them
            temperature=20.0,  # Bag of Tricks, section 5.3
            hard_weight=1.0,  # paper: CE(y) + T^2 CE(teacher/T); GluonCV: both 0.5
            soft_weight=1.0,
            soft_loss="cross_entropy",  # or "kl" (same gradient, smaller value)
        )
    )
    # True: steps_per_epoch = N // batch (GluonCV, Bag of Tricks); False: N / batch.
    config.integer_steps_per_epoch = False
    config.use_ema = True
    config.ema_decay = 0.99999
    config.bfloat16 = True
    config.parallelism = "pmap"
    config.seed = 0

    config.log_every_steps = 100
    config.eval_every_steps = 0  # 0: evaluate only at the end.
    config.checkpoint_every_steps = 1000
    config.checkpoint_every_secs = 600.0
    config.keep_checkpoints = 3
    # A released .npz (pickle), an exported .npz or a run directory to start from.
    config.init_from = placeholder(str)
    return config

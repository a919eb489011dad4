"""The baseline presets shrunk to run one step in seconds on CPU (digits at 16 px)."""

from experiments import configs
from tests.training.tiny import set_fields

# Same code paths as the full-size models: 4 blocks (one per stage), narrow widths.
SHRINK = {
    "ResNet": dict(width_multiplier=0.125, depth_pattern=(1, 1, 1, 1)),
    "NFResNet": dict(width=1, depth_pattern=(1, 1, 1, 1)),
}


def tiny_preset(name: str, **overrides):
    """Preset `name` at reduced size: 8 images of 16 px, one step, warmup off."""
    config = configs.load_config(name)
    with config.unlocked():
        config.model_kwargs.update(SHRINK[config.model])
        config.dataset.update(
            dict(
                name="digits",
                image_size=16,
                eval_image_size=16,
                eval_split="validation[:8]",
                seed=0,
            )
        )
        config.train_batch_size = 8
        config.eval_batch_size = 8
        config.num_train_steps = 1
        config.log_every_steps = 1
        if "warmup_epochs" in config.optimizer.schedule:
            config.optimizer.schedule.warmup_epochs = 0.0
        set_fields(config, overrides)
    return config


def get_config(arg: str):
    """Lets tools take `--models=tests/training/baseline_tiny.py:resnet50_bn`."""
    return tiny_preset(arg)

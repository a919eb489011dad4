"""A tiny, fast experiment config shared by the training tests (digits at 16 px)."""

from experiments import configs

# Two stages of one block: half the compile time of four, same code paths (a transition
# block with avg-pool shortcut, SE, stochastic depth). The synthetic "released" files of
# tests/pretrained_helpers.py have this architecture too, so they load into these runs.
TINY_NFNET = dict(
    variant="F0",
    width_pattern=(16, 16),
    depth_pattern=(1, 1),
    group_width=8,
    stem_widths=(8, 8, 8),
)


def tiny_config(**overrides):
    """The demo preset shrunk to compile and run in seconds on CPU."""
    config = configs.load_config("nfnet_demo")
    with config.unlocked():
        config.model_kwargs.update(TINY_NFNET)
        # Compiles twice as fast as per-group convolutions on CPU.
        config.model_kwargs.conv_impl = "native"
        config.dataset.image_size = 16
        config.dataset.eval_image_size = 16
        config.dataset.eval_split = "validation[:40]"
        config.train_batch_size = 16
        config.eval_batch_size = 8
        config.num_train_steps = 6
        config.optimizer.schedule.warmup_epochs = 0.02  # about 2 of the 89 steps/epoch
        config.log_every_steps = 2
        config.eval_every_steps = 0
        config.checkpoint_every_steps = 3
        config.keep_checkpoints = 2
        set_fields(config, overrides)
    return config


def set_fields(config, overrides):
    """Sets dotted fields, e.g. `{"dataset.image_size": 16}`, on an unlocked config."""
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for part in parents:
            target = target[part]
        target[leaf] = value


def get_config(arg=None):
    """Lets the CLI tests run `--config=tests/training/tiny.py`."""
    del arg
    return tiny_config()


def restore_state(workdir, config, step=None):
    """The host `TrainState` of a run's newest (or `step`) checkpoint, read with `config`."""
    from nfnets_jax.training import checkpoint, startup

    return checkpoint.restore_state(str(workdir), startup.abstract_state(config), step=step)

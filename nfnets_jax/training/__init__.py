"""Training: the state, pure steps, device mapping, checkpoints, logging and the loop.

The names below load their module on first use, so that the light modules (`config`
for command-line overrides, `state`, `step`) can be imported without TensorFlow.
"""

import importlib as _importlib

# Names exported here -> the module defining them.
_EXPORTS = {
    "CheckpointError": "checkpoint",
    "Checkpointer": "checkpoint",
    "restore_state": "checkpoint",
    "ConfigError": "config",
    "apply_overrides": "config",
    "validate_config": "config",
    "evaluate_checkpoint": "evaluation",
    "evaluate_params": "evaluation",
    "evaluate_split": "evaluation",
    "InitFromError": "finetune",
    "init_state_from_checkpoint": "finetune",
    "NonFiniteLossError": "loop",
    "train_and_evaluate": "loop",
    "DeviceMapper": "parallel",
    "Startup": "startup",
    "abstract_state": "startup",
    "build_model": "startup",
    "prepare_run": "startup",
    "TrainState": "state",
    "create_train_state": "state",
    "make_eval_step": "step",
    "make_train_step": "step",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nfnets_jax.training' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"nfnets_jax.training.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)

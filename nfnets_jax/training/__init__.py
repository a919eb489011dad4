"""Training: the state, pure steps, device mapping, checkpoints, logging and the loop."""

from nfnets_jax.training.checkpoint import Checkpointer, CheckpointError
from nfnets_jax.training.config import ConfigError, apply_overrides, validate_config
from nfnets_jax.training.evaluation import evaluate_checkpoint, evaluate_params
from nfnets_jax.training.finetune import InitFromError, init_state_from_checkpoint
from nfnets_jax.training.loop import (
    NonFiniteLossError,
    restore_params,
    restore_state,
    train_and_evaluate,
)
from nfnets_jax.training.parallel import DeviceMapper
from nfnets_jax.training.startup import Startup, build_model, prepare_run
from nfnets_jax.training.state import TrainState, create_train_state
from nfnets_jax.training.step import make_eval_step, make_train_step

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "ConfigError",
    "DeviceMapper",
    "InitFromError",
    "NonFiniteLossError",
    "Startup",
    "TrainState",
    "apply_overrides",
    "build_model",
    "create_train_state",
    "evaluate_checkpoint",
    "evaluate_params",
    "init_state_from_checkpoint",
    "make_eval_step",
    "make_train_step",
    "prepare_run",
    "restore_params",
    "restore_state",
    "train_and_evaluate",
    "validate_config",
]

"""nfnets_jax: Normalizer-Free Networks and Adaptive Gradient Clipping in JAX/Haiku.

The models and optimizer pieces are importable without TensorFlow::

    import nfnets_jax
    model = nfnets_jax.NFNet(num_classes=1000, variant="F0")
    tx = nfnets_jax.adaptive_grad_clip(0.01)

The input pipelines (`nfnets_jax.data`) and the experiment loop (`nfnets_jax.training`)
import TensorFlow and load on first access, as does `nfnets_jax.pretrained` (DeepMind's
released weights in two lines: `pretrained.load('F0_haiku.npz').predict(images)`).
`nfnets_jax.checkpoints` reads, recognises, fits and writes weights; `nfnets_jax.deploy`
writes a model as a TensorFlow SavedModel or a `jax.export` (StableHLO) artifact.

References:
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171.
    Brock, De, Smith. Characterizing signal propagation to close the performance gap in
    unnormalized ResNets. arXiv:2101.08692.
"""

import importlib

from nfnets_jax import checkpoints, models, optim
from nfnets_jax.checkpoints import load_params, save_params
from nfnets_jax.models import NF_RegNet, NF_ResNet, NFNet, NFRegNet, NFResNet, get_model
from nfnets_jax.optim import (
    adaptive_grad_clip,
    build_optimizer,
    ema_update,
    nfnet_optimizer_config,
    unitwise_clip,
    unitwise_norm,
)

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("data", "deploy", "training", "pretrained")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"nfnets_jax.{name}")
    raise AttributeError(f"module 'nfnets_jax' has no attribute {name!r}")


__all__ = [
    "NFNet",
    "NFRegNet",
    "NFResNet",
    "NF_RegNet",
    "NF_ResNet",
    "adaptive_grad_clip",
    "build_optimizer",
    "checkpoints",
    "data",
    "deploy",
    "ema_update",
    "get_model",
    "load_params",
    "models",
    "nfnet_optimizer_config",
    "optim",
    "pretrained",
    "save_params",
    "training",
    "unitwise_clip",
    "unitwise_norm",
]

"""Model registry: maps the ``model`` string of an experiment config to a model class."""

from __future__ import annotations

from nfnets_jax.models.fixup_resnet import FixupResNet
from nfnets_jax.models.nf_regnet import NFRegNet
from nfnets_jax.models.nf_resnet import NFResNet
from nfnets_jax.models.nfnet import NFNet
from nfnets_jax.models.resnet import ResNet
from nfnets_jax.models.skipinit_resnet import SkipInitResNet

_REGISTRY: dict[str, type] = {
    "NFNet": NFNet,
    "NFResNet": NFResNet,
    "NF_ResNet": NFResNet,
    "NFRegNet": NFRegNet,
    "NF_RegNet": NFRegNet,
    # Normalized and unnormalized baselines (BN/GN/LN/+Proxy Norm ResNets, SkipInit, Fixup).
    "ResNet": ResNet,
    "SkipInitResNet": SkipInitResNet,
    "SkipInit_ResNet": SkipInitResNet,
    "FixupResNet": FixupResNet,
    "Fixup_ResNet": FixupResNet,
}


def register_model(name: str, cls: type, *, overwrite: bool = False) -> None:
    """Adds ``cls`` to the registry under ``name``.

    Args:
        name: the name configs use (case-sensitive).
        cls: a Haiku module class called as ``cls(num_classes, variant=..., ...)``
            whose ``__call__(images, is_training)`` returns a dict with ``'logits'``.
        overwrite: replace an existing entry instead of raising.

    Example:
        >>> register_model('MyNFNet', NFNet)
        >>> get_model('MyNFNet') is NFNet
        True
    """
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not cls:
        raise ValueError(f"Model name {name!r} is already registered to {_REGISTRY[name]}.")
    _REGISTRY[name] = cls


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str) -> type:
    """Returns the model class registered as ``name``.

    Args:
        name: ``'NFNet'``, ``'NFResNet'`` / ``'NF_ResNet'``, ``'NFRegNet'`` /
            ``'NF_RegNet'``, ``'ResNet'`` (normalized baselines), ``'SkipInitResNet'``,
            ``'FixupResNet'``, or any name added with :func:`register_model`.

    Returns:
        The class (not an instance): build it inside ``hk.transform``.

    Raises:
        ValueError: for an unknown name; the message lists the known names.

    Example:
        >>> get_model('NF_RegNet').__name__
        'NFRegNet'
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown model {name!r}. Known models: {', '.join(model_names())}."
        ) from None

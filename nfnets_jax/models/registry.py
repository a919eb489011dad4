"""Model registry: maps the ``model`` string of an experiment config to a model class."""

from __future__ import annotations

import haiku as hk

from nfnets_jax.models.fixup_resnet import FixupResNet
from nfnets_jax.models.nf_regnet import NFRegNet
from nfnets_jax.models.nf_resnet import NFResNet
from nfnets_jax.models.nfnet import NFNet
from nfnets_jax.models.resnet import ResNet
from nfnets_jax.models.skipinit_resnet import SkipInitResNet
from nfnets_jax.models.timm_nf import TIMM_NF_MODELS, TimmNFNet

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
    # timm's own NF family, generic (variant=...) and under each timm name.
    "TimmNFNet": TimmNFNet,
    **TIMM_NF_MODELS,
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
            ``'FixupResNet'``, ``'TimmNFNet'`` or a timm NF name (``'eca_nfnet_l0'``,
            ``'nf_resnet50'``, ...; see :mod:`nfnets_jax.models.timm_nf`), or any name
            added with :func:`register_model`.

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


def transform_model(
    name: str,
    num_classes: int,
    model_kwargs: dict | None = None,
    *,
    compute_dtype=None,
) -> hk.TransformedWithState:
    """``hk.transform_with_state`` of a registered model: ``forward(images, is_training)``.

    Every network of the project (a run's training and evaluation models, a pretrained
    checkpoint's, a distillation teacher) is built here.

    Args:
        name: registry name (see :func:`model_names`).
        num_classes: classifier outputs.
        model_kwargs: the constructor's other keyword arguments.
        compute_dtype: activation dtype (None: the model's default, float32).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> forward = transform_model('NFNet', 10, {'variant': 'F0'})
        >>> params, state = jax.eval_shape(
        ...     lambda x: forward.init(jax.random.key(0), x, is_training=False),
        ...     jnp.zeros((1, 64, 64, 3)))
        >>> params['NFNet/~/linear']['w'].shape
        (3072, 10)
    """
    model_cls = get_model(name)
    kwargs = dict(model_kwargs or {})
    if compute_dtype is not None:
        kwargs["compute_dtype"] = compute_dtype

    def forward(images, is_training):
        return model_cls(num_classes=num_classes, **kwargs)(images, is_training=is_training)

    return hk.transform_with_state(forward)

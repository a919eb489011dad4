"""Normalizer-Free models in Haiku: NFNets, NF-ResNets, NF-RegNets and their layers.

Also timm's own NF family (``TimmNFNet``: NFNet-L0, ECA-NFNet-L0..L3, timm's NF-ResNets
and NF-RegNets), and the baselines they are compared with: normalized ResNets (BatchNorm, GroupNorm,
LayerNorm, GN/LN + Proxy Norm), SkipInit and Fixup ResNets.

Constructors, calls and parameter trees match DeepMind's release (arXiv:2102.06171,
arXiv:2101.08692), so their code runs unchanged and ``F0..F6_haiku.npz`` weights load.
"""

from nfnets_jax.models.activations import (
    GAMMAS,
    PLAIN_ACTIVATIONS,
    get_activation,
    get_plain_activation,
    nonlinearities,
)
from nfnets_jax.models.conv import CONV_IMPLS, grouped_conv, resolve_conv_impl
from nfnets_jax.models.fixup_resnet import FixupResNet
from nfnets_jax.models.flops import count_conv_flops, count_flops, traced_macs
from nfnets_jax.models.layers import SqueezeExcite, StochDepth, WSConv2D
from nfnets_jax.models.nf_regnet import NF_RegNet, NFRegNet, NFRegNetBlock, nf_regnet_params
from nfnets_jax.models.nf_resnet import NF_ResNet, NFResBlock, NFResNet, nf_resnet_params
from nfnets_jax.models.nfnet import NFBlock, NFNet, nfnet_params
from nfnets_jax.models.normalization import BatchNorm, GroupNorm, layer_norm
from nfnets_jax.models.precision import compute_dtype_scope, resolve_compute_dtype
from nfnets_jax.models.proxy_norm import ProxyNorm, ProxyNormActivation, proxy_quantiles
from nfnets_jax.models.registry import get_model, model_names, register_model, transform_model
from nfnets_jax.models.resnet import ResNet, resnet_params
from nfnets_jax.models.signal_prop import BlockSpec, block_schedule, signal_metrics
from nfnets_jax.models.skipinit_resnet import SkipInitResNet
from nfnets_jax.models.timm_nf import TIMM_NF_CONFIGS, TimmNFBlock, TimmNFNet

__all__ = [
    "CONV_IMPLS",
    "GAMMAS",
    "PLAIN_ACTIVATIONS",
    "BatchNorm",
    "BlockSpec",
    "FixupResNet",
    "GroupNorm",
    "NFBlock",
    "NFNet",
    "NFRegNet",
    "NFRegNetBlock",
    "NFResBlock",
    "NFResNet",
    "NF_RegNet",
    "NF_ResNet",
    "ProxyNorm",
    "ProxyNormActivation",
    "ResNet",
    "SkipInitResNet",
    "SqueezeExcite",
    "TIMM_NF_CONFIGS",
    "TimmNFBlock",
    "TimmNFNet",
    "StochDepth",
    "WSConv2D",
    "block_schedule",
    "compute_dtype_scope",
    "count_conv_flops",
    "count_flops",
    "get_activation",
    "get_model",
    "get_plain_activation",
    "grouped_conv",
    "layer_norm",
    "model_names",
    "nf_regnet_params",
    "nf_resnet_params",
    "nfnet_params",
    "nonlinearities",
    "proxy_quantiles",
    "register_model",
    "transform_model",
    "resnet_params",
    "resolve_compute_dtype",
    "resolve_conv_impl",
    "signal_metrics",
    "traced_macs",
]

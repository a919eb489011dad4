"""timm's own NF family as :class:`TimmModel` entries: key maps, layouts, preprocessing.

``TIMM_FAMILY`` describes ``nfnet_l0``, ``eca_nfnet_l0``..``l3``, ``nf_resnet26/50/101``
and ``nf_regnet_b0``..``b5`` (the models of :mod:`nfnets_jax.models.timm_nf`) the way
``timm.py`` describes DeepMind's NFNets: which project model to build, how every Haiku
parameter maps onto a timm ``state_dict`` key and layout, timm's evaluation
preprocessing, and timm's parameter count. The generic conversion code works from these
entries alone.

Key map (Haiku module path below the root ``TimmNFNet`` -> timm module)::

    stem_conv{1..4} / stem_conv  -> stem.conv{1..4} / stem.conv
    stages_{i}_{j}/~/conv1 ...   -> stages.{i}.{j}.conv1 ... (conv2, conv2b, conv3)
    stages_{i}_{j}/~/downsample_conv -> stages.{i}.{j}.downsample.conv
    .../attn_last (ECA)          -> ...attn_last.conv          (w -> weight, 'conv1d')
    .../attn[_last]/~/linear[_1] -> ...attn[_last].fc1 / fc2   (SE, 'linear1x1')
    final_conv                   -> final_conv
    head_fc                      -> head.fc

with WS-conv parameters ``w -> weight`` ('conv2d'), ``gain -> gain`` ('gain4d'),
``bias -> bias`` ('vector') and linears ``w -> weight``, ``b -> bias``.

Eval preprocessing is timm's: at ``test_input_size`` (else ``input_size``) with
``test_crop_pct`` (else ``crop_pct``), as ``timm.data.resolve_data_config(...,
use_test_size=True)`` resolves it; values from timm 1.0.31's pretrained configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nfnets_jax.checkpoints._src.fitting import CheckpointMismatchError

__all__ = [
    "LAYOUTS",
    "TIMM_FAMILY",
    "KeyMapEntry",
    "TimmKeyMapError",
    "TimmModel",
    "from_state_dict",
    "timm_family_key_map",
    "to_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmKeyMapError(CheckpointMismatchError):
    """A Haiku tree or state dict does not fit a timm model's key map."""


@dataclasses.dataclass(frozen=True)
class KeyMapEntry:
    """One parameter: Haiku ``params[module][name]`` <-> timm ``state_dict[timm_key]``."""

    module: str
    name: str
    timm_key: str
    layout: str


@dataclasses.dataclass(frozen=True)
class TimmModel:
    """A timm model: the project model to build, its key map and timm's eval input."""

    timm_name: str
    architecture: str
    model_kwargs: Mapping[str, Any]
    key_map: Callable[[Mapping[str, Mapping[str, tuple[int, ...]]]], list[KeyMapEntry]]
    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_params: int


def _conv1d_to_timm(x):
    return x.reshape(1, 1, -1)


#: layout -> (Haiku -> timm, timm -> Haiku), exact numpy transforms.
LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    "conv2d": (lambda x: x.transpose(3, 2, 0, 1), lambda x: x.transpose(2, 3, 1, 0)),
    "linear": (lambda x: x.T, lambda x: x.T),
    "vector": (lambda x: x, lambda x: x),
    "gain4d": (lambda x: x.reshape(-1, 1, 1, 1), lambda x: x.reshape(-1)),
    # SE linears: Haiku (in, out) <-> timm's 1x1 Conv2d (out, in, 1, 1).
    "linear1x1": (lambda x: x.T[:, :, None, None], lambda x: x[:, :, 0, 0].T),
    # ECA: Haiku (k,) <-> timm's Conv1d (1, 1, k).
    "conv1d": (_conv1d_to_timm, lambda x: x.reshape(-1)),
}

_WS_PARAMS = {"w": ("weight", "conv2d"), "gain": ("gain", "gain4d"), "bias": ("bias", "vector")}
_LINEAR_PARAMS = {"w": ("weight", "linear"), "b": ("bias", "vector")}
_SE_PARAMS = {"w": ("weight", "linear1x1"), "b": ("bias", "vector")}
_BLOCK_CONVS = {"conv1", "conv2", "conv2b", "conv3", "downsample_conv"}


def _timm_module(parts: list[str]) -> tuple[str, dict[str, tuple[str, str]]] | None:
    """timm module path and parameter table of a Haiku path (below the root), or None."""
    head = parts[0]
    if len(parts) == 1:
        if head == "stem_conv" or (head.startswith("stem_conv") and head[9:].isdigit()):
            return "stem." + head[5:], _WS_PARAMS
        if head == "final_conv":
            return "final_conv", _WS_PARAMS
        if head == "head_fc":
            return "head.fc", _LINEAR_PARAMS
        return None
    bits = head.split("_")
    if len(bits) != 3 or bits[0] != "stages" or not (bits[1].isdigit() and bits[2].isdigit()):
        return None
    block = f"stages.{bits[1]}.{bits[2]}"
    if len(parts) == 2 and parts[1] in _BLOCK_CONVS:
        return f"{block}.{parts[1].replace('downsample_conv', 'downsample.conv')}", _WS_PARAMS
    if len(parts) == 2 and parts[1] in ("attn", "attn_last"):  # ECA's kernel.
        return f"{block}.{parts[1]}.conv", {"w": ("weight", "conv1d")}
    if len(parts) == 3 and parts[1] in ("attn", "attn_last"):
        fc = {"linear": "fc1", "linear_1": "fc2"}.get(parts[2])
        return (f"{block}.{parts[1]}.{fc}", _SE_PARAMS) if fc else None
    return None


def timm_family_key_map(shapes: Mapping[str, Mapping[str, tuple[int, ...]]]) -> list[KeyMapEntry]:
    """One :class:`KeyMapEntry` per parameter of a ``TimmNFNet`` tree.

    Args:
        shapes: ``{module: {param: shape}}`` of the Haiku tree (shapes are not needed
            for the names; any mapping of the tree's structure works).

    Returns:
        The entries, in the tree's module order.

    Raises:
        TimmKeyMapError: a module or parameter that is not part of timm's NF family.

    Example:
        >>> timm_family_key_map({'TimmNFNet/~/stages_1_0/~/conv2b': {'gain': (8,)}})[0]
        KeyMapEntry(module='TimmNFNet/~/stages_1_0/~/conv2b', name='gain', \
timm_key='stages.1.0.conv2b.gain', layout='gain4d')
    """
    entries = []
    for module, params in shapes.items():
        parts = module.split("/~/")
        found = _timm_module(parts[1:]) if len(parts) > 1 else None
        if found is None:
            raise TimmKeyMapError(
                f"Parameter module {module!r} is not part of a timm NF-family model "
                "(TimmNFNet); build the model with nfnets_jax.models.TimmNFNet."
            )
        prefix, table = found
        for name in params:
            if name not in table:
                raise TimmKeyMapError(
                    f"Unexpected parameter {module!r}/{name!r}: expected {sorted(table)}."
                )
            suffix, layout = table[name]
            entries.append(KeyMapEntry(module, name, f"{prefix}.{suffix}", layout))
    return entries


def to_state_dict(params: Mapping[str, Mapping[str, Any]], model: TimmModel) -> dict[str, Any]:
    """Haiku parameters -> timm ``state_dict`` arrays (numpy), by ``model.key_map``."""
    out = {}
    for e in model.key_map(params):
        out[e.timm_key] = LAYOUTS[e.layout][0](np.asarray(params[e.module][e.name]))
    return out


def from_state_dict(
    state_dict: Mapping[str, Any], model: TimmModel, like: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, np.ndarray]]:
    """timm ``state_dict`` -> Haiku parameters shaped like ``like`` (e.g. an eval_shape tree).

    Raises:
        TimmKeyMapError: a key is missing, left over, or its shape does not fit.
    """
    entries = model.key_map(like)
    wanted = {e.timm_key for e in entries}
    missing, extra = sorted(wanted - set(state_dict)), sorted(set(state_dict) - wanted)
    if missing or extra:
        raise TimmKeyMapError(
            f"State dict does not match timm's {model.timm_name}: missing {missing[:5]}, "
            f"unexpected {extra[:5]} ({len(missing)} missing, {len(extra)} unexpected)."
        )
    params: dict[str, dict[str, np.ndarray]] = {}
    for e in entries:
        value = LAYOUTS[e.layout][1](np.asarray(state_dict[e.timm_key]))
        expected = tuple(like[e.module][e.name].shape)
        if value.shape != expected:
            raise TimmKeyMapError(
                f"{e.timm_key}: shape {np.shape(state_dict[e.timm_key])} gives {value.shape} "
                f"for {e.module}/{e.name}, which needs {expected}."
            )
        params.setdefault(e.module, {})[e.name] = value
    return params


# timm name -> (parameters of timm's definition with 1000 classes, eval size, crop_pct).
# Parameter counts: sum of `timm.create_model(name).parameters()` sizes (timm 1.0.31),
# which timm's model cards round (e.g. eca_nfnet_l0 "24.1 M"). Eval size and crop:
# test_input_size / test_crop_pct where the pretrained config has them, else
# input_size / crop_pct. All bicubic with ImageNet mean/std.
_FACTS = {
    "nfnet_l0": (35_074_488, 288, 1.0),
    "eca_nfnet_l0": (24_143_924, 288, 1.0),
    "eca_nfnet_l1": (41_407_728, 320, 1.0),
    "eca_nfnet_l2": (56_722_348, 384, 1.0),
    "eca_nfnet_l3": (72_036_968, 448, 1.0),
    "nf_resnet26": (15_995_176, 224, 0.9),
    "nf_resnet50": (25_557_032, 288, 0.94),
    "nf_resnet101": (44_549_160, 224, 0.9),
    "nf_regnet_b0": (8_764_288, 256, 0.9),
    "nf_regnet_b1": (10_223_984, 288, 0.9),
    "nf_regnet_b2": (14_314_608, 272, 0.9),
    "nf_regnet_b3": (18_593_832, 320, 0.9),
    "nf_regnet_b4": (30_210_816, 384, 0.9),
    "nf_regnet_b5": (49_741_728, 456, 0.9),
}

#: timm name -> :class:`TimmModel`; merged into ``TIMM_MODELS`` beside DeepMind's NFNets.
TIMM_FAMILY: dict[str, TimmModel] = {
    name: TimmModel(
        timm_name=name,
        architecture=name,  # registered by nfnets_jax.models.timm_nf under its timm name
        model_kwargs={},
        key_map=timm_family_key_map,
        image_size=size,
        crop_pct=crop,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_params=count,
    )
    for name, (count, size, crop) in _FACTS.items()
}

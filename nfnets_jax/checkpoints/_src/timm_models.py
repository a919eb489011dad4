"""The timm models this project converts: layouts, key maps and one table of facts.

Each supported timm model is one :class:`TimmModel` in :data:`TIMM_MODELS`: the project
model it is (registry name and keyword arguments), its key map (one :class:`KeyMapEntry`
per Haiku parameter: the state-dict key and the :data:`LAYOUTS` transform between the two
layouts), timm's evaluation preprocessing and timm's parameter count. The conversion,
matching and file code of :mod:`nfnets_jax.checkpoints._src.timm` works from these
entries alone.

Two families:

* DeepMind's NFNets as timm ports them (``dm_nfnet_f0`` .. ``f6``, and ``f7`` from timm's
  ``_dm_nfnet_cfg`` at F7's depths): the project's :class:`~nfnets_jax.models.NFNet`
  with ``numerics='timm'``, key map :func:`nfnet_key_map`;
* timm's own NF models (``nfnet_l0``, ``eca_nfnet_l0`` .. ``l3``, ``nf_resnet26/50/101``,
  ``nf_regnet_b0`` .. ``b5``): :class:`~nfnets_jax.models.TimmNFNet`, registered under
  the timm name, key map :func:`timm_family_key_map`::

    stem_conv{1..4} / stem_conv  -> stem.conv{1..4} / stem.conv
    stages_{i}_{j}/~/conv1 ...   -> stages.{i}.{j}.conv1 ... (conv2, conv2b, conv3)
    stages_{i}_{j}/~/downsample_conv -> stages.{i}.{j}.downsample.conv
    .../attn_last (ECA)          -> ...attn_last.conv          (w -> weight, 'conv1d')
    .../squeeze_excite[_last]/~/linear[_1] -> ...attn[_last].fc1 / fc2 ('linear1x1')
    final_conv                   -> final_conv
    linear                       -> head.fc

  with WS-conv parameters ``w -> weight`` ('conv2d'), ``gain -> gain`` ('gain4d'),
  ``bias -> bias`` ('vector') and linears ``w -> weight``, ``b -> bias``.

Facts about timm are those of timm 1.0.31 (``timm/models/nfnet.py``: ``_dm_nfnet_cfg``,
``default_cfgs``; ``timm/layers/std_conv.py``; the pretrained configs' ``test_input_size``
/ ``test_crop_pct``, else ``input_size`` / ``crop_pct``, as
``timm.data.resolve_data_config(..., use_test_size=True)`` resolves them).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nfnets_jax.checkpoints._src.infer import UnrecognizedCheckpointError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "NOT_IN_TIMM_REGISTRY",
    "TIMM_FAMILY_NAMES",
    "TIMM_MODELS",
    "KeyMapEntry",
    "Layout",
    "Shapes",
    "TimmModel",
    "nfnet_key_map",
    "timm_family_key_map",
]

# timm's IMAGENET_DEFAULT_MEAN / _STD (timm/data/constants.py), the project's too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class Layout:
    """An exact, invertible transform between a Haiku parameter and a torch tensor.

    Attributes:
        to_timm: Haiku array -> torch-layout array.
        from_timm: torch-layout array -> Haiku array.
        timm_shape: Haiku shape -> torch shape.
    """

    to_timm: Callable[[np.ndarray], np.ndarray]
    from_timm: Callable[[np.ndarray], np.ndarray]
    timm_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


def _identity(array: np.ndarray) -> np.ndarray:
    return array


#: Every layout, by name. Haiku convs are HWIO and linears (in, out); torch convs OIHW,
#: linears (out, in), timm's weight-standardization gains (O, 1, 1, 1), its SE "linears"
#: 1x1 convs, its skip gains 0-d tensors.
LAYOUTS: dict[str, Layout] = {
    "conv2d": Layout(
        to_timm=lambda a: a.transpose(3, 2, 0, 1),
        from_timm=lambda t: t.transpose(2, 3, 1, 0),
        timm_shape=lambda s: (s[3], s[2], s[0], s[1]),
    ),
    "linear": Layout(
        to_timm=lambda a: a.T,
        from_timm=lambda t: t.T,
        timm_shape=lambda s: (s[1], s[0]),
    ),
    "linear1x1": Layout(
        to_timm=lambda a: a.T[:, :, None, None],
        from_timm=lambda t: t[:, :, 0, 0].T,
        timm_shape=lambda s: (s[1], s[0], 1, 1),
    ),
    "vector": Layout(to_timm=_identity, from_timm=_identity, timm_shape=tuple),
    "gain4d": Layout(
        to_timm=lambda a: a.reshape(-1, 1, 1, 1),
        from_timm=lambda t: t.reshape(-1),
        timm_shape=lambda s: (s[0], 1, 1, 1),
    ),
    "scalar": Layout(to_timm=_identity, from_timm=_identity, timm_shape=tuple),
    # ECA's kernel: Haiku (k,) <-> timm's Conv1d(1, 1, k) weight (1, 1, k).
    "conv1d": Layout(
        to_timm=lambda a: a.reshape(1, 1, -1),
        from_timm=lambda t: t.reshape(-1),
        timm_shape=lambda s: (1, 1, s[0]),
    ),
}


@dataclasses.dataclass(frozen=True)
class KeyMapEntry:
    """One parameter: its Haiku path, its state-dict key and the layout between them."""

    module: str
    name: str
    timm_key: str
    layout: str


Shapes = Mapping[str, Mapping[str, tuple[int, ...]]]


@dataclasses.dataclass(frozen=True)
class TimmModel:
    """A timm model and the project model it is (see the module docstring).

    Attributes:
        timm_name: timm's name (``timm.create_model(timm_name)``).
        architecture: the project's registry name (``nfnets_jax.models.get_model``).
        model_kwargs: keyword arguments of the project model (variant, numerics, ...).
        key_map: Haiku shapes ``{module: {param: shape}}`` -> one entry per parameter.
        image_size: timm's test input size (``test_input_size`` of its pretrained cfg).
        crop_pct: timm's evaluation crop fraction.
        num_params: timm's parameter count with 1,000 classes.
        interpolation: timm's resize interpolation (all these models: ``'bicubic'``).
        mean: timm's normalization mean (all these models: ImageNet's).
        std: timm's normalization std.
    """

    timm_name: str
    architecture: str
    model_kwargs: Mapping[str, Any]
    key_map: Callable[[Shapes], list[KeyMapEntry]]
    image_size: int
    crop_pct: float
    num_params: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# ------------------------------------------------------------------- NFNet key map

# Haiku submodule of an NFNet block -> timm's (NormFreeBlock), and the layout of its `w`.
_NFNET_BLOCK_MODULES = {
    "conv0": ("conv1", "conv2d"),
    "conv1": ("conv2", "conv2d"),
    "conv1b": ("conv2b", "conv2d"),
    "conv2": ("conv3", "conv2d"),
    "conv_shortcut": ("downsample.conv", "conv2d"),
    "squeeze_excite/~/linear": ("attn_last.fc1", "linear1x1"),
    "squeeze_excite/~/linear_1": ("attn_last.fc2", "linear1x1"),
}
# Haiku parameter -> timm's, with its layout (None: the module's weight layout).
_PARAM_NAMES = {
    "w": ("weight", None),
    "gain": ("gain", "gain4d"),
    "bias": ("bias", "vector"),
    "b": ("bias", "vector"),
    "skip_gain": ("skipinit_gain", "scalar"),
}
_BLOCK = re.compile(r"^nf_block(?:_(\d+))?$")
_STEM = re.compile(r"^stem_conv(\d+)$")


def _entries(module: str, params, prefix: str, weight_layout: str) -> list[KeyMapEntry]:
    entries = []
    for name in params:
        if name not in _PARAM_NAMES:
            raise UnrecognizedCheckpointError(f"No timm name for parameter '{module}/{name}'.")
        timm_name, layout = _PARAM_NAMES[name]
        entries.append(KeyMapEntry(module, name, f"{prefix}.{timm_name}", layout or weight_layout))
    return entries


def nfnet_key_map(shapes: Shapes) -> list[KeyMapEntry]:
    """Key map of an :class:`~nfnets_jax.models.NFNet` tree to timm's ``NormFreeNet``.

    Stem convs ``stem_conv{k}`` are ``stem.conv{k+1}``; block ``nf_block_{n}`` is
    ``stages.{s}.{i}`` (a stage opens at each block with a projection shortcut), its
    ``conv0, conv1, conv1b, conv2`` are ``conv1, conv2, conv2b, conv3``, its shortcut
    ``downsample.conv``, its SE linears ``attn_last.fc1/fc2`` (1x1 convs) and its
    ``skip_gain`` ``skipinit_gain``; ``final_conv`` keeps its name and ``linear`` is
    ``head.fc``. Depths and widths are read from ``shapes``, so one map serves F0..F7.

    Raises:
        UnrecognizedCheckpointError: a module or parameter with no timm name.
    """
    blocks: dict[int, tuple[str, str]] = {}
    entries: list[KeyMapEntry] = []
    for module, params in shapes.items():
        top, _, rest = module.partition("/~/")
        child, _, sub = rest.partition("/~/")
        if (match := _STEM.match(child)) and not sub:
            prefix = f"stem.conv{int(match.group(1)) + 1}"
            entries += _entries(module, params, prefix, "conv2d")
        elif child == "final_conv" and not sub:
            entries += _entries(module, params, "final_conv", "conv2d")
        elif child == "linear" and not sub:
            entries += _entries(module, params, "head.fc", "linear")
        elif match := _BLOCK.match(child):
            blocks.setdefault(int(match.group(1) or 0), (f"{top}/~/{child}", ""))
        else:
            raise UnrecognizedCheckpointError(f"No timm name for module '{module}'.")
    stage, index = -1, 0
    for number in sorted(blocks):
        block, _ = blocks[number]
        if stage < 0 or f"{block}/~/conv_shortcut" in shapes:
            stage, index = stage + 1, 0
        prefix = f"stages.{stage}.{index}"
        entries += _entries(block, shapes.get(block, {}), prefix, "scalar")
        for sub, (timm_sub, layout) in _NFNET_BLOCK_MODULES.items():
            module = f"{block}/~/{sub}"
            if module in shapes:
                entries += _entries(module, shapes[module], f"{prefix}.{timm_sub}", layout)
        known = {f"{block}/~/{sub}" for sub in _NFNET_BLOCK_MODULES} | {block}
        for module in shapes:
            if module.startswith(f"{block}/~/") and module not in known:
                raise UnrecognizedCheckpointError(f"No timm name for module '{module}'.")
        index += 1
    return entries


# timm's dm_nfnet_f* pretrained cfgs (timm/models/nfnet.py `default_cfgs`, 'dm_in1k'
# tags): test_input_size and crop_pct, all bicubic with crop_mode='squash' (resize to
# floor(S / crop_pct) squared ignoring the aspect ratio, centre crop S: the project's
# 'resize_crop_<crop_pct>'). Parameter counts from timm's definitions (1,000 classes).
# timm 1.0.31 registers no dm_nfnet_f7: its row is timm's `_dm_nfnet_cfg` at F7's depths
# (8, 16, 48, 24) (a `NormFreeNet`), with DeepMind's F7 test preprocessing (608 px,
# resize 640 and crop 608: crop_pct 0.95).
_DM_NFNET_CFGS = {
    "F0": (256, 0.9, 71_489_284),
    "F1": (320, 0.91, 132_634_256),
    "F2": (352, 0.92, 193_779_228),
    "F3": (416, 0.94, 254_924_200),
    "F4": (512, 0.951, 316_069_172),
    "F5": (544, 0.954, 377_214_144),
    "F6": (576, 0.956, 438_359_116),
    "F7": (608, 0.95, 499_504_088),
}
#: timm names with a TimmModel here that timm's registry itself lacks.
NOT_IN_TIMM_REGISTRY = frozenset({"dm_nfnet_f7"})

_DM_NFNETS: dict[str, TimmModel] = {
    f"dm_nfnet_{variant.lower()}": TimmModel(
        timm_name=f"dm_nfnet_{variant.lower()}",
        architecture="NFNet",
        model_kwargs={"variant": variant, "numerics": "timm"},
        key_map=nfnet_key_map,
        image_size=size,
        crop_pct=crop_pct,
        num_params=count,
    )
    for variant, (size, crop_pct, count) in _DM_NFNET_CFGS.items()
}


# ------------------------------------------------------------- timm NF-family key map

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
        if head == "linear":
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
    se = {"squeeze_excite": "attn", "squeeze_excite_last": "attn_last"}
    if len(parts) == 3 and parts[1] in se:
        fc = {"linear": "fc1", "linear_1": "fc2"}.get(parts[2])
        return (f"{block}.{se[parts[1]]}.{fc}", _SE_PARAMS) if fc else None
    return None


def timm_family_key_map(shapes: Shapes) -> list[KeyMapEntry]:
    """One :class:`KeyMapEntry` per parameter of a ``TimmNFNet`` tree.

    Args:
        shapes: ``{module: {param: shape}}`` of the Haiku tree (shapes are not needed
            for the names; any mapping of the tree's structure works).

    Returns:
        The entries, in the tree's module order.

    Raises:
        UnrecognizedCheckpointError: a module or parameter outside timm's NF family.

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
            raise UnrecognizedCheckpointError(
                f"Parameter module {module!r} is not part of a timm NF-family model "
                "(TimmNFNet); build the model with nfnets_jax.models.TimmNFNet."
            )
        prefix, table = found
        for name in params:
            if name not in table:
                raise UnrecognizedCheckpointError(
                    f"Unexpected parameter {module!r}/{name!r}: expected {sorted(table)}."
                )
            suffix, layout = table[name]
            entries.append(KeyMapEntry(module, name, f"{prefix}.{suffix}", layout))
    return entries


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

_TIMM_FAMILY: dict[str, TimmModel] = {
    name: TimmModel(
        timm_name=name,
        architecture=name,  # registered by nfnets_jax.models.timm_nf under its timm name
        model_kwargs={},
        key_map=timm_family_key_map,
        image_size=size,
        crop_pct=crop,
        num_params=count,
    )
    for name, (count, size, crop) in _FACTS.items()
}

#: Every supported timm model, by timm name: DeepMind's NFNets, then timm's own family.
TIMM_MODELS: dict[str, TimmModel] = {**_DM_NFNETS, **_TIMM_FAMILY}

#: The timm-family names (models of :mod:`nfnets_jax.models.timm_nf`).
TIMM_FAMILY_NAMES: tuple[str, ...] = tuple(_TIMM_FAMILY)

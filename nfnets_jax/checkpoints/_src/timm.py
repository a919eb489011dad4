"""timm's NFNet weights in and out: state dicts <-> Haiku trees, from one table of models.

`timm <https://github.com/huggingface/pytorch-image-models>`_ (PyTorch) ports DeepMind's
NFNets as ``dm_nfnet_f0`` .. ``dm_nfnet_f6`` and has NF family models of its own. Each is
described once, by a :class:`TimmModel` in :data:`TIMM_MODELS`: the project model it is,
its key map (one :class:`KeyMapEntry` per Haiku parameter: the state-dict key and the
:data:`LAYOUTS` transform between the two layouts) and timm's evaluation preprocessing.
Everything else here is generic and works from those entries alone:

* :func:`read_timm_file` reads a ``.safetensors`` file (the ``safetensors`` package's
  numpy API, no torch) or a ``.pth`` file (``torch.load(weights_only=True)``, only when
  torch is installed);
* :func:`match_timm_state_dict` recognises which model a state dict is (and its number
  of classes), listing every difference when it is almost one;
* :func:`timm_to_haiku` and :func:`haiku_to_timm` convert exactly (transposes and
  reshapes only: a round trip gives the same bits);
* :func:`save_timm` writes a ``.safetensors`` file that ``timm.create_model(name,
  pretrained=True, pretrained_cfg_overlay=dict(file=path))`` loads with ``strict=True``;
* :func:`timm_model_spec` is the :class:`~nfnets_jax.checkpoints.ModelSpec` of a timm
  model: the architecture with ``numerics='timm'`` (timm's weight-standardization
  epsilon and exact GELU, see :data:`nfnets_jax.models.nfnet.NUMERICS`) and timm's test
  size and crop fraction.

Facts about timm are those of timm 1.0.31 (``timm/models/nfnet.py``: ``_dm_nfnet_cfg``,
``default_cfgs``; ``timm/layers/std_conv.py``: ``ScaledStdConv2dSame``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nfnets_jax.checkpoints._src.fitting import CheckpointMismatchError
from nfnets_jax.checkpoints._src.formats import CheckpointFormatError
from nfnets_jax.checkpoints._src.infer import UnrecognizedCheckpointError
from nfnets_jax.checkpoints._src.spec import ModelSpec
from nfnets_jax.data import imagenet

__all__ = [
    "LAYOUTS",
    "TIMM_EXTENSIONS",
    "TIMM_MODELS",
    "KeyMapEntry",
    "Layout",
    "TimmFileError",
    "TimmMismatchError",
    "TimmModel",
    "UnsupportedTimmModelError",
    "haiku_to_timm",
    "is_timm_file",
    "match_haiku_tree",
    "match_timm_state_dict",
    "nfnet_key_map",
    "read_timm_file",
    "save_timm",
    "timm_model_spec",
    "timm_to_haiku",
]

#: File extensions read as timm state dicts.
TIMM_EXTENSIONS = (".safetensors", ".pth")
# timm's IMAGENET_DEFAULT_MEAN / _STD (timm/data/constants.py), the project's too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Below this share of a model's keys a state dict is "another model", above it "this model
# with differences" (a missing or extra tensor, a reshaped one).
_SAME_MODEL_KEY_SHARE = 0.5


class TimmFileError(CheckpointFormatError):
    """A timm file that cannot be read (corrupt, truncated, or .pth without torch)."""


class UnsupportedTimmModelError(UnrecognizedCheckpointError):
    """A state dict of a timm model this project has no counterpart for."""


class TimmMismatchError(CheckpointMismatchError):
    """A state dict that is almost a supported timm model: every difference is listed."""


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
        interpolation: timm's resize interpolation (``'bicubic'`` ...).
        mean: timm's normalization mean.
        std: timm's normalization std.
        num_params: timm's parameter count with 1,000 classes.
    """

    timm_name: str
    architecture: str
    model_kwargs: Mapping[str, Any]
    key_map: Callable[[Shapes], list[KeyMapEntry]]
    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_params: int


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

#: Every supported timm model, by timm name.
TIMM_MODELS: dict[str, TimmModel] = {
    f"dm_nfnet_{variant.lower()}": TimmModel(
        timm_name=f"dm_nfnet_{variant.lower()}",
        architecture="NFNet",
        model_kwargs={"variant": variant, "numerics": "timm"},
        key_map=nfnet_key_map,
        image_size=size,
        crop_pct=crop_pct,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_params=count,
    )
    for variant, (size, crop_pct, count) in _DM_NFNET_CFGS.items()
}


# ------------------------------------------------------------------------- matching


@functools.lru_cache(maxsize=64)
def _haiku_shapes(timm_name: str, num_classes: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """The Haiku tree's shapes of a model (traced abstractly, cached)."""
    model = TIMM_MODELS[timm_name]
    spec = ModelSpec(model.architecture, dict(model.model_kwargs), num_classes, 64, "resize")
    return {
        module: {name: tuple(int(d) for d in leaf.shape) for name, leaf in params.items()}
        for module, params in spec.abstract_params().items()
    }


def _is_head(entry: KeyMapEntry) -> bool:
    # The classifier `<Top>/~/linear` (the convention of checkpoints.head_classes).
    return (
        entry.name == "w" and entry.module.count("/~/") == 1 and entry.module.endswith("/~/linear")
    )


def _timm_shapes(entries: list[KeyMapEntry], shapes: Shapes) -> dict[str, tuple[int, ...]]:
    return {
        e.timm_key: tuple(LAYOUTS[e.layout].timm_shape(shapes[e.module][e.name])) for e in entries
    }


def _differences(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> list[str]:
    lines = [f"  missing: {k} {expected[k]}" for k in expected if k not in found]
    lines += [f"  unexpected: {k} {found[k]}" for k in found if k not in expected]
    lines += [
        f"  mis-shaped: {k}: file {found[k]} vs {expected[k]}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    return lines


def _candidates(total: int) -> list[TimmModel]:
    # Models whose 1,000-class size is the file's first: most files have 1,000 classes,
    # and each other candidate costs an abstract trace of its network.
    models = list(TIMM_MODELS.values())
    return sorted(models, key=lambda m: m.num_params != total)


def _supported() -> str:
    return ", ".join(TIMM_MODELS)


def match_timm_state_dict(
    state_dict: Mapping[str, Any], timm_name: str | None = None
) -> tuple[TimmModel, int]:
    """Which supported timm model a state dict is, and its number of classes.

    Args:
        state_dict: ``{key: array}`` (only shapes are read).
        timm_name: the model to check against, instead of recognising it.

    Returns:
        ``(model, num_classes)``.

    Raises:
        UnsupportedTimmModelError: no supported model has (most of) these keys; the
            message lists the supported names.
        TimmMismatchError: the keys are mostly one model's but some are missing,
            unexpected or mis-shaped; the message lists every difference.
    """
    found = {k: tuple(int(d) for d in np.shape(v)) for k, v in state_dict.items()}
    if timm_name is not None and timm_name not in TIMM_MODELS:
        raise UnsupportedTimmModelError(
            f"timm model {timm_name!r} is not supported. Supported: {_supported()}."
        )
    models = (
        [TIMM_MODELS[timm_name]]
        if timm_name
        else _candidates(sum(int(np.prod(s)) for s in found.values()))
    )
    closest = None
    for model in models:
        entries = model.key_map(_haiku_shapes(model.timm_name, 1000))
        keys = {e.timm_key for e in entries}
        share = len(keys & found.keys()) / len(keys)
        if share < _SAME_MODEL_KEY_SHARE and timm_name is None:
            continue
        head = next(e for e in entries if _is_head(e))
        num_classes = 1000
        if len(found.get(head.timm_key, ())) == 2:
            # Haiku's head is (features, classes): invert the layout of the file's shape.
            probe = np.broadcast_to(np.float32(0), found[head.timm_key])
            num_classes = int(LAYOUTS[head.layout].from_timm(probe).shape[-1])
        shapes = _haiku_shapes(model.timm_name, num_classes)
        differences = _differences(_timm_shapes(model.key_map(shapes), shapes), found)
        if not differences:
            return model, num_classes
        if closest is None or len(differences) < len(closest[1]):
            closest = (model, differences)
    if closest is None:
        sample = ", ".join(list(found)[:3])
        raise UnsupportedTimmModelError(
            f"This state dict ({len(found)} tensors: {sample}, ...) is no timm model this "
            f"project supports. Supported timm names: {_supported()}."
        )
    model, differences = closest
    raise TimmMismatchError(
        f"The state dict looks like timm's {model.timm_name} but does not match it "
        f"({len(differences)} differences):\n" + "\n".join(differences) + "\nThe file is "
        "incomplete or from a modified model: re-save it from timm's unmodified "
        f"{model.timm_name} (model.state_dict())."
    )


def match_haiku_tree(params: Mapping[str, Mapping[str, Any]]) -> TimmModel:
    """The supported timm model whose project tree ``params`` is (any number of classes).

    Raises:
        UnsupportedTimmModelError: no supported timm model has this tree (e.g. a narrow
            NFNet, or an F0+); the message lists the supported names.
    """
    shapes = {
        m: {n: tuple(int(d) for d in np.shape(v)) for n, v in p.items()} for m, p in params.items()
    }
    heads = [m for m in shapes if m.count("/~/") == 1 and m.endswith("/~/linear")]
    if len(heads) == 1 and "w" in shapes[heads[0]]:
        features, classes = shapes[heads[0]]["w"]
        total = sum(int(np.prod(s)) for p in shapes.values() for s in p.values())
        total += (features + 1) * (1000 - classes)  # its size with 1,000 classes
        for model in TIMM_MODELS.values():
            # Equal trees have equal sizes: only a model of this size is traced.
            if model.num_params == total and _haiku_shapes(model.timm_name, classes) == shapes:
                return model
    raise UnsupportedTimmModelError(
        "This parameter tree is none of the timm models this project converts "
        f"({_supported()}): only the standard variants have timm counterparts."
    )


# ----------------------------------------------------------------------- converting


def _contiguous(array: np.ndarray) -> np.ndarray:
    # C order for writing (np.ascontiguousarray would turn a 0-d skip gain into (1,)).
    return array if array.flags.c_contiguous else np.array(array, order="C")


def timm_to_haiku(
    state_dict: Mapping[str, Any], timm_name: str | None = None
) -> tuple[dict[str, dict[str, np.ndarray]], TimmModel, int]:
    """A timm state dict as the project's parameter tree (exact, float32).

    The arrays are views of ``state_dict``'s where the layout allows (transposes).

    Args:
        state_dict: ``{key: array}`` (numpy arrays or torch tensors' ``.numpy()``).
        timm_name: the model, instead of recognising it (:func:`match_timm_state_dict`).

    Returns:
        ``(params, model, num_classes)``: ``params`` is ``{module: {param: array}}``.

    Example:
        >>> state_dict = read_timm_file('dm_nfnet_f0.safetensors')  # doctest: +SKIP
        >>> params, model, classes = timm_to_haiku(state_dict)  # doctest: +SKIP
        >>> model.timm_name, model.model_kwargs  # doctest: +SKIP
        ('dm_nfnet_f0', {'variant': 'F0', 'numerics': 'timm'})
    """
    model, num_classes = match_timm_state_dict(state_dict, timm_name)
    params: dict[str, dict[str, np.ndarray]] = {}
    for entry in model.key_map(_haiku_shapes(model.timm_name, num_classes)):
        value = np.asarray(state_dict[entry.timm_key], np.float32)
        params.setdefault(entry.module, {})[entry.name] = LAYOUTS[entry.layout].from_timm(value)
    return params, model, num_classes


def haiku_to_timm(
    params: Mapping[str, Mapping[str, Any]], timm_name: str | None = None
) -> tuple[dict[str, np.ndarray], TimmModel]:
    """The project's parameter tree as a timm state dict (exact, float32).

    The arrays are views of ``params``' where the layout allows (transposes); torch's
    ``torch.from_numpy`` and :func:`save_timm` take them as they are.

    Args:
        params: ``{module: {param: array}}`` of a model with a timm counterpart.
        timm_name: the timm model, instead of recognising it (:func:`match_haiku_tree`).

    Returns:
        ``(state_dict, model)``.
    """
    if timm_name is not None and timm_name not in TIMM_MODELS:
        raise UnsupportedTimmModelError(
            f"timm model {timm_name!r} is not supported. Supported: {_supported()}."
        )
    shapes = {m: {n: tuple(np.shape(v)) for n, v in p.items()} for m, p in params.items()}
    model = TIMM_MODELS[timm_name] if timm_name else match_haiku_tree(params)
    state_dict = {}
    for entry in model.key_map(shapes):
        value = np.asarray(params[entry.module][entry.name], np.float32)
        state_dict[entry.timm_key] = LAYOUTS[entry.layout].to_timm(value)
    return state_dict, model


def timm_model_spec(model: TimmModel, num_classes: int) -> ModelSpec:
    """The spec of a timm model: its project architecture (timm numerics) and eval input.

    Evaluation is timm's: ``resize_crop_<crop_pct>`` at timm's test size (timm's
    ``crop_mode='squash'``), bicubic, ImageNet mean/std.

    Example:
        >>> timm_model_spec(TIMM_MODELS['dm_nfnet_f1'], 1000).describe()
        'NFNet-F1, 1000 classes, 320 px resize_crop_0.91'
    """
    return ModelSpec(
        model=model.architecture,
        model_kwargs=dict(model.model_kwargs),
        num_classes=int(num_classes),
        image_size=model.image_size,
        eval_preproc=f"resize_crop_{model.crop_pct}",
        variant=model.model_kwargs.get("variant"),
        class_names=imagenet.class_names() if num_classes == imagenet.NUM_CLASSES else None,
    )


# ---------------------------------------------------------------------------- files


def is_timm_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read as a timm state dict (by its extension)."""
    return os.fspath(path).lower().endswith(TIMM_EXTENSIONS)


def _unwrap(checkpoint: Any) -> Mapping[str, Any]:
    # Training checkpoints wrap the state dict ({'state_dict': ...}); DataParallel
    # prefixes every key with 'module.'.
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping):
        raise TimmFileError(f"holds a {type(checkpoint).__name__}, not a state dict.")
    if checkpoint and all(str(k).startswith("module.") for k in checkpoint):
        checkpoint = {str(k)[len("module.") :]: v for k, v in checkpoint.items()}
    return checkpoint


def read_timm_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a timm state dict: ``.safetensors`` (no torch needed) or ``.pth``.

    Raises:
        TimmFileError: a corrupt or truncated file (bad header, short data), a ``.pth``
            without torch installed, or a file that holds no state dict.
    """
    path = os.fspath(path)
    if path.lower().endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises several kinds.
            raise TimmFileError(
                f"{path} is not a readable .safetensors file ({type(error).__name__}: "
                f"{str(error)[:200]}): it is corrupt or truncated; download or save it again."
            ) from None
    try:
        import torch
    except ImportError:
        raise TimmFileError(
            f"{path} is a PyTorch file, which needs torch to read (`pip install torch`). "
            "Or convert it where torch is installed: safetensors.torch.save_file("
            "torch.load(path, weights_only=True), 'model.safetensors')."
        ) from None
    try:
        checkpoint = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except TimmFileError as error:
        raise TimmFileError(f"{path} {error}") from None
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for bad files.
        raise TimmFileError(
            f"{path} is not a readable PyTorch state dict ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})."
        ) from None
    return {str(k): v.detach().to(torch.float32).numpy() for k, v in checkpoint.items()}


def save_timm(
    params: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    timm_name: str | None = None,
) -> TimmModel:
    """Writes a project tree as a timm ``.safetensors`` state dict.

    ``timm.create_model(model.timm_name, pretrained=True,
    pretrained_cfg_overlay=dict(file=path))`` loads it (strict); pass
    ``num_classes=`` too for another number of classes than 1,000.

    Args:
        params: ``{module: {param: array}}`` of a model with a timm counterpart.
        path: the file to write (``.safetensors``).
        timm_name: the timm model, instead of recognising it from the tree.

    Returns:
        The :class:`TimmModel` written.

    Example:
        >>> save_timm(load_params('F0_haiku.npz'), 'dm_nfnet_f0.safetensors')  # doctest: +SKIP
    """
    from safetensors.numpy import save_file

    state_dict, model = haiku_to_timm(params, timm_name)
    state_dict = {key: _contiguous(value) for key, value in state_dict.items()}
    save_file(state_dict, os.fspath(path), metadata={"format": "pt", "timm_name": model.timm_name})
    return model

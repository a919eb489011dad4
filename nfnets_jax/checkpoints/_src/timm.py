"""timm's NF weights in and out: state dicts <-> Haiku trees, from one table of models.

`timm <https://github.com/huggingface/pytorch-image-models>`_ (PyTorch) ports DeepMind's
NFNets as ``dm_nfnet_f0`` .. ``dm_nfnet_f6`` and has NF family models of its own
(``eca_nfnet_l0``, ``nf_resnet50``, ``nf_regnet_b1`` ...). Each is described once, by a
:class:`TimmModel` in :data:`TIMM_MODELS` (:mod:`~nfnets_jax.checkpoints._src.timm_models`):
the project model it is, its key map (one :class:`KeyMapEntry` per Haiku parameter: the
state-dict key and the :data:`LAYOUTS` transform between the two layouts) and timm's
evaluation preprocessing. Everything here is generic and works from those entries alone:

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
  model: the project architecture (for ``dm_nfnet_*`` with ``numerics='timm'``: timm's
  weight-standardization epsilon and exact GELU, see
  :data:`nfnets_jax.models.nfnet.NUMERICS`) and timm's test size and crop fraction.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from nfnets_jax.checkpoints._src.fitting import CheckpointMismatchError
from nfnets_jax.checkpoints._src.formats import CheckpointFormatError
from nfnets_jax.checkpoints._src.infer import UnrecognizedCheckpointError
from nfnets_jax.checkpoints._src.spec import ModelSpec
from nfnets_jax.checkpoints._src.timm_models import (
    LAYOUTS,
    NOT_IN_TIMM_REGISTRY,
    TIMM_FAMILY_NAMES,
    TIMM_MODELS,
    KeyMapEntry,
    Layout,
    Shapes,
    TimmModel,
    nfnet_key_map,
    timm_family_key_map,
)
from nfnets_jax.data import imagenet

__all__ = [
    "LAYOUTS",
    "NOT_IN_TIMM_REGISTRY",
    "TIMM_EXTENSIONS",
    "TIMM_FAMILY_NAMES",
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
    "timm_family_key_map",
    "timm_model_spec",
    "timm_to_haiku",
]

#: File extensions read as timm state dicts.
TIMM_EXTENSIONS = (".safetensors", ".pth")
# Below this share of a model's keys a state dict is "another model", above it "this model
# with differences" (a missing or extra tensor, a reshaped one).
_SAME_MODEL_KEY_SHARE = 0.5


class TimmFileError(CheckpointFormatError):
    """A timm file that cannot be read (corrupt, truncated, or .pth without torch)."""


class UnsupportedTimmModelError(UnrecognizedCheckpointError):
    """A state dict of a timm model this project has no counterpart for."""


class TimmMismatchError(CheckpointMismatchError):
    """A state dict that is almost a supported timm model: every difference is listed."""


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
        >>> import jax, numpy as np
        >>> spec = timm_model_spec(TIMM_MODELS['nf_regnet_b0'], 10)
        >>> zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), spec.abstract_params())
        >>> state_dict, _ = haiku_to_timm(zeros)
        >>> state_dict['head.fc.weight'].shape  # torch's (out, in)
        (10, 960)
        >>> params, model, classes = timm_to_haiku(state_dict)
        >>> model.timm_name, classes, params['TimmNFNet/~/linear']['w'].shape
        ('nf_regnet_b0', 10, (960, 10))
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
        >>> timm_model_spec(TIMM_MODELS['nf_regnet_b0'], 10).describe()
        'nf_regnet_b0, 10 classes, 256 px resize_crop_0.9'
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
        >>> import os, tempfile, jax, numpy as np
        >>> spec = timm_model_spec(TIMM_MODELS['nf_regnet_b0'], 10)
        >>> zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), spec.abstract_params())
        >>> path = os.path.join(tempfile.mkdtemp(), 'nf_regnet_b0.safetensors')
        >>> save_timm(zeros, path).timm_name
        'nf_regnet_b0'
        >>> read_timm_file(path)['stem.conv.weight'].shape  # torch's (O, I, H, W)
        (40, 3, 3, 3)
    """
    from safetensors.numpy import save_file

    state_dict, model = haiku_to_timm(params, timm_name)
    state_dict = {key: _contiguous(value) for key, value in state_dict.items()}
    save_file(state_dict, os.fspath(path), metadata={"format": "pt", "timm_name": model.timm_name})
    return model

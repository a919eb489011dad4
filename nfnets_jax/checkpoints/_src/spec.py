"""What a parameter checkpoint holds: the network, its classes and its test-time input.

A :class:`ModelSpec` is enough to rebuild the network a checkpoint belongs to (a
registry name, constructor keyword arguments and the number of classes) and to feed it
(test resolution and evaluation preprocessing), with optional class names. Specs come
from, most reliable first:

1. a run directory's ``config.json`` (the config that trained it): :func:`spec_from_config`;
2. the JSON sidecar ``<checkpoint>.json`` that ``experiments.export`` writes next to an
   exported file: :func:`read_sidecar`;
3. the parameter tree alone, for DeepMind's released files which carry nothing else:
   :func:`~nfnets_jax.checkpoints.infer_model_spec` (module ``.infer``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import models
from nfnets_jax.checkpoints._src.formats import CheckpointFormatError
from nfnets_jax.models import nfnet as nfnet_lib

__all__ = [
    "ModelSpec",
    "read_sidecar",
    "sidecar_path",
    "spec_from_config",
    "write_sidecar",
]

# The sidecar's format tag (kept from the module that first wrote it, so old exports load).
SIDECAR_FORMAT = "nfnets_jax.model_spec"
SIDECAR_VERSION = 1
# NFNet evaluation: resize to (S + 32)^2 then centre crop S (spec section 6.4).
NFNET_EVAL_PREPROC = "resize_crop_32"
# NF-ResNets and NF-RegNets: padded centre crop then resize (their presets, spec 6.4).
CROP_RESIZE = "crop_resize"
NF_RESNET_TEST_SIZE = 224  # experiments/configs/nf_resnet.py
# Fallback test size for NFNets of no known depth: F0's (spec section 1.1).
DEFAULT_NFNET_TEST_SIZE = nfnet_lib.nfnet_params["F0"]["test_imsize"]
# Keyword arguments that change the architecture away from the named variant.
_STRUCTURAL_KWARGS = (
    "width_pattern",
    "depth_pattern",
    "expansion",
    "group_width",
    "big_width",
    "stem_widths",
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to rebuild and feed the network of a checkpoint.

    Attributes:
        model: registry name (``'NFNet'``, ``'NF_ResNet'``, ``'NF_RegNet'``, ...).
        model_kwargs: constructor keyword arguments besides ``num_classes``.
        num_classes: classifier outputs.
        image_size: test resolution S.
        eval_preproc: evaluation preprocessing (``'resize_crop_32'`` for NFNets).
        variant: the standard variant the tree is exactly (``'F0'``, ``'F3+'``,
            ``'ResNet50'``, ``'B2'``), or None for other architectures.
        class_names: one name per class, or None when unknown.
        dataset: the dataset it was trained on, when known.
    """

    model: str
    model_kwargs: Mapping[str, Any]
    num_classes: int
    image_size: int
    eval_preproc: str
    variant: str | None = None
    class_names: tuple[str, ...] | None = None
    dataset: str | None = None

    def __post_init__(self):
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for a model with {self.num_classes} classes."
            )

    def describe(self) -> str:
        """One line, e.g. ``'NFNet-F0, 1000 classes, 256 px resize_crop_32'``.

        A model with no variant is ``'<model> (custom)'``, unless it has no keyword
        arguments either (a fixed architecture such as ``'eca_nfnet_l0'``).
        """
        if self.variant:
            name = f"{self.model}-{self.variant}"
        else:
            name = self.model if not self.model_kwargs else f"{self.model} (custom)"
        return f"{name}, {self.num_classes} classes, {self.image_size} px {self.eval_preproc}"

    def build(self, *, compute_dtype: Any = None, conv_impl: str | None = None):
        """The network as ``hk.transform_with_state(forward)``, ``forward(images, is_training)``.

        Args:
            compute_dtype: activation dtype (None: float32; ``jnp.bfloat16`` on TPU/GPU).
            conv_impl: convolution lowering, overriding the spec's (``'auto'``...).
        """
        kwargs = dict(self.model_kwargs)
        if conv_impl is not None:
            kwargs["conv_impl"] = conv_impl
        return models.transform_model(
            self.model, self.num_classes, kwargs, compute_dtype=compute_dtype
        )

    def abstract_variables(self) -> tuple[hk.Params, hk.State]:
        """Parameters and state as ``jax.ShapeDtypeStruct`` trees (nothing is allocated)."""
        transformed = self.build()
        # Parameter shapes do not depend on the resolution: trace at a small one.
        images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        return jax.eval_shape(
            lambda key, x: transformed.init(key, x, is_training=False), jax.random.key(0), images
        )

    def abstract_params(self) -> hk.Params:
        """The parameter tree as ``jax.ShapeDtypeStruct`` leaves (nothing is allocated)."""
        return self.abstract_variables()[0]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the sidecar's content)."""
        return {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "model": self.model,
            "model_kwargs": _jsonable(dict(self.model_kwargs)),
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "eval_preproc": self.eval_preproc,
            "variant": self.variant,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "dataset": self.dataset,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "model spec") -> ModelSpec:
        """Inverse of :meth:`to_json`; a malformed spec raises ``CheckpointFormatError``."""
        if data.get("format") != SIDECAR_FORMAT:
            raise CheckpointFormatError(
                f"{source}: not an nfnets_jax model spec (no format field)."
            )
        try:
            names = data.get("class_names")
            return cls(
                model=str(data["model"]),
                model_kwargs=dict(data["model_kwargs"]),
                num_classes=int(data["num_classes"]),
                image_size=int(data["image_size"]),
                eval_preproc=str(data["eval_preproc"]),
                variant=data.get("variant"),
                class_names=tuple(str(n) for n in names) if names is not None else None,
                dataset=data.get("dataset"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointFormatError(f"{source}: malformed model spec ({error}).") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------- sidecars


def sidecar_path(checkpoint_path: str | os.PathLike) -> str:
    """Where the spec of ``checkpoint_path`` lives: the same path plus ``.json``."""
    return os.fspath(checkpoint_path) + ".json"


def write_sidecar(spec: ModelSpec, checkpoint_path: str | os.PathLike) -> str:
    """Writes ``spec`` next to a checkpoint file and returns the sidecar's path."""
    path = sidecar_path(checkpoint_path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec.to_json(), f, indent=2)
        f.write("\n")
    return path


def read_sidecar(checkpoint_path: str | os.PathLike) -> ModelSpec | None:
    """The spec written next to ``checkpoint_path``, or None if there is none."""
    path = sidecar_path(checkpoint_path)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise CheckpointFormatError(f"{path}: not valid JSON ({error}).") from None
    return ModelSpec.from_json(data, source=path)


# ---------------------------------------------------------------------- from configs


def spec_from_config(
    config: Mapping[str, Any],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
) -> ModelSpec:
    """The spec of a model trained with an experiment config (a dict or ``ConfigDict``).

    Args:
        config: the run's config (``model``, ``model_kwargs``, ``dataset.eval_image_size``,
            ``dataset.eval_preproc``, ``dataset.name``).
        num_classes: the classifier's outputs.
        class_names: the dataset's class names, if known.

    Example:
        >>> from experiments import configs
        >>> spec_from_config(configs.load_config('nfnet_f1'), 1000).describe()
        'NFNet-F1, 1000 classes, 320 px resize_crop_32'
    """
    kwargs = {str(k): v for k, v in dict(config["model_kwargs"]).items()}
    kwargs.pop("compute_dtype", None)  # a training choice; evaluation runs in float32.
    structural = any(kwargs.get(key) is not None for key in _STRUCTURAL_KWARGS)
    variant = None if structural else kwargs.get("variant")
    dataset = config["dataset"]
    return ModelSpec(
        model=str(config["model"]),
        model_kwargs=kwargs,
        num_classes=int(num_classes),
        image_size=int(dataset["eval_image_size"]),
        eval_preproc=str(dataset["eval_preproc"]),
        variant=variant,
        class_names=tuple(class_names) if class_names is not None else None,
        dataset=str(dataset["name"]),
    )

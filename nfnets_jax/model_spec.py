"""What a parameter checkpoint holds: the network, its classes and its test-time input.

A :class:`ModelSpec` is enough to rebuild the network a checkpoint belongs to (a
registry name, constructor keyword arguments and the number of classes) and to feed it
(test resolution and evaluation preprocessing), with optional class names. Specs come
from, most reliable first:

1. a run directory's ``config.json`` (the config that trained it): :func:`spec_from_config`;
2. the JSON sidecar ``<checkpoint>.json`` that ``experiments.export`` writes next to an
   exported file: :func:`read_sidecar`;
3. the parameter tree alone, for DeepMind's released files which carry nothing else:
   :func:`infer_model_spec`.

Inference reads shapes only. For NFNets it recovers every structural option from the
tree (stage widths and depths from the conv shapes and the projection shortcuts that
open each stage, group widths, bottleneck ratios, stem widths, SE ratio, final conv
width, classes) and names the variant when the tree is exactly one of F0-F7 / F0+-F7+
(F0-F6 have 94, 178, 262, 346, 430, 514 and 598 modules: ``6 + 7 * blocks + 4``, spec
section 3.1). NF-ResNets and NF-RegNets are matched against their variants with the
constructor defaults. What no tree records (the activation, ``alpha``) takes the
defaults every released and preset model uses.

References:
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171.
    Brock, De, Smith. Characterizing signal propagation to close the performance gap in
    unnormalized ResNets. arXiv:2101.08692.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import imagenet, models
from nfnets_jax.errors import NFNetsError
from nfnets_jax.models import nfnet as nfnet_lib
from nfnets_jax.weights import CheckpointFormatError

__all__ = [
    "ModelSpec",
    "UnrecognizedCheckpointError",
    "head_classes",
    "infer_model_spec",
    "read_sidecar",
    "sidecar_path",
    "spec_from_config",
    "write_sidecar",
]

SIDECAR_FORMAT = "nfnets_jax.model_spec"
SIDECAR_VERSION = 1
# NFNet evaluation: resize to (S + 32)^2 then centre crop S (spec section 6.4).
NFNET_EVAL_PREPROC = "resize_crop_32"
# NF-ResNets and NF-RegNets: padded centre crop then resize (their presets, spec 6.4).
CROP_RESIZE = "crop_resize"
NF_RESNET_TEST_SIZE = 224  # experiments/configs/nf_resnet.py
# Fallback test size for NFNets of no known depth: F0's (spec section 1.1).
DEFAULT_NFNET_TEST_SIZE = nfnet_lib.nfnet_params["F0"]["test_imsize"]
# NFNet defaults the tree is compared with (arXiv:2102.06171 Table 1 and Appendix C; the
# constructor defaults of nfnets_jax.models.NFNet).
DEFAULT_GROUP_WIDTH = 128
DEFAULT_EXPANSION = 0.5
DEFAULT_SE_RATIO = 0.5
DEFAULT_FINAL_MULT = 2.0
# Keyword arguments that change the architecture away from the named variant.
_STRUCTURAL_KWARGS = (
    "width_pattern",
    "depth_pattern",
    "expansion",
    "group_width",
    "big_width",
    "stem_widths",
)


class UnrecognizedCheckpointError(NFNetsError, ValueError):
    """The parameter tree is not one this project can rebuild; the message says why."""


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
        """One line, e.g. ``'NFNet-F0, 1000 classes, 256 px resize_crop_32'``."""
        name = f"{self.model}-{self.variant}" if self.variant else f"{self.model} (custom)"
        return f"{name}, {self.num_classes} classes, {self.image_size} px {self.eval_preproc}"

    def build(self, *, compute_dtype: Any = None, conv_impl: str | None = None):
        """The network as ``hk.transform_with_state(forward)``, ``forward(images, is_training)``.

        Args:
            compute_dtype: activation dtype (None: float32; ``jnp.bfloat16`` on TPU/GPU).
            conv_impl: grouped-convolution lowering, overriding the spec's (``'auto'``...).
        """
        model_cls = models.get_model(self.model)
        kwargs = dict(self.model_kwargs)
        if compute_dtype is not None:
            kwargs["compute_dtype"] = compute_dtype
        if conv_impl is not None:
            kwargs["conv_impl"] = conv_impl

        def forward(images, is_training):
            net = model_cls(num_classes=self.num_classes, **kwargs)
            return net(images, is_training=is_training)

        return hk.transform_with_state(forward)

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


# ------------------------------------------------------------------- from the tree


def _shape(params, module: str, name: str = "w") -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in params[module][name].shape)
    except KeyError:
        raise UnrecognizedCheckpointError(
            f"The checkpoint has no '{module}/{name}', which this architecture needs: it is "
            "incomplete or from another model."
        ) from None


def head_classes(params: Mapping[str, Mapping[str, Any]]) -> int:
    """Number of classes of a tree: the output width of its classifier ``<Top>/~/linear``.

    Raises:
        UnrecognizedCheckpointError: no (single) classifier in the tree.
    """
    heads = [m for m in params if m.count("/~/") == 1 and m.endswith("/~/linear")]
    if len(heads) != 1:
        raise UnrecognizedCheckpointError(
            "Cannot find the classifier '<Top>/~/linear' in the parameters "
            f"({len(heads)} candidates)."
        )
    return int(params[heads[0]]["w"].shape[-1])


def _blocks(params, top: str, block_name: str) -> list[str]:
    """Block module paths in numeric order (``nf_block``, ``nf_block_1``, ...)."""
    pattern = re.compile(rf"^{re.escape(top)}/~/{block_name}(?:_(\d+))?$")
    found = {}
    for module in params:
        match = pattern.match(module)
        if match:
            found[int(match.group(1) or 0)] = module
    missing = sorted(set(range(len(found))) - set(found))
    if missing:
        names = [f"{block_name}_{i}" if i else block_name for i in missing[:5]]
        raise UnrecognizedCheckpointError(
            f"Blocks {', '.join(names)} are missing from "
            f"the checkpoint ({len(found)} blocks found): the file is incomplete."
        )
    return [found[i] for i in range(len(found))]


def _ratio(part: int, whole: int, roundtrip, default: float) -> float:
    """A ratio r with ``roundtrip(r)`` true: the default if it fits, else ``part / whole``."""
    for candidate in (default, part / whole, (part + 0.5) / whole):
        if roundtrip(candidate):
            return candidate
    return part / whole


def _one_or_many(values: Sequence[Any]) -> Any:
    return values[0] if len(set(values)) == 1 else tuple(values)


def _imagenet_names(num_classes: int) -> tuple[str, ...] | None:
    # 1,000 outputs: assume ImageNet's classes, which every released checkpoint has.
    return imagenet.class_names() if num_classes == imagenet.NUM_CLASSES else None


def _width_pattern(widths: list[int], stem_out: int) -> tuple[list[int], float]:
    """Stage widths before the ``width`` multiplier, and the multiplier.

    Blocks have ``int(width_pattern[s] * width)`` channels while the stem's last conv has
    ``width_pattern[0] // 2`` (no multiplier), which pins the multiplier down.
    """
    if stem_out == widths[0] // 2:
        return list(widths), 1.0
    for first in (2 * stem_out, 2 * stem_out + 1):
        width = widths[0] / first
        pattern = [first] + [round(w / width) for w in widths[1:]]
        if all(int(p * width) == w for p, w in zip(pattern, widths, strict=True)):
            return pattern, width
    raise UnrecognizedCheckpointError(
        f"stem_conv3 has {stem_out} channels, which no width multiplier reconciles with the "
        f"stage widths {widths}: not an NFNet tree."
    )


def _infer_nfnet(params, top: str) -> ModelSpec:
    blocks = _blocks(params, top, "nf_block")
    if not blocks:
        raise UnrecognizedCheckpointError(f"'{top}' has no nf_block modules.")
    stage_of, widths, depths, group_widths, bottlenecks = [], [], [], [], []
    for index, block in enumerate(blocks):
        conv1 = _shape(params, f"{block}/~/conv1")  # (k, k, group_width, bottleneck)
        out_ch = _shape(params, f"{block}/~/conv2")[-1]
        # Every stage opens with a projection shortcut (stride 2, or a width change).
        if index == 0 or f"{block}/~/conv_shortcut" in params:
            widths.append(out_ch)
            depths.append(0)
            group_widths.append(conv1[2])
            bottlenecks.append(conv1[3])
        elif out_ch != widths[-1]:
            raise UnrecognizedCheckpointError(
                f"{block} outputs {out_ch} channels in a stage of width {widths[-1]} without "
                "a projection shortcut: not an NFNet tree."
            )
        depths[-1] += 1
        stage_of.append(len(widths) - 1)
    if len(depths) > len(nfnet_lib.STAGE_STRIDES):
        raise UnrecognizedCheckpointError(f"'{top}' has {len(depths)} stages; NFNets have 1-4.")

    stem = tuple(_shape(params, f"{top}/~/stem_conv{i}")[-1] for i in range(4))
    pattern, width = _width_pattern(widths, stem[3])
    expansions = [
        _ratio(b, w, lambda e, b=b, w=w, g=g: int(w * e) // g * g == b, DEFAULT_EXPANSION)
        for b, w, g in zip(bottlenecks, widths, group_widths, strict=True)
    ]
    se_hidden = _shape(params, f"{blocks[0]}/~/squeeze_excite/~/linear")[-1]
    se_ratio = _ratio(
        se_hidden, widths[0], lambda r: max(1, int(widths[0] * r)) == se_hidden, DEFAULT_SE_RATIO
    )
    final_ch = _shape(params, f"{top}/~/final_conv")[-1]
    final_mult = _ratio(
        final_ch, widths[-1], lambda m: int(m * widths[-1]) == final_ch, DEFAULT_FINAL_MULT
    )
    num_classes = _shape(params, f"{top}/~/linear")[-1]

    variant = next(
        (
            name
            for name, p in nfnet_lib.nfnet_params.items()
            if list(p["width"]) == pattern and list(p["depth"]) == depths
        ),
        None,
    )
    kwargs: dict[str, Any] = {"variant": variant or "F0"}
    if variant is None:
        kwargs.update(width_pattern=tuple(pattern), depth_pattern=tuple(depths))
    if width != 1.0:
        kwargs["width"] = width
    if stem[:3] != tuple(nfnet_lib.STEM_WIDTHS):
        kwargs["stem_widths"] = stem[:3]
    if any(g != DEFAULT_GROUP_WIDTH for g in group_widths):
        kwargs["group_width"] = _one_or_many(group_widths)
    if any(e != DEFAULT_EXPANSION for e in expansions):
        kwargs["expansion"] = _one_or_many(expansions)
    if se_ratio != DEFAULT_SE_RATIO:
        kwargs["se_ratio"] = se_ratio
    if f"{blocks[0]}/~/conv1b" not in params:
        kwargs["use_two_convs"] = False
    if int(final_mult * widths[-1]) != final_ch:
        kwargs.update(final_conv_mult=None, final_conv_ch=final_ch)
    elif final_mult != DEFAULT_FINAL_MULT:
        kwargs["final_conv_mult"] = final_mult
    exact = variant if len(kwargs) == 1 else None
    same_depth = next(
        (p for p in nfnet_lib.nfnet_params.values() if list(p["depth"]) == depths), None
    )
    image_size = same_depth["test_imsize"] if same_depth else DEFAULT_NFNET_TEST_SIZE
    if top != "NFNet":
        kwargs["name"] = top
    return ModelSpec(
        model="NFNet",
        model_kwargs=kwargs,
        num_classes=num_classes,
        image_size=image_size,
        eval_preproc=NFNET_EVAL_PREPROC,
        variant=exact,
        class_names=_imagenet_names(num_classes),
    )


def _flat_shapes(params) -> dict[str, tuple[int, ...]]:
    return {
        f"{m}/{n}": tuple(int(d) for d in v.shape)
        for m, sub in params.items()
        for n, v in sub.items()
    }


def _match_variants(params, top: str, model: str, block_name: str) -> ModelSpec:
    """Tries each variant of an NF-ResNet/NF-RegNet family with the constructor defaults."""
    model_cls = models.get_model(model)
    num_blocks = len(_blocks(params, top, block_name))
    num_classes = _shape(params, f"{top}/~/linear")[-1]
    target = _flat_shapes(params)
    tried = []
    for variant, table in model_cls.variant_dict.items():
        if sum(table["depth"]) != num_blocks:
            continue
        tried.append(variant)
        image_size = table.get("test_imsize", NF_RESNET_TEST_SIZE)
        spec = ModelSpec(
            model=model,
            model_kwargs={"variant": variant},
            num_classes=num_classes,
            image_size=image_size,
            eval_preproc=CROP_RESIZE,
            variant=variant,
            class_names=_imagenet_names(num_classes),
        )
        if _flat_shapes(spec.abstract_params()) == target:
            return spec
    raise UnrecognizedCheckpointError(
        f"This {model} tree ({num_blocks} blocks) matches none of its variants with default "
        f"options (tried: {', '.join(tried) or 'none with that many blocks'}). Pass the "
        "architecture explicitly (model_kwargs, or a .json spec beside the file)."
    )


def infer_model_spec(params: Mapping[str, Mapping[str, Any]]) -> ModelSpec:
    """Recognises the network of a parameter tree from its shapes.

    Args:
        params: ``{module: {param: array}}``; only ``.shape`` of the leaves is read, so
            ``jax.ShapeDtypeStruct`` trees work too.

    Returns:
        The spec: for NFNets every structural option recovered from the tree and, when the
        tree is exactly a standard variant, its name and test resolution (other NFNets
        get the test size of the variant of the same depth, else F0's 256); NF-ResNets at
        224 px and NF-RegNets at their variant's size, both with ``'crop_resize'``.
        1,000-class trees get ImageNet's class names.

    Raises:
        UnrecognizedCheckpointError: an unknown top module, missing modules, or a tree that
            matches no NF-ResNet/NF-RegNet variant.

    Example:
        >>> from nfnets_jax.weights import load_params
        >>> spec = infer_model_spec(load_params('F0_haiku.npz'))  # doctest: +SKIP

        A fresh F0's tree of shapes (``jax.eval_shape``: nothing computed) is recognised
        the same way as DeepMind's released ``F0_haiku.npz``:

        >>> net = hk.transform(lambda x: models.NFNet(1000, variant='F0')(x, is_training=False))
        >>> params = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 192, 192, 3)))
        >>> spec = infer_model_spec(params)
        >>> spec.variant, spec.image_size, spec.eval_preproc
        ('F0', 256, 'resize_crop_32')
    """
    if not isinstance(params, Mapping) or not params:
        raise UnrecognizedCheckpointError("The checkpoint holds no parameters.")
    tops = sorted({module.split("/~/")[0] for module in params})
    if len(tops) != 1:
        raise UnrecognizedCheckpointError(
            f"The checkpoint mixes several top-level modules ({', '.join(tops[:5])}); "
            "expected one network."
        )
    top = tops[0]
    if f"{top}/~/stem_conv0" in params:
        return _infer_nfnet(params, top)
    if top == "NF_ResNet":
        return _match_variants(params, top, "NF_ResNet", "nf_res_block")
    if top == "NF_RegNet":
        return _match_variants(params, top, "NF_RegNet", "nf_block")
    raise UnrecognizedCheckpointError(
        f"Top-level module {top!r} is not an NFNet ('NFNet/~/stem_conv0' ...), NF-ResNet "
        "('NF_ResNet/...') or NF-RegNet ('NF_RegNet/...'). Pass the model and its options "
        "explicitly, or a .json spec beside the file."
    )

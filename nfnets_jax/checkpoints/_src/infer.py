"""The network of a bare parameter tree: DeepMind's released files carry nothing else.

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

import re
from collections.abc import Mapping, Sequence
from typing import Any

from nfnets_jax import models
from nfnets_jax.checkpoints._src.spec import (
    CROP_RESIZE,
    DEFAULT_NFNET_TEST_SIZE,
    NF_RESNET_TEST_SIZE,
    NFNET_EVAL_PREPROC,
    ModelSpec,
)
from nfnets_jax.data import imagenet
from nfnets_jax.errors import NFNetsError
from nfnets_jax.models import nfnet as nfnet_lib

__all__ = ["UnrecognizedCheckpointError", "head_classes", "infer_model_spec"]

# NFNet defaults the tree is compared with (arXiv:2102.06171 Table 1 and Appendix C; the
# constructor defaults of nfnets_jax.models.NFNet).
DEFAULT_GROUP_WIDTH = 128
DEFAULT_EXPANSION = 0.5
DEFAULT_SE_RATIO = 0.5
DEFAULT_FINAL_MULT = 2.0


class UnrecognizedCheckpointError(NFNetsError, ValueError):
    """The parameter tree is not one this project can rebuild; the message says why."""


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
        >>> from nfnets_jax.checkpoints import load_params
        >>> spec = infer_model_spec(load_params('F0_haiku.npz'))  # doctest: +SKIP

        A fresh F0's tree of shapes (``jax.eval_shape``: nothing computed) is recognised
        the same way as DeepMind's released ``F0_haiku.npz``:

        >>> import haiku as hk, jax, jax.numpy as jnp
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

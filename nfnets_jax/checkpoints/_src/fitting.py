"""Fitting a checkpoint to a model: the one check every consumer of weights goes through.

Pretrained loading, evaluation, fine-tuning (``init_from``) and distillation teachers all
read a :class:`~nfnets_jax.checkpoints.LoadedCheckpoint` and call
:func:`fit_checkpoint` with the trees the model expects (real or ``jax.eval_shape``
ones). It checks every parameter at once (ONE :class:`CheckpointMismatchError` lists
every missing, unexpected and mis-shaped leaf), optionally re-initialises a classifier
of another size for fine-tuning, and separates the Haiku state (BatchNorm running
statistics) from the parameters: a run directory carries it apart, a file written by
:func:`~nfnets_jax.checkpoints.save_model_variables` beside the parameters.

Typical fine-tuning flow::

    forward = hk.transform_with_state(lambda x: NFNet(10, 'F0')(x, is_training=True))
    expected_params, expected_state = forward.init(rng, dummy_images)
    fitted = fit_checkpoint(load_checkpoint('F0_haiku.npz'), expected_params,
                            expected_state, target='NFNet-F0 (10 classes)',
                            replace_head=True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from nfnets_jax.checkpoints._src.formats import flatten_params, unflatten_params
from nfnets_jax.errors import NFNetsError

__all__ = [
    "CheckpointMismatchError",
    "FittedVariables",
    "MergeResult",
    "fit_checkpoint",
    "validate_and_merge",
]


class CheckpointMismatchError(NFNetsError, ValueError):
    """Loaded parameters do not fit the model: lists every missing/extra/mis-shaped leaf."""


class MergeResult(NamedTuple):
    """What :func:`validate_and_merge` returns.

    Attributes:
        params: ``{module: {param: np.ndarray}}`` in the model's expected dtypes.
        replaced: ``'module/param'`` paths that were freshly initialised (head).
    """

    params: dict[str, dict[str, np.ndarray]]
    replaced: list[str]


class FittedVariables(NamedTuple):
    """What :func:`fit_checkpoint` returns.

    Attributes:
        params: host parameters in the model's dtypes (None with ``check_only``).
        state: host Haiku state (``{}`` for stateless models; None with ``check_only``,
            or when ``state_required=False`` and the checkpoint holds none).
        replaced: classifier paths re-initialised by ``replace_head``.
    """

    params: dict[str, dict[str, np.ndarray]] | None
    state: dict[str, dict[str, np.ndarray]] | None
    replaced: list[str]


def _is_head(path: str) -> bool:
    """The classifier: ``<Top>/~/linear/{w,b}`` (a direct child of the top module)."""
    module, _, name = path.rpartition("/")
    parts = module.split("/~/")
    return len(parts) == 2 and parts[1] == "linear" and name in ("w", "b")


def _only_classes_differ(loaded: tuple, expected: tuple) -> bool:
    return len(loaded) == len(expected) and loaded[:-1] == expected[:-1]


def _default_head_init(rng: jax.Array, path: str, shape: tuple, dtype: Any) -> np.ndarray:
    if path.endswith("/b"):
        return np.zeros(shape, dtype)
    # NFNet / NF-ResNet classifier init: N(0, 0.01), untruncated (spec section 2.8).
    return np.asarray(0.01 * jax.random.normal(rng, shape), dtype)


def _fit(
    flat_loaded: Mapping[str, Any], flat_expected: Mapping[str, Any], replace_head: bool
) -> tuple[list[str], list[str]]:
    """``(paths loaded as they are, head paths to re-initialise)``, or the mismatch error."""
    missing, misshaped, kept, replaced = [], [], [], []
    for path in sorted(flat_expected):
        shape = tuple(flat_expected[path].shape)
        if path in flat_loaded:
            value = flat_loaded[path]
            if tuple(np.shape(value)) == shape:
                if not np.issubdtype(np.asarray(value).dtype, np.number):
                    misshaped.append(f"{path}: dtype {np.asarray(value).dtype} is not numeric")
                else:
                    kept.append(path)
                continue
            if replace_head and _is_head(path) and _only_classes_differ(np.shape(value), shape):
                replaced.append(path)
                continue
            misshaped.append(f"{path}: checkpoint {tuple(np.shape(value))} vs model {shape}")
        elif replace_head and _is_head(path):
            replaced.append(path)
        else:
            missing.append(f"{path} {shape}")
    unexpected = [
        f"{path} {tuple(np.shape(flat_loaded[path]))}"
        for path in sorted(flat_loaded)
        if path not in flat_expected
    ]
    if missing or unexpected or misshaped:
        lines = [f"Checkpoint does not match the model ({len(flat_expected)} parameters):"]
        for title, items in (
            ("missing from the checkpoint", missing),
            ("unexpected in the checkpoint", unexpected),
            ("mis-shaped", misshaped),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        head_differs = any(_is_head(item.split(" ")[0].rstrip(":")) for item in misshaped + missing)
        if head_differs and not replace_head:
            lines.append(
                "The classifier head differs (another num_classes?): pass replace_head=True "
                "to re-initialise it for fine-tuning."
            )
        else:
            lines.append(
                "Check that the model variant and options (width, depth, se_ratio...) match "
                "the checkpoint."
            )
        raise CheckpointMismatchError("\n".join(lines))
    return kept, replaced


def validate_and_merge(
    loaded: Mapping[str, Mapping[str, Any]],
    expected: Mapping[str, Mapping[str, Any]],
    *,
    replace_head: bool = False,
    rng: jax.Array | None = None,
) -> MergeResult:
    """Checks loaded parameters against the model's tree and returns them ready to use.

    Every expected leaf must be present with the expected shape and no extra leaf may be
    present; otherwise ONE :class:`CheckpointMismatchError` lists all missing, unexpected
    and mis-shaped leaves. Loaded values are cast to the expected dtypes.

    With ``replace_head=True`` the classifier (``<Top>/~/linear/w`` and ``/b``) is
    re-initialised when the checkpoint's number of classes differs (or the head is
    absent), for fine-tuning: values come from ``expected`` if it holds real arrays (e.g.
    ``forward.init(...)``), else ``w ~ N(0, 0.01)`` drawn with ``rng`` and ``b = 0``.

    Args:
        loaded: ``{module: {param: array}}``, e.g. from :func:`load_params`.
        expected: the model's tree: real params, or ``jax.eval_shape(forward.init, ...)``.
        replace_head: re-initialise a classifier whose number of classes differs.
        rng: key for the new head when ``expected`` is abstract.

    Returns:
        ``MergeResult(params, replaced)``: ``{module: {param: np.ndarray}}`` in expected
        dtypes, and the ``'module/param'`` paths that were re-initialised.

    Raises:
        CheckpointMismatchError: the trees differ (the message lists every difference).

    Example:
        >>> expected = {'M/~/linear': {'w': np.zeros((4, 10)), 'b': np.zeros(10)}}
        >>> loaded = {'M/~/linear': {'w': np.ones((4, 1000)), 'b': np.ones(1000)}}
        >>> validate_and_merge(loaded, expected, replace_head=True).replaced
        ['M/~/linear/b', 'M/~/linear/w']
    """
    flat_loaded = flatten_params(loaded)
    flat_expected = flatten_params(expected)
    kept, replaced = _fit(flat_loaded, flat_expected, replace_head)
    return MergeResult(_merge(flat_loaded, flat_expected, kept, replaced, rng), replaced)


def _merge(flat_loaded, flat_expected, kept, replaced, rng) -> dict[str, dict[str, np.ndarray]]:
    """The loaded leaves in the expected dtypes, with fresh values for ``replaced``."""
    merged = {
        path: np.asarray(flat_loaded[path]).astype(flat_expected[path].dtype) for path in kept
    }
    if replaced:
        concrete = all(not isinstance(flat_expected[p], jax.ShapeDtypeStruct) for p in replaced)
        if not concrete and rng is None:
            raise ValueError(
                "replace_head needs fresh values: pass rng=jax.random.key(...) or real "
                "initial parameters (forward.init(...)) as `expected`."
            )
        keys = (
            {}
            if concrete
            else dict(zip(replaced, jax.random.split(rng, len(replaced)), strict=True))
        )
        for path in replaced:
            spec = flat_expected[path]
            if concrete:
                merged[path] = np.array(jax.device_get(spec))
            else:
                merged[path] = _default_head_init(keys[path], path, tuple(spec.shape), spec.dtype)
    return unflatten_params(merged)


def _head_classes(flat: Mapping[str, Any]) -> int | None:
    heads = [path for path in flat if _is_head(path) and path.endswith("/w")]
    return int(np.shape(flat[heads[0]])[-1]) if len(heads) == 1 else None


def fit_checkpoint(
    loaded: Any,
    expected_params: Mapping[str, Mapping[str, Any]],
    expected_state: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    target: str,
    replace_head: bool = False,
    rng: jax.Array | None = None,
    state_required: bool = True,
    check_only: bool = False,
    hint: str = "",
) -> FittedVariables:
    """Fits a loaded checkpoint to a model's parameter and state trees.

    Args:
        loaded: a :class:`~nfnets_jax.checkpoints.LoadedCheckpoint` (``params``,
            ``model_state``: None for files, ``description``).
        expected_params: the model's parameters, real or ``jax.eval_shape`` ones.
        expected_state: the model's Haiku state (None or empty: stateless).
        target: the model, for messages (``'the model being trained'``...).
        replace_head: re-initialise a classifier whose number of classes differs
            (values from ``expected_params`` when real, else drawn with ``rng``).
        rng: key for a new head when ``expected_params`` is abstract.
        state_required: raise when the model keeps state the checkpoint lacks; with
            False the returned ``state`` is None and the caller keeps its own.
        check_only: check without copying any array (start-up validation).
        hint: a line appended to a mismatch message (what the caller can change).

    Returns:
        The :class:`FittedVariables`.

    Raises:
        CheckpointMismatchError: the checkpoint does not fit; the message names the
            checkpoint and ``target`` and lists every difference.

    Example:
        >>> from nfnets_jax.checkpoints import LoadedCheckpoint
        >>> expected = {'M/~/linear': {'w': np.zeros((4, 10)), 'b': np.zeros(10)}}
        >>> loaded = LoadedCheckpoint({'M/~/linear': {'w': np.ones((4, 3)), 'b': np.ones(3)}},
        ...                           None, None, 'f.npz', 'parameter file f.npz')
        >>> fit_checkpoint(loaded, expected, target='M', replace_head=True).replaced
        ['M/~/linear/b', 'M/~/linear/w']
    """
    flat_expected_state = flatten_params(expected_state or {})
    params_tree, state_tree = loaded.params, loaded.model_state
    if state_tree is None:  # a file: any state is stored beside the parameters
        flat = flatten_params(params_tree)
        state_part = {k: v for k, v in flat.items() if k in flat_expected_state}
        params_tree = unflatten_params({k: v for k, v in flat.items() if k not in state_part})
        state_tree = unflatten_params(state_part) if state_part else None
    if flat_expected_state and state_tree is None and state_required:
        example = sorted(flat_expected_state)[0]
        raise CheckpointMismatchError(
            f"{target} keeps state ({len(flat_expected_state)} entries, e.g. {example!r}: "
            f"BatchNorm running statistics) that {loaded.description} does not hold: use "
            "the training run directory, or a file written with "
            "nfnets_jax.checkpoints.save_model_variables(params, state, path)."
        )
    flat_loaded = flatten_params(params_tree)
    flat_expected = flatten_params(expected_params)
    try:
        kept, replaced = _fit(flat_loaded, flat_expected, replace_head)
    except CheckpointMismatchError as error:
        classes, wanted = _head_classes(flat_loaded), _head_classes(flat_expected)
        what = (
            f"{loaded.description} classifies {classes} classes but {target} has {wanted}"
            if not replace_head and None not in (classes, wanted) and classes != wanted
            else f"{loaded.description} does not fit {target}"
        )
        extra = f"\n{hint}" if hint else ""
        raise CheckpointMismatchError(f"{what}.{extra}\n{error}") from None
    if check_only:
        return FittedVariables(None, None, replaced)
    params = _merge(flat_loaded, flat_expected, kept, replaced, rng)
    state = None
    if state_tree is not None and (flat_expected_state or flatten_params(state_tree)):
        try:
            state = validate_and_merge(state_tree, expected_state or {}).params
        except CheckpointMismatchError as error:
            raise CheckpointMismatchError(
                f"The state (BatchNorm statistics) of {loaded.description} does not fit "
                f"{target}.\n{error}"
            ) from None
    elif not flat_expected_state:
        state = {}
    return FittedVariables(params, state, replaced)

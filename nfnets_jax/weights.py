"""Parameter checkpoints: DeepMind's pickle layout and ``.npz`` archives, with validation.

DeepMind's released ``{V}_haiku.npz`` files (``https://storage.googleapis.com/dm-nfnets/
{V}_haiku.npz``, V = F0..F6) are **not** numpy archives: they are dill pickles of a
two-level mapping ``{module_path: {param_name: float32 ndarray}}`` (2021 Haiku may have
pickled the outer containers as ``haiku._src.data_structures.FlatMapping``). Unpickling
runs code chosen by the file, so :func:`load_params` uses a restricted unpickler that only
resolves plain containers, what numpy arrays/dtypes/scalars need (under numpy 1.x
``numpy.core`` and 2.x ``numpy._core`` names, plain ``pickle`` and ``dill`` encodings) and
Haiku's legacy mapping types (rebuilt as plain dicts). Anything else (e.g. ``os.system``
smuggled through ``__reduce__``) is refused before it can run.

Also supported: ``.npz`` archives whose keys are flattened paths ``'module/param'`` (or
DeepMind's dotted ``flatten_haiku_tree`` keys), and writing both formats; the pickle
written here loads with plain ``pickle``/``dill`` in DeepMind's code and with this module.

Typical fine-tuning flow::

    forward = hk.transform(lambda x: NFNet(10, 'F0')(x, is_training=True))
    expected = forward.init(rng, dummy_images)            # or jax.eval_shape(...)
    params, replaced = validate_and_merge(load_params('F0_haiku.npz'), expected,
                                          replace_head=True)
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from nfnets_jax.errors import NFNetsError

FORMATS = ("pickle", "npz")

# Where numpy keeps its pickle helpers: `numpy._core` since 2.0, `numpy.core` before.
try:
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]


class UnsafePickleError(NFNetsError, pickle.UnpicklingError):
    """The file asked to import something a parameter checkpoint never needs."""


class CheckpointFormatError(NFNetsError, ValueError):
    """A file that is not a readable parameter checkpoint (wrong format, truncated, no tree)."""


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


# --------------------------------------------------------------------------- reading


def _legacy_mapping(*args: Any, **kwargs: Any) -> dict:
    """Stands in for Haiku's FlatMapping/FlatMap/frozendict: they reduce to ``(cls, (d,))``."""
    return dict(*args, **kwargs)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(str, 'latin1')``; only that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}.")
    return text.encode("latin1")


def _dill_create_array(f: Callable, args: tuple, state: tuple, npdict: Any = None) -> np.ndarray:
    """Rebuilds what ``dill._dill._create_array`` encodes: ``f(*args)`` then setstate."""
    if f not in (_np_multiarray._reconstruct, np.ndarray):
        raise UnsafePickleError("dill array record with an unexpected constructor.")
    if npdict:
        raise UnsafePickleError("dill array record carries extra attributes; refusing it.")
    array = f(*args)
    array.__setstate__(state)
    return array


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("dill._dill", "_create_array"): _dill_create_array,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _np_multiarray._reconstruct
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _np_multiarray.scalar
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _np_numeric._frombuffer
for _name in ("FlatMapping", "FlatMap", "frozendict"):
    _ALLOWED_GLOBALS[("haiku._src.data_structures", _name)] = _legacy_mapping


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle '{module}.{name}'. A parameter "
                "checkpoint only needs dicts, lists, strings, numbers and numpy arrays (plus "
                "Haiku's legacy FlatMapping), so this file is not one, or it pickled other "
                "objects. Nothing from it was executed. If you trust the file, load it with "
                "the code that wrote it and re-save the parameters with "
                "nfnets_jax.weights.save_params(params, path, format='npz')."
            ) from None


def _to_leaf(value: Any, where: str) -> np.ndarray:
    if isinstance(value, (np.ndarray, np.generic, float, int)) and not isinstance(value, bool):
        array = np.asarray(value)
        if not array.flags.writeable:  # e.g. views onto the pickle's bytes.
            array = array.copy()
        if array.dtype.kind in "fiu":
            return array
    raise CheckpointFormatError(
        f"{where}: expected a numeric array, got {type(value).__name__}"
        f"{' of dtype ' + str(value.dtype) if hasattr(value, 'dtype') else ''}."
    )


def _normalize_tree(tree: Any, source: str) -> dict[str, dict[str, np.ndarray]]:
    """Checks the two-level layout and returns plain dicts of numpy arrays."""
    if not isinstance(tree, Mapping):
        raise CheckpointFormatError(
            f"{source}: expected a mapping {{module_path: {{param: array}}}}, got "
            f"{type(tree).__name__}."
        )
    out: dict[str, dict[str, np.ndarray]] = {}
    for module, params in tree.items():
        if not isinstance(module, str) or not isinstance(params, Mapping):
            raise CheckpointFormatError(
                f"{source}: entry {module!r} is not 'module_path -> {{param: array}}' "
                f"(got {type(params).__name__})."
            )
        out[module] = {}
        for name, value in params.items():
            out[module][str(name)] = _to_leaf(value, f"{source}: {module}/{name}")
    return out


def _split_flat_key(key: str) -> tuple[str, str]:
    if "/" in key:
        module, _, name = key.rpartition("/")
    else:  # DeepMind's `flatten_haiku_tree`: 'NFNet.nf_block.conv0.w'.
        parts = key.split(".")
        module, name = "/~/".join(parts[:-1]), parts[-1]
    if not module or not name:
        raise CheckpointFormatError(f"npz key {key!r} is not 'module_path/param_name'.")
    return module, name


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{'module/param': x}`` -> ``{'module': {'param': x}}`` (dotted keys accepted too).

    Example:
        >>> unflatten_params({'NFNet/~/linear/w': 1, 'NFNet/~/linear/b': 2})
        {'NFNet/~/linear': {'w': 1, 'b': 2}}
    """
    tree: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        module, name = _split_flat_key(key)
        tree.setdefault(module, {})[name] = value
    return tree


def flatten_params(params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{'module': {'param': x}}`` -> ``{'module/param': x}``.

    Example:
        >>> flatten_params({'NFNet/~/linear': {'w': 1}})
        {'NFNet/~/linear/w': 1}
    """
    return {f"{m}/{n}": v for m, sub in params.items() for n, v in sub.items()}


def load_params(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Reads a parameter checkpoint, safely, in either supported format.

    The format is detected from the content (DeepMind's pickles are named ``.npz``): a
    zip archive is read as ``.npz`` with flattened keys, anything else as a pickle through
    the restricted unpickler.

    Args:
        path: a DeepMind ``{V}_haiku.npz`` pickle, a pickle written by
            :func:`save_params`, or a real ``.npz`` archive.

    Returns:
        ``{module_path: {param_name: np.ndarray}}`` (writable numpy arrays).

    Raises:
        UnsafePickleError: the pickle references anything but containers and arrays.
        CheckpointFormatError: the content is not a two-level mapping of numeric
            arrays (not a checkpoint, truncated, unreadable archive).
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> params = load_params('F0_haiku.npz')  # doctest: +SKIP
        >>> params['NFNet/~/stem_conv0']['w'].shape  # doctest: +SKIP
        (3, 3, 3, 16)
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        try:
            with np.load(path, allow_pickle=False) as archive:
                flat = {key: archive[key] for key in archive.files}
        except ValueError as e:  # e.g. object arrays, which would need pickle
            raise CheckpointFormatError(f"{path}: could not read the .npz archive ({e}).") from e
        return _normalize_tree(unflatten_params(flat), path)
    with open(path, "rb") as f:
        head = f.read(8)
        if not head.startswith(b"\x80"):
            raise CheckpointFormatError(
                f"{path}: neither a zip (.npz) archive nor a binary pickle (first bytes "
                f"{head!r}). Is it a partial download?"
            )
        f.seek(0)
        try:
            # Streams from the file: a multi-GB checkpoint is never held twice in memory.
            tree = _RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # Malformed or truncated streams raise many error types.
            raise CheckpointFormatError(
                f"{path}: could not read the pickle ({e!r}). Is it truncated?"
            ) from e
    return _normalize_tree(tree, path)


# --------------------------------------------------------------------------- writing


def _array_for_saving(value: Any, where: str) -> np.ndarray:
    array = np.asarray(jax.device_get(value))
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{where}: only floating parameters can be saved, got {array.dtype}.")
    # Checkpoints are float32, as DeepMind's (bfloat16 has no portable numpy dtype).
    return np.asarray(array, dtype=np.float32, order="C")  # (keeps 0-d shapes)


def _reduce_ndarray(array: np.ndarray):
    # `numpy.ndarray(shape, dtype, buffer)` resolves under every numpy version (numpy 2's
    # default reduce names `numpy._core`, which numpy 1.x cannot import).
    array = np.asarray(array, order="C")
    return np.ndarray, (array.shape, array.dtype.str, array.tobytes())


class _PortablePickler(pickle.Pickler):
    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            return _reduce_ndarray(obj)
        return NotImplemented


def save_params(
    params: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    format: str = "pickle",
) -> None:
    """Writes parameters in DeepMind's pickle layout or as a flattened ``.npz`` archive.

    Args:
        params: ``{module_path: {param_name: array}}`` (a Haiku params tree).
        path: destination; written atomically (temporary file, then rename).
        format: ``'pickle'`` (default): a plain pickle (protocol 4) of
            ``{module: {param: float32 ndarray}}``, readable by DeepMind's ``dill.load`` and
            by :func:`load_params`; ``'npz'``: a numpy archive with ``'module/param'`` keys.

    Example:
        >>> out = tempfile.TemporaryDirectory()
        >>> path = os.path.join(out.name, 'p.pkl')
        >>> save_params({'NFNet/~/linear': {'w': np.ones((2, 3))}}, path)
        >>> load_params(path)['NFNet/~/linear']['w'].dtype
        dtype('float32')
        >>> out.cleanup()
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    if not isinstance(params, Mapping) or not all(
        isinstance(sub, Mapping) for sub in params.values()
    ):
        raise ValueError("params must be a two-level mapping {module_path: {param: array}}.")
    tree = {
        str(m): {str(n): _array_for_saving(v, f"{m}/{n}") for n, v in sub.items()}
        for m, sub in params.items()
    }
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_params_")
    try:
        with os.fdopen(fd, "wb") as f:
            if format == "pickle":
                _PortablePickler(f, protocol=4).dump(tree)
            else:
                np.savez(f, **flatten_params(tree))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ------------------------------------------------------------------------ validation


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


def check_fit(
    loaded: Mapping[str, Mapping[str, Any]],
    expected: Mapping[str, Mapping[str, Any]],
    *,
    replace_head: bool = False,
) -> list[str]:
    """Checks that loaded parameters fit the model's tree, without copying anything.

    The same check as :func:`validate_and_merge`, for start-up validation: `expected`
    may be abstract (``jax.eval_shape``) and nothing is allocated.

    Returns:
        The ``'module/param'`` paths of a classifier that ``replace_head=True`` would
        re-initialise (empty when the checkpoint's head fits).

    Raises:
        CheckpointMismatchError: the trees differ (the message lists every difference).

    Example:
        >>> expected = {'M/~/linear': {'w': np.zeros((4, 10)), 'b': np.zeros(10)}}
        >>> check_fit({'M/~/linear': {'w': np.ones((4, 10)), 'b': np.ones(10)}}, expected)
        []
    """
    return _fit(flatten_params(loaded), flatten_params(expected), replace_head)[1]


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
    return MergeResult(unflatten_params(merged), replaced)


def load_and_merge(
    path: str | os.PathLike,
    expected: Mapping[str, Mapping[str, Any]],
    *,
    replace_head: bool = False,
    rng: jax.Array | None = None,
) -> MergeResult:
    """:func:`load_params` then :func:`validate_and_merge` (same arguments).

    Example:
        >>> params, replaced = load_and_merge('F0_haiku.npz', expected)  # doctest: +SKIP
    """
    return validate_and_merge(load_params(path), expected, replace_head=replace_head, rng=rng)

"""Parameter files: DeepMind's pickle layout and ``.npz`` archives, read safely and written.

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

Whether the parameters fit a model is checked by :mod:`.fitting`.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

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
                "nfnets_jax.checkpoints.save_params(params, path, format='npz')."
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


def save_model_variables(
    params: Mapping[str, Mapping[str, Any]],
    state: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    format: str = "npz",
) -> None:
    """Writes parameters and Haiku state together, e.g. a BatchNorm model for distillation.

    The file is :func:`save_params`' format with each module's state entries (``mean``,
    ``var``, ...) next to its parameters; :func:`~nfnets_jax.checkpoints.fit_checkpoint`
    separates them again with the model's state tree.

    Raises:
        ValueError: a module has a parameter and a state entry of the same name.

    Example:
        >>> import tempfile
        >>> out = tempfile.TemporaryDirectory()
        >>> path = os.path.join(out.name, 'teacher.npz')
        >>> save_model_variables({'m': {'w': np.ones(2)}}, {'m': {'mean': np.zeros(2)}}, path)
        >>> sorted(load_params(path)['m'])
        ['mean', 'w']
        >>> out.cleanup()
    """
    merged: dict[str, dict[str, Any]] = {m: dict(v) for m, v in params.items()}
    for module, entries in state.items():
        target = merged.setdefault(module, {})
        clash = sorted(set(target) & set(entries))
        if clash:
            raise ValueError(
                f"Module {module!r} has parameters and state both named {clash}; they cannot "
                "share one file."
            )
        target.update(entries)
    save_params(merged, path, format=format)

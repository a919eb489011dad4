"""Parameters from any checkpoint this project meets, with the spec of their network.

Three kinds of source, told apart by what is on disk:

* DeepMind's released ``{V}_haiku.npz`` files (pickles of ``{module: {param: array}}``)
  and pickles written by :func:`~nfnets_jax.checkpoints.save_params`;
* ``.npz`` archives with ``'module/param'`` keys;
* timm state dicts (``.safetensors``, ``.pth``) of the models in
  :data:`~nfnets_jax.checkpoints.TIMM_MODELS` (module ``.timm``), converted to the
  project's tree, with a spec of timm's numerics and evaluation preprocessing;
* a run directory of ``nfnets_jax.training`` (``config.json`` + orbax ``checkpoints/``),
  or its ``checkpoints/`` directory. Its parameters are read without the run's config or
  optimizer state (a partial orbax restore into numpy), raw or EMA.

Files may carry a ``<file>.json`` spec (written by :func:`export_run`); run directories
get theirs from ``config.json``. :func:`load_checkpoint` returns the parameters with that
spec (None for bare released files: see :func:`~nfnets_jax.checkpoints.infer_model_spec`).
No TensorFlow is imported except to name the classes of a tfds dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from nfnets_jax.checkpoints._src import released
from nfnets_jax.checkpoints._src import timm as timm_lib
from nfnets_jax.checkpoints._src.formats import (
    CheckpointFormatError,
    flatten_params,
    load_params,
    save_params,
    unflatten_params,
)
from nfnets_jax.checkpoints._src.infer import head_classes
from nfnets_jax.checkpoints._src.spec import (
    ModelSpec,
    read_sidecar,
    spec_from_config,
    write_sidecar,
)
from nfnets_jax.data.class_names import dataset_class_names
from nfnets_jax.errors import NFNetsError

__all__ = [
    "CheckpointNotFoundError",
    "LoadedCheckpoint",
    "checkpoint_directory",
    "export_run",
    "is_run_directory",
    "load_checkpoint",
    "read_run",
]

_HOW_TO_GET_WEIGHTS = (
    "Download DeepMind's ImageNet weights (F0..F6) with e.g. `wget "
    + released.WEIGHTS_URL.format(variant="F0")
    + "`, or pass a file written by `python -m experiments.export` or a training run "
    "directory."
)


class CheckpointNotFoundError(NFNetsError, FileNotFoundError):
    """No checkpoint at the given path; the message says where to get one."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """Host (numpy) parameters read from a checkpoint.

    Attributes:
        params: ``{module: {param: np.ndarray}}``.
        model_state: Haiku state of a run (empty for NF models), None for files.
        spec: the network's spec from a run's config or a file's sidecar, else None.
        source: the path read.
        description: a short human-readable account (kind, step, EMA or raw).
        step: the training step of a run checkpoint, else None.
        ema: True if EMA parameters were read, False for raw ones, None for files.
    """

    params: dict[str, dict[str, np.ndarray]]
    model_state: Any
    spec: ModelSpec | None
    source: str
    description: str
    step: int | None = None
    ema: bool | None = None


def checkpoint_directory(path: str | os.PathLike) -> str | None:
    """The orbax step directory parent of a run (``RUN/checkpoints``), or None."""
    path = os.fspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints")
    if os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path)):
        return path
    return None


def is_run_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run (or its ``checkpoints/`` directory)."""
    return checkpoint_directory(path) is not None


def _read_config(run_dir: str) -> dict[str, Any] | None:
    for candidate in (run_dir, os.path.dirname(os.path.abspath(run_dir))):
        path = os.path.join(candidate, "config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
    return None


def _restore_numpy(step_dir: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """Reads the ``keys`` of a saved TrainState (as numpy), ignoring everything else.

    Through orbax's item handler, without a checkpointer: no barrier across processes,
    so on a multi-host run a host that cannot read the file cannot leave the others
    waiting for it (the run's start-up validation then stops every host together).
    """
    import jax
    import orbax.checkpoint as ocp
    from etils import epath

    state_dir = epath.Path(step_dir) / "state"
    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(state_dir)
        tree = getattr(metadata, "tree", metadata)
        wanted = {k: tree[k] for k in keys if k in tree and tree[k]}
        if not wanted:
            return {}
        item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
        restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        return handler.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
    finally:
        handler.close()


def read_run(
    path: str | os.PathLike, *, use_ema: bool = True, step: int | None = None
) -> LoadedCheckpoint:
    """Reads the parameters of a training run's newest readable (or given) checkpoint.

    Args:
        path: a run directory (with ``checkpoints/``) or its ``checkpoints/`` directory.
        use_ema: read the EMA parameters when the run kept them (its better model).
        step: a specific checkpoint step instead of the newest readable one.

    Returns:
        The parameters (EMA or raw) and model state as numpy, with the run's spec when
        its ``config.json`` is there.

    Raises:
        CheckpointNotFoundError: no checkpoint (or no such step) in ``path``.
        CheckpointFormatError: every checkpoint failed to read.

    Example:
        >>> run = read_run('/tmp/nfnet_demo')  # doctest: +SKIP
        >>> run.description  # doctest: +SKIP
        'run /tmp/nfnet_demo, step 900, EMA parameters'
    """
    path = os.path.abspath(os.fspath(path))  # orbax reads absolute paths only
    directory = checkpoint_directory(path)
    if directory is None:
        raise CheckpointNotFoundError(f"{path} is not a run directory (no checkpoints/).")
    steps = sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointNotFoundError(
                f"{directory} has no checkpoint at step {step} (it has {steps or 'none'})."
            )
        steps = [step]
    if not steps:
        raise CheckpointNotFoundError(f"{directory} holds no checkpoint yet.")
    failures = []
    for candidate in steps:
        keys = ("params", "model_state") + (("ema_params", "ema_state") if use_ema else ())
        try:
            restored = _restore_numpy(os.path.join(directory, str(candidate)), keys)
        except Exception as error:  # noqa: BLE001 - any read failure means "unusable".
            failures.append(f"step {candidate}: {type(error).__name__}: {error}"[:300])
            logging.warning("Cannot read the checkpoint at step %d: %s", candidate, error)
            continue
        if "params" not in restored:
            failures.append(f"step {candidate}: no parameters in the checkpoint")
            continue
        ema = use_ema and bool(restored.get("ema_params"))
        params = restored["ema_params"] if ema else restored["params"]
        model_state = restored.get("ema_state" if ema else "model_state") or {}
        config = _read_config(path)
        spec = None
        if config is not None:
            num_classes = head_classes(params)
            spec = spec_from_config(
                config, num_classes, class_names=_config_class_names(config, num_classes)
            )
        kind = "EMA" if ema else "raw"
        return LoadedCheckpoint(
            params=unflatten_params(flatten_params(params)),
            model_state=model_state,
            spec=spec,
            source=path,
            description=f"run {path}, step {candidate}, {kind} parameters",
            step=candidate,
            ema=ema,
        )
    raise CheckpointFormatError(
        f"No checkpoint in {directory} could be read:\n  " + "\n  ".join(failures)
    )


def _config_class_names(config: Mapping[str, Any], num_classes: int) -> tuple[str, ...] | None:
    dataset = config.get("dataset", {})
    names = dataset_class_names(str(dataset.get("name", "")), dataset.get("data_dir"))
    return names if names is not None and len(names) == num_classes else None


def load_checkpoint(source: str | os.PathLike, *, use_ema: bool = True) -> LoadedCheckpoint:
    """Reads a released file, an exported file, a timm file or a run directory.

    Args:
        source: the path.
        use_ema: for run directories, read the EMA parameters when there are some.

    Returns:
        The parameters with the spec the source records (None for bare released files;
        for timm files, the recognised model's with ``numerics='timm'`` and timm's test
        size and crop, unless a ``.json`` spec lies beside the file).

    Raises:
        CheckpointNotFoundError: nothing at ``source`` (the message says where to get
            DeepMind's weights).
        CheckpointFormatError, UnsafePickleError: unreadable or unsafe files (both
            NFNetsErrors, like every error here).
        UnsupportedTimmModelError, TimmMismatchError: a timm file of a model without a
            counterpart here, or one that differs from it (every difference listed).

    Example:
        >>> loaded = load_checkpoint('F0_haiku.npz')  # doctest: +SKIP
        >>> loaded.spec is None, len(loaded.params)  # doctest: +SKIP
        (True, 94)
    """
    path = os.fspath(source)
    if os.path.isdir(path):
        if not is_run_directory(path):
            raise CheckpointNotFoundError(
                f"{path} is a directory but not a training run (no checkpoints/ inside). "
                + _HOW_TO_GET_WEIGHTS
            )
        return read_run(path, use_ema=use_ema)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"Checkpoint {path!r} does not exist. " + _HOW_TO_GET_WEIGHTS)
    if timm_lib.is_timm_file(path):
        params, model, num_classes = timm_lib.timm_to_haiku(timm_lib.read_timm_file(path))
        spec = read_sidecar(path) or timm_lib.timm_model_spec(model, num_classes)
        return LoadedCheckpoint(
            params=params,
            model_state=None,
            spec=spec,
            source=path,
            description=f"timm file {path} ({model.timm_name})",
        )
    params = load_params(path)
    spec = read_sidecar(path)
    kind = "exported file" if spec is not None else "parameter file"
    return LoadedCheckpoint(
        params=params, model_state=None, spec=spec, source=path, description=f"{kind} {path}"
    )


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "pickle",
    use_ema: bool = True,
    step: int | None = None,
) -> tuple[LoadedCheckpoint, str | None]:
    """Writes a run's parameters as a standalone file, with its spec beside it.

    Args:
        run_dir: the training run directory.
        out: the file to write. ``format='pickle'`` is DeepMind's released layout (a
            pickle of ``{module: {param: float32 array}}``, loadable by their code and by
            :func:`~nfnets_jax.checkpoints.load_params`); ``'npz'`` a numpy archive.
        format: ``'pickle'`` or ``'npz'``.
        use_ema: export the EMA parameters when the run kept them.
        step: a specific checkpoint step instead of the newest.

    Returns:
        ``(loaded, sidecar_path)``: what was exported, and the ``<out>.json`` spec path
        (None when the run had no ``config.json``).

    Example:
        >>> export_run('/tmp/nfnet_demo', '/tmp/demo.npz')  # doctest: +SKIP
    """
    loaded = read_run(run_dir, use_ema=use_ema, step=step)
    save_params(loaded.params, out, format=format)
    sidecar = write_sidecar(loaded.spec, out) if loaded.spec is not None else None
    return loaded, sidecar

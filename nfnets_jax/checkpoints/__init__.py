"""Checkpoints: files, the networks they hold, where they come from, and fitting them.

Everything that reads or writes weights goes through this package:

* file formats (:func:`load_params`, :func:`save_params`, :func:`save_model_variables`):
  DeepMind's released ``{V}_haiku.npz`` pickles, read by a restricted unpickler that
  refuses anything but arrays and containers (:class:`UnsafePickleError`), and ``.npz``
  archives of ``'module/param'`` keys;
* the network a checkpoint holds (:class:`ModelSpec`): from a run's ``config.json``
  (:func:`spec_from_config`), the ``<file>.json`` sidecar of an export
  (:func:`read_sidecar`, :func:`write_sidecar`), or the bare tree
  (:func:`infer_model_spec`);
* the sources (:func:`load_checkpoint` -> :class:`LoadedCheckpoint`): released files,
  exports and training run directories (:func:`read_run`, :func:`export_run`);
* fitting a checkpoint to a model (:func:`fit_checkpoint`): the one check used by
  pretrained loading, evaluation, fine-tuning and distillation, which lists every
  difference in one :class:`CheckpointMismatchError`;
* DeepMind's released weights (:data:`RELEASED_VARIANTS`, :func:`released_weights_url`,
  :data:`REPORTED_ACCURACY`).

No TensorFlow is imported, except to name the classes of a tfds dataset.

Example:
    >>> from nfnets_jax import checkpoints
    >>> loaded = checkpoints.load_checkpoint('F0_haiku.npz')  # doctest: +SKIP
    >>> checkpoints.infer_model_spec(loaded.params).describe()  # doctest: +SKIP
    'NFNet-F0, 1000 classes, 256 px resize_crop_32'
"""

from nfnets_jax.checkpoints._src.fitting import (
    CheckpointMismatchError,
    FittedVariables,
    MergeResult,
    fit_checkpoint,
    validate_and_merge,
)
from nfnets_jax.checkpoints._src.formats import (
    FORMATS,
    CheckpointFormatError,
    UnsafePickleError,
    flatten_params,
    load_params,
    save_model_variables,
    save_params,
    unflatten_params,
)
from nfnets_jax.checkpoints._src.infer import (
    UnrecognizedCheckpointError,
    head_classes,
    infer_model_spec,
)
from nfnets_jax.checkpoints._src.released import (
    RELEASED_VARIANTS,
    REPORTED_ACCURACY,
    WEIGHTS_URL,
    released_weights_url,
)
from nfnets_jax.checkpoints._src.sources import (
    CheckpointNotFoundError,
    LoadedCheckpoint,
    checkpoint_directory,
    export_run,
    is_run_directory,
    load_checkpoint,
    read_run,
)
from nfnets_jax.checkpoints._src.spec import (
    ModelSpec,
    read_sidecar,
    sidecar_path,
    spec_from_config,
    write_sidecar,
)

__all__ = [
    "FORMATS",
    "RELEASED_VARIANTS",
    "REPORTED_ACCURACY",
    "WEIGHTS_URL",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "FittedVariables",
    "LoadedCheckpoint",
    "MergeResult",
    "ModelSpec",
    "UnrecognizedCheckpointError",
    "UnsafePickleError",
    "checkpoint_directory",
    "export_run",
    "fit_checkpoint",
    "flatten_params",
    "head_classes",
    "infer_model_spec",
    "is_run_directory",
    "load_checkpoint",
    "load_params",
    "read_run",
    "read_sidecar",
    "released_weights_url",
    "save_model_variables",
    "save_params",
    "sidecar_path",
    "spec_from_config",
    "unflatten_params",
    "validate_and_merge",
    "write_sidecar",
]

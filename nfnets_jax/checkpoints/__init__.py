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
* timm's weights in and out (:data:`TIMM_MODELS`, :func:`timm_to_haiku`,
  :func:`haiku_to_timm`, :func:`read_timm_file`, :func:`save_timm`): ``.safetensors`` and
  ``.pth`` state dicts of ``dm_nfnet_f0`` .., read by :func:`load_checkpoint` too;
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
from nfnets_jax.checkpoints._src.timm import (
    LAYOUTS,
    TIMM_MODELS,
    KeyMapEntry,
    TimmFileError,
    TimmMismatchError,
    TimmModel,
    UnsupportedTimmModelError,
    haiku_to_timm,
    is_timm_file,
    match_timm_state_dict,
    read_timm_file,
    save_timm,
    timm_model_spec,
    timm_to_haiku,
)

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "TIMM_MODELS",
    "RELEASED_VARIANTS",
    "REPORTED_ACCURACY",
    "WEIGHTS_URL",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "FittedVariables",
    "KeyMapEntry",
    "LoadedCheckpoint",
    "MergeResult",
    "ModelSpec",
    "TimmFileError",
    "TimmMismatchError",
    "TimmModel",
    "UnrecognizedCheckpointError",
    "UnsafePickleError",
    "UnsupportedTimmModelError",
    "checkpoint_directory",
    "export_run",
    "fit_checkpoint",
    "flatten_params",
    "haiku_to_timm",
    "head_classes",
    "infer_model_spec",
    "is_run_directory",
    "is_timm_file",
    "load_checkpoint",
    "load_params",
    "match_timm_state_dict",
    "read_run",
    "read_sidecar",
    "read_timm_file",
    "released_weights_url",
    "save_model_variables",
    "save_params",
    "save_timm",
    "sidecar_path",
    "spec_from_config",
    "timm_model_spec",
    "timm_to_haiku",
    "unflatten_params",
    "validate_and_merge",
    "write_sidecar",
]

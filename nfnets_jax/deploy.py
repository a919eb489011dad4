"""Deployable exports: a TensorFlow SavedModel and a serialized ``jax.export`` artifact.

Both hold the network of a :class:`~nfnets_jax.checkpoints.ModelSpec` with its weights,
run without this project's code, and take any batch size (the batch dimension is
symbolic). Each is a directory, with ``nfnets_jax.json`` (:func:`read_metadata`) beside
the model files: the spec (architecture, classes, class names, test size S,
preprocessing) and the input contract below.

**SavedModel** (:func:`export_saved_model`; for TF Serving, TensorFlow and TFLite), made
with ``jax2tf``. Its two signatures return ``{'logits', 'probabilities'}`` (float32
``[batch, classes]``, probabilities the softmax of the logits):

* ``serving_default(images)``: uint8 ``[batch, H, W, 3]`` RGB images of **any** size H x W
  (one size per call). Each image goes through the project's evaluation preprocessing
  inside the graph, the very function the evaluation pipeline runs on decoded images
  (:func:`nfnets_jax.data.eval_preprocess`: the spec's ``eval_preproc`` crop and TF's
  bicubic resize to S x S, then ``(x - MEAN_RGB) / STDDEV_RGB``), so it equals
  :meth:`nfnets_jax.pretrained.PretrainedModel.logits` of the same images. Decode files
  (JPEG, PNG) before the call.
* ``preprocessed(images)``: float32 ``[batch, S, S, 3]``, already preprocessed as above.

The network is a ``jax2tf`` native-serialization call (an ``XlaCallModule`` op holding
StableHLO, lowered for each of ``platforms``); the weights are SavedModel variables, so
models of any size save (no 2 GB graph limit). jax 0.10.2's ``jax2tf`` has no other mode
(its ``native_serialization`` flag is deprecated and ignored), so the graph needs
TensorFlow >= 2.21 (written and tested with 2.21) and no JAX to run.

**StableHLO** (:func:`export_stablehlo`, :func:`load_stablehlo`; for JAX programs and
StableHLO runtimes): ``model.jax_export`` (``jax.export.Exported.serialize()``) of
``f(variables, images) -> {'logits', 'probabilities'}`` with ``images`` float32
``[b, S, S, 3]`` preprocessed (``b`` symbolic), ``variables.npz`` (the weights,
``'params/<module>/<name>'`` and ``'state/<module>/<name>'`` keys, so
``dict(np.load(...))`` is the first argument) and ``model.mlir`` (the StableHLO as text).
Weights are arguments, not constants, so large models serialize too, and the same
artifact serves fine-tuned weights of the same architecture.

Example (DeepMind's F0; :func:`load_stablehlo` has a runnable one)::

    from nfnets_jax import deploy, pretrained
    import tensorflow as tf

    model = pretrained.load("F0_haiku.npz")
    deploy.export_saved_model(model.params, model.model_state, model.spec, "f0_savedmodel")
    serve = tf.saved_model.load("f0_savedmodel").signatures["serving_default"]
    serve(images=tf.zeros([2, 480, 640, 3], tf.uint8))["logits"]  # [2, 1000]

    deploy.export_stablehlo(model.params, model.model_state, model.spec, "f0_stablehlo")
    deploy.load_stablehlo("f0_stablehlo")(np.zeros([3, 256, 256, 3]))["logits"]  # [3, 1000]

The command line does the same: ``python -m experiments.export --checkpoint=F0_haiku.npz
--out=f0_savedmodel --format=savedmodel`` (guide: ``docs/deploy.md``).

References:
    JAX authors. jax2tf and jax.export (shape polymorphism, native serialization):
    https://docs.jax.dev/en/latest/export/index.html
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
import numpy as np

from nfnets_jax import checkpoints
from nfnets_jax.checkpoints import LoadedCheckpoint, ModelSpec
from nfnets_jax.errors import NFNetsError

__all__ = [
    "DEFAULT_PLATFORMS",
    "FORMATS",
    "METADATA_FILE",
    "DeployError",
    "StableHLOModel",
    "export_checkpoint",
    "export_saved_model",
    "export_stablehlo",
    "load_stablehlo",
    "read_metadata",
]

FORMATS = ("savedmodel", "stablehlo")
# Lowered for every platform JAX exports to, so one artifact serves on any of them.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
METADATA_FILE = "nfnets_jax.json"
METADATA_FORMAT = "nfnets_jax.deploy"
METADATA_VERSION = 1
EXPORTED_FILE = "model.jax_export"
MLIR_FILE = "model.mlir"
VARIABLES_FILE = "variables.npz"
OUTPUTS = ("logits", "probabilities")
# The SavedModel signature names.
UINT8_SIGNATURE = "serving_default"
FLOAT_SIGNATURE = "preprocessed"
_BATCH = "b"


class DeployError(NFNetsError, ValueError):
    """An export destination or artifact that cannot be used; the message says why."""

    exit_code = 2


# ----------------------------------------------------------------------- shared steps


def _fit(params: hk.Params, state: hk.State | None, spec: ModelSpec, source: str):
    """The weights checked against the spec's network (one message lists every mismatch)."""
    expected_params, expected_state = spec.abstract_variables()
    loaded = LoadedCheckpoint(
        params=jax.tree.map(np.asarray, dict(params)),
        # None: a parameter file, whose Haiku state (if any) sits beside the parameters.
        model_state=None if state is None else jax.tree.map(np.asarray, dict(state)),
        spec=spec,
        source=source,
        description=source,
    )
    fitted = checkpoints.fit_checkpoint(
        loaded, expected_params, expected_state, target=spec.describe()
    )
    return fitted.params, fitted.state


def _conv_impl(platforms: Sequence[str], conv_impl: str | None) -> str:
    # The lowering is chosen when tracing, once for all platforms: for a CPU-only export
    # 'dot' (per-group convolutions and 1x1 products, much faster on XLA:CPU; 'auto''s CPU
    # choice 'patches' differs from it only in the backward pass, which serving never
    # runs), the native convolutions otherwise (models/conv.py).
    if conv_impl is not None:
        return conv_impl
    return "dot" if tuple(platforms) == ("cpu",) else "native"


def _serving_fn(spec: ModelSpec, conv_impl: str):
    """``serve(params, state, images) -> {'logits', 'probabilities'}`` (float32, eval mode)."""
    network = spec.build(conv_impl=conv_impl)

    def serve(params, state, images):
        outputs, _ = network.apply(params, state, None, images, is_training=False)
        logits = outputs["logits"].astype(jnp.float32)
        return {"logits": logits, "probabilities": jax.nn.softmax(logits, axis=-1)}

    return serve


def _prepare_destination(path: str | os.PathLike) -> str:
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise DeployError(
            f"{path} already exists and is not an empty directory; remove it or choose "
            "another output path (an export is a new directory)."
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise DeployError(
            f"Cannot create the export directory {path} ({error.strerror}); choose a "
            "writable output path."
        ) from None
    return path


def _write_metadata(path: str, spec: ModelSpec, artifact: str, inputs: dict, **extra) -> str:
    from nfnets_jax.data.augment import parse_eval_preproc

    parse_eval_preproc(spec.eval_preproc)  # a spec the preprocessing cannot run is refused
    # The normalisation constants are the data pipeline's, repeated so that a user
    # without this project knows them (nfnets_jax.data.preprocess imports TensorFlow).
    from nfnets_jax.data.preprocess import MEAN_RGB, STDDEV_RGB

    data = {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "artifact": artifact,
        "spec": spec.to_json(),
        "class_names": list(spec.class_names) if spec.class_names is not None else None,
        "inputs": inputs,
        "outputs": {name: "float32 [batch, num_classes]" for name in OUTPUTS},
        "normalization": {"mean_rgb": list(MEAN_RGB), "stddev_rgb": list(STDDEV_RGB)},
        "jax_version": jax.__version__,
        **extra,
    }
    out = os.path.join(path, METADATA_FILE)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return out


def _float_input(spec: ModelSpec) -> dict:
    size = spec.image_size
    return {
        "dtype": "float32",
        "shape": [None, size, size, 3],
        "preprocessing": f"already done: {spec.eval_preproc} to {size} px, then "
        "(x - mean_rgb) / stddev_rgb on the 0-255 scale",
    }


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``nfnets_jax.json`` of an exported directory: spec, inputs, outputs, versions.

    Raises:
        DeployError: ``path`` holds no nfnets_jax export.
    """
    file = os.path.join(os.fspath(path), METADATA_FILE)
    if not os.path.isfile(file):
        raise DeployError(
            f"{path} is not an nfnets_jax export (no {METADATA_FILE}); write one with "
            "`python -m experiments.export --format=savedmodel|stablehlo`."
        )
    with open(file, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise DeployError(f"{file}: not valid JSON ({error}).") from None
    if data.get("format") != METADATA_FORMAT:
        raise DeployError(f"{file}: not an nfnets_jax export's metadata (no format field).")
    return data


# ------------------------------------------------------------------------- SavedModel


def export_saved_model(
    params: hk.Params,
    state: hk.State | None,
    spec: ModelSpec,
    path: str | os.PathLike,
    *,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    conv_impl: str | None = None,
    source: str = "the given parameters",
) -> str:
    """Writes the network with its weights as a TensorFlow SavedModel directory.

    Signatures (both with a symbolic batch, both returning float32 ``'logits'`` and
    ``'probabilities'``):

    * ``'serving_default'``: ``images`` uint8 ``[batch, H, W, 3]``, any H x W, put
      through :func:`nfnets_jax.data.eval_preprocess` (the spec's crop/resize to S x S
      and normalisation) inside the graph;
    * ``'preprocessed'``: ``images`` float32 ``[batch, S, S, 3]``, already preprocessed.

    Args:
        params: the Haiku parameters (host or device arrays).
        state: the Haiku state (None or ``{}`` for NF models).
        spec: the network, its test size S and preprocessing, its classes.
        path: the directory to create (must not exist, or be empty).
        platforms: JAX platforms to lower the network for (``'cpu'``, ``'cuda'``,
            ``'rocm'``, ``'tpu'``); the graph runs only on these.
        conv_impl: convolution lowering; default ``'native'`` (GPU/TPU), or ``'dot'``
            (the forward pass of ``conv_impl='auto'``'s CPU choice, faster on XLA:CPU)
            when ``platforms`` is ``('cpu',)``.
        source: where the weights came from, recorded in the metadata.

    Returns:
        ``path`` (absolute).

    Raises:
        DeployError: ``path`` exists and is not empty, or cannot be created.
        nfnets_jax.checkpoints.CheckpointMismatchError: the weights do not fit ``spec``.

    Example (see the module docstring for calling the signatures)::

        path = export_saved_model(params, {}, spec, "/tmp/f0_savedmodel")
    """
    from jax.experimental import jax2tf

    from nfnets_jax.data import preprocess
    from nfnets_jax.data.tf_setup import tf

    params, state = _fit(params, state, spec, source)
    path = _prepare_destination(path)
    size = spec.image_size
    impl = _conv_impl(platforms, conv_impl)
    converted = jax2tf.convert(
        _serving_fn(spec, impl),
        polymorphic_shapes=[None, None, f"({_BATCH}, {size}, {size}, 3)"],
        with_gradient=False,
        native_serialization_platforms=tuple(platforms),
    )

    module = tf.Module(name="nfnets_jax")
    as_variables = lambda tree: tf.nest.map_structure(  # noqa: E731
        lambda leaf: tf.Variable(leaf, trainable=False), tree
    )
    module.params, module.state = as_variables(params), as_variables(state)
    float_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
    uint8_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")

    @tf.function(input_signature=[float_spec], autograph=False)
    def preprocessed(images):
        return converted(module.params, module.state, images)

    @tf.function(input_signature=[uint8_spec], autograph=False)
    def serving(images):
        # The evaluation pipeline's own per-image function: one implementation of the
        # crop, resize and normalisation maths, in the pipeline and in this graph.
        batch = tf.map_fn(
            lambda image: preprocess.eval_preprocess(image, size, spec.eval_preproc),
            images,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return converted(module.params, module.state, batch)

    module.preprocessed, module.serving = preprocessed, serving
    signatures = {
        UINT8_SIGNATURE: serving.get_concrete_function(),
        FLOAT_SIGNATURE: preprocessed.get_concrete_function(),
    }
    tf.saved_model.save(module, path, signatures=signatures)
    _write_metadata(
        path,
        spec,
        "savedmodel",
        {
            UINT8_SIGNATURE: {
                "dtype": "uint8",
                "shape": [None, None, None, 3],
                "preprocessing": f"inside the graph: {spec.eval_preproc} to {size} px "
                "(nfnets_jax.data.eval_preprocess), then (x - mean_rgb) / stddev_rgb",
            },
            FLOAT_SIGNATURE: _float_input(spec),
        },
        platforms=list(platforms),
        conv_impl=impl,
        source=source,
        tensorflow_version=tf.__version__,
    )
    return path


# -------------------------------------------------------------------------- StableHLO


@dataclasses.dataclass(frozen=True)
class StableHLOModel:
    """A deserialized ``jax.export`` artifact with its weights, ready to call.

    Attributes:
        exported: the ``jax.export.Exported`` of ``f(variables, images)``.
        variables: its first argument, ``{'params/<module>/<name>': array, ...}``.
        spec: the network's spec.
        metadata: the artifact's ``nfnets_jax.json``.
    """

    exported: jax.export.Exported
    variables: Mapping[str, jax.Array]
    spec: ModelSpec
    metadata: Mapping[str, Any]

    def __call__(self, images: Any) -> dict[str, jax.Array]:
        """``{'logits', 'probabilities'}`` of preprocessed float32 ``[N, S, S, 3]`` images."""
        return self.exported.call(self.variables, jnp.asarray(images, jnp.float32))


def _flat_variables(params: hk.Params, state: hk.State) -> dict[str, np.ndarray]:
    flat = {f"params/{k}": v for k, v in checkpoints.flatten_params(params).items()}
    flat.update({f"state/{k}": v for k, v in checkpoints.flatten_params(state).items()})
    return {k: np.asarray(v) for k, v in flat.items()}


def _split_variables(flat: Mapping[str, Any]) -> tuple[dict, dict]:
    params = {k.removeprefix("params/"): v for k, v in flat.items() if k.startswith("params/")}
    state = {k.removeprefix("state/"): v for k, v in flat.items() if k.startswith("state/")}
    return checkpoints.unflatten_params(params), checkpoints.unflatten_params(state)


def export_stablehlo(
    params: hk.Params,
    state: hk.State | None,
    spec: ModelSpec,
    path: str | os.PathLike,
    *,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    conv_impl: str | None = None,
    source: str = "the given parameters",
) -> str:
    """Writes the network as a serialized ``jax.export`` artifact with a symbolic batch.

    The directory holds ``model.jax_export`` (``f(variables, images) -> {'logits',
    'probabilities'}``, ``images`` float32 ``[b, S, S, 3]`` preprocessed, any ``b >=
    1``), ``variables.npz`` (``dict(np.load(...))`` is ``variables``), ``model.mlir``
    (the StableHLO module as text) and ``nfnets_jax.json``. Reload it with
    :func:`load_stablehlo`, or with plain JAX::

        exported = jax.export.deserialize(open('DIR/model.jax_export', 'rb').read())
        outputs = exported.call(dict(np.load('DIR/variables.npz')), images)

    Args:
        params: the Haiku parameters (host or device arrays).
        state: the Haiku state (None or ``{}`` for NF models).
        spec: the network, its test size S and preprocessing, its classes.
        path: the directory to create (must not exist, or be empty).
        platforms: JAX platforms to lower for (``'cpu'``, ``'cuda'``, ``'rocm'``, ``'tpu'``).
        conv_impl: grouped-convolution lowering (see :func:`export_saved_model`).
        source: where the weights came from, recorded in the metadata.

    Returns:
        ``path`` (absolute).

    Raises:
        DeployError: ``path`` exists and is not empty, or cannot be created.
        nfnets_jax.checkpoints.CheckpointMismatchError: the weights do not fit ``spec``.
    """
    params, state = _fit(params, state, spec, source)
    path = _prepare_destination(path)
    size = spec.image_size
    impl = _conv_impl(platforms, conv_impl)
    serve = _serving_fn(spec, impl)
    flat = _flat_variables(params, state)

    def exported_fn(variables, images):
        return serve(*_split_variables(variables), images)

    (batch,) = jax.export.symbolic_shape(_BATCH)
    exported = jax.export.export(jax.jit(exported_fn), platforms=tuple(platforms))(
        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()},
        jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
    )
    with open(os.path.join(path, EXPORTED_FILE), "wb") as f:
        f.write(exported.serialize())
    with open(os.path.join(path, MLIR_FILE), "w", encoding="utf-8") as f:
        f.write(exported.mlir_module())
    np.savez(os.path.join(path, VARIABLES_FILE), **flat)
    _write_metadata(
        path,
        spec,
        "stablehlo",
        {"images": _float_input(spec)},
        platforms=list(platforms),
        conv_impl=impl,
        source=source,
        calling_convention_version=exported.calling_convention_version,
    )
    return path


def load_stablehlo(path: str | os.PathLike) -> StableHLOModel:
    """Reads a directory written by :func:`export_stablehlo`, weights placed on the device.

    Raises:
        DeployError: ``path`` is not a StableHLO export of this project.

    Example (a two-stage NFNet with constant weights, exported for the CPU):
        >>> import tempfile
        >>> spec = ModelSpec('NFNet', dict(variant='F0', width_pattern=(16, 16),
        ...                  depth_pattern=(1, 1), group_width=8, stem_widths=(8, 8, 8)),
        ...                  num_classes=10, image_size=16, eval_preproc='resize')
        >>> params = jax.tree.map(lambda x: np.full(x.shape, 0.1, x.dtype), spec.abstract_params())
        >>> out = tempfile.mkdtemp() + '/tiny'
        >>> path = export_stablehlo(params, {}, spec, out, platforms=['cpu'])
        >>> model = load_stablehlo(path)
        >>> [model(np.zeros([n, 16, 16, 3]))['logits'].shape for n in (1, 3)]  # any batch
        [(1, 10), (3, 10)]
        >>> read_metadata(path)['inputs']['images']['shape']
        [None, 16, 16, 3]
    """
    metadata = read_metadata(path)
    if metadata.get("artifact") != "stablehlo":
        raise DeployError(
            f"{path} is a {metadata.get('artifact')} export, not a StableHLO one; load it "
            "with tf.saved_model.load."
        )
    with open(os.path.join(os.fspath(path), EXPORTED_FILE), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(os.fspath(path), VARIABLES_FILE)) as archive:
        variables = {k: jnp.asarray(archive[k]) for k in archive.files}
    spec = ModelSpec.from_json(metadata["spec"], source=os.fspath(path))
    return StableHLOModel(exported=exported, variables=variables, spec=spec, metadata=metadata)


# --------------------------------------------------------------------- from checkpoints


def export_checkpoint(
    loaded: LoadedCheckpoint,
    path: str | os.PathLike,
    *,
    format: str,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> ModelSpec:
    """Exports a loaded checkpoint (file or run) as a SavedModel or StableHLO directory.

    The network is the one recorded with the checkpoint (a run's config, an export's
    sidecar), else recognised from the tree (DeepMind's released files), as
    :func:`nfnets_jax.pretrained.load` does.

    Args:
        loaded: from :func:`nfnets_jax.checkpoints.load_checkpoint` or ``read_run``.
        path: the directory to create.
        format: ``'savedmodel'`` or ``'stablehlo'``.
        platforms: JAX platforms to lower for.

    Returns:
        The spec of the exported network.

    Raises:
        DeployError: unknown ``format``; ``path`` not usable.
        nfnets_jax.checkpoints.UnrecognizedCheckpointError: no spec and no known network.
        nfnets_jax.checkpoints.CheckpointMismatchError: the weights do not fit the spec.
    """
    from nfnets_jax.pretrained import spec_for

    writers = {"savedmodel": export_saved_model, "stablehlo": export_stablehlo}
    if format not in writers:
        raise DeployError(f"Unknown export format {format!r}; expected one of {FORMATS}.")
    spec, _ = spec_for(loaded)
    writers[format](
        loaded.params,
        loaded.model_state,
        spec,
        path,
        platforms=platforms,
        source=loaded.description,
    )
    return spec

"""Pretrained NFNets in two lines: load a checkpoint, classify images.

    from nfnets_jax import pretrained
    model = pretrained.load("F0_haiku.npz")             # DeepMind's released F0 weights
    probs = model.predict(["cat.jpg", "dog.png"])        # [2, 1000] softmax probabilities
    model.top_k("cat.jpg", k=5)                          # [[Prediction(281, 'tabby', 0.61), ...]]

``load`` accepts DeepMind's ``F0..F6_haiku.npz`` (download them from
``https://storage.googleapis.com/dm-nfnets/{V}_haiku.npz``), files written by
``python -m experiments.export`` and training run directories. The network is
recognised from the file (see :mod:`nfnets_jax.checkpoints`: F0-F7, F0+-F7+, narrower
NFNets, NF-ResNets, NF-RegNets, or the spec an export wrote beside its file), with its
evaluation preprocessing and test resolution: for NFNets ``resize_crop_32`` at the
variant's test size (F0: resize to 288 x 288 ignoring the aspect ratio, centre crop 256,
normalize with the ImageNet mean/std; spec sections 3.2 and 6.4), computed by the same
TensorFlow functions as the evaluation pipeline (:func:`nfnets_jax.data.eval_preprocess`:
TF's JPEG decoder and its bicubic resize without antialiasing, as DeepMind's evaluation).

References:
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax.checkpoints._src.fitting import fit_checkpoint
from nfnets_jax.checkpoints._src.infer import (
    UnrecognizedCheckpointError,
    head_classes,
    infer_model_spec,
)
from nfnets_jax.checkpoints._src.sources import LoadedCheckpoint, load_checkpoint
from nfnets_jax.checkpoints._src.spec import (
    CROP_RESIZE,
    DEFAULT_NFNET_TEST_SIZE,
    NF_RESNET_TEST_SIZE,
    NFNET_EVAL_PREPROC,
    ModelSpec,
)
from nfnets_jax.data import imagenet
from nfnets_jax.errors import ImageError, ImageNotFoundError

__all__ = ["Prediction", "PretrainedModel", "load", "spec_for"]

# How many images go through the network at once (memory, not results, depends on it).
DEFAULT_BATCH_SIZE = 32
_MAX_PIXEL = 255  # integer images other than uint8 must already be on the 0-255 scale


class Prediction(NamedTuple):
    """One class of a top-k list: label index, human-readable name, probability."""

    index: int
    name: str
    probability: float


def _is_single_image(images: Any) -> bool:
    if isinstance(images, (str, os.PathLike, bytes)):
        return True
    if hasattr(images, "convert") and hasattr(images, "size"):  # a PIL image
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


def _as_list(images: Any) -> list[Any]:
    if _is_single_image(images):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(
                f"An image array must be [H, W], [H, W, C] or a batch [N, H, W, C]; got shape "
                f"{images.shape}."
            )
        return list(images)
    if isinstance(images, Sequence):
        if not images:
            raise ValueError("No images given.")
        return list(images)
    raise TypeError(
        f"Cannot read images from a {type(images).__name__}: pass file paths, encoded bytes, "
        "uint8 arrays [H, W, 3] or PIL images (or a list of them)."
    )


def _label(image: Any, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    return f"#{index} ({type(image).__name__})"


def _to_pixels(image: Any, index: int):
    """Encoded bytes (scalar tf.string) or a uint8 [H, W, 3] array, as TF reads them."""
    from nfnets_jax.data.tf_setup import tf

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ImageNotFoundError(f"Image {path!r} does not exist.")
        with open(path, "rb") as f:
            return tf.constant(f.read())
    if isinstance(image, bytes):
        return tf.constant(image)
    if hasattr(image, "convert") and hasattr(image, "size"):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise ImageError(
                f"Image {_label(image, index)} is a {array.dtype} array; pass uint8 pixels "
                "(0-255), e.g. (x * 255).round().astype(np.uint8) for images in [0, 1]."
            )
        if array.size and (array.min() < 0 or array.max() > _MAX_PIXEL):
            raise ImageError(f"Image {_label(image, index)} has values outside 0-255.")
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageError(
            f"Image {_label(image, index)} has shape {array.shape}; expected [H, W], "
            "[H, W, 1], [H, W, 3] or [H, W, 4] (RGBA: alpha is dropped)."
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return tf.constant(np.ascontiguousarray(array[..., :3]))


@dataclasses.dataclass(eq=False)
class PretrainedModel:
    """A checkpoint loaded onto the default device, ready to classify images.

    Build one with :func:`load`. Images may be file paths, encoded bytes (JPEG, PNG, GIF,
    BMP), uint8 arrays ``[H, W]``/``[H, W, 3]``/``[H, W, 4]``, PIL images, a list of any
    of these, or a uint8 batch ``[N, H, W, 3]``.

    Attributes:
        spec: the network, its test resolution and preprocessing, its classes.
        params: the parameters on the device.
        model_state: the Haiku state (empty for NF models).
        description: where the parameters came from and how the network was identified.
        batch_size: images per forward pass.
    """

    spec: ModelSpec
    params: hk.Params
    model_state: hk.State
    description: str
    compute_dtype: Any = None
    conv_impl: str | None = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def image_size(self) -> int:
        """The test resolution S (F0: 256)."""
        return self.spec.image_size

    @property
    def variant(self) -> str | None:
        """The standard variant (``'F0'`` ...), or None for other architectures."""
        return self.spec.variant

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """One name per class: the spec's, else ``'class k'``."""
        if self.spec.class_names is not None:
            return self.spec.class_names
        return tuple(f"class {k}" for k in range(self.spec.num_classes))

    @functools.cached_property
    def _forward(self):
        network = self.spec.build(compute_dtype=self.compute_dtype, conv_impl=self.conv_impl)

        @jax.jit
        def forward(params, state, images):
            outputs, _ = network.apply(params, state, None, images, is_training=False)
            return outputs["logits"]

        return forward

    def preprocess(self, images: Any) -> np.ndarray:
        """The network's input: ``[N, S, S, 3]`` float32, normalized (eval preprocessing).

        Example:
            >>> model.preprocess('cat.jpg').shape  # doctest: +SKIP
            (1, 256, 256, 3)
        """
        from nfnets_jax.data import eval_preprocess

        batch = []
        for index, image in enumerate(_as_list(images)):
            pixels = _to_pixels(image, index)
            try:
                processed = eval_preprocess(pixels, self.spec.image_size, self.spec.eval_preproc)
            except Exception as error:  # noqa: BLE001 - TF raises several decode errors.
                raise ImageError(
                    f"Cannot decode image {_label(image, index)} ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:200]}). Pass JPEG/PNG/GIF/BMP bytes or "
                    "paths, or uint8 arrays."
                ) from None
            batch.append(processed.numpy())
        return np.stack(batch)

    def apply(self, batch: np.ndarray | jax.Array) -> np.ndarray:
        """Logits ``[N, num_classes]`` of an already preprocessed batch ``[N, S, S, 3]``."""
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"apply() takes a preprocessed [N, H, W, 3] batch, got {batch.shape}.")
        chunks = [
            np.asarray(self._forward(self.params, self.model_state, batch[i : i + self.batch_size]))
            for i in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(chunks)

    def logits(self, images: Any) -> np.ndarray:
        """Unnormalized class scores ``[N, num_classes]`` (float32) of raw images."""
        return self.apply(self.preprocess(images))

    def predict(self, images: Any) -> np.ndarray:
        """Softmax probabilities ``[N, num_classes]`` (float32) of raw images.

        Example:
            >>> probs = pretrained.load('F0_haiku.npz').predict('cat.jpg')  # doctest: +SKIP
            >>> probs.shape  # doctest: +SKIP
            (1, 1000)
        """
        return np.asarray(jax.nn.softmax(jnp.asarray(self.logits(images)), axis=-1))

    def top_k(self, images: Any, k: int = 5) -> list[list[Prediction]]:
        """The ``k`` most probable classes of each image, most probable first."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        probs = self.predict(images)
        k = min(k, self.num_classes)
        names = self.class_names
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            results.append([Prediction(int(i), names[i], float(row[i])) for i in order])
        return results


def spec_for(
    loaded: LoadedCheckpoint,
    *,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    eval_preproc: str | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[ModelSpec, str]:
    """The spec of a loaded checkpoint, with overrides, and how it was obtained.

    Precedence: ``model`` (+ ``model_kwargs``) given explicitly, else the spec recorded
    with the checkpoint (run config or sidecar), else inference from the tree;
    ``model_kwargs`` without ``model`` update the recorded/inferred options.
    """
    if model is not None:
        base = loaded.spec
        if base is None:
            try:
                base = infer_model_spec(loaded.params)
            except UnrecognizedCheckpointError:
                base = None
        num_classes = head_classes(loaded.params)
        if base is not None and base.model == model:
            size, preproc = base.image_size, base.eval_preproc
        elif model == "NFNet":
            size, preproc = DEFAULT_NFNET_TEST_SIZE, NFNET_EVAL_PREPROC
        else:
            size, preproc = NF_RESNET_TEST_SIZE, CROP_RESIZE
        names = base.class_names if base is not None else None
        if names is None and num_classes == imagenet.NUM_CLASSES:
            names = imagenet.class_names()
        spec = ModelSpec(
            model=model,
            model_kwargs=dict(model_kwargs or {}),
            num_classes=num_classes,
            image_size=size,
            eval_preproc=preproc,
            class_names=names,
        )
        origin = "architecture given by the caller"
    else:
        if loaded.spec is not None:
            spec, origin = loaded.spec, "architecture recorded with the checkpoint"
        else:
            spec, origin = infer_model_spec(loaded.params), "architecture inferred from the tree"
        if model_kwargs:
            spec = dataclasses.replace(
                spec, model_kwargs={**spec.model_kwargs, **model_kwargs}, variant=None
            )
            origin += ", options overridden"
    overrides = {}
    if image_size is not None:
        overrides["image_size"] = int(image_size)
    if eval_preproc is not None:
        overrides["eval_preproc"] = eval_preproc
    if class_names is not None:
        overrides["class_names"] = tuple(class_names)
    return dataclasses.replace(spec, **overrides), origin


def load(
    source: str | os.PathLike,
    *,
    use_ema: bool = True,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    eval_preproc: str | None = None,
    class_names: Sequence[str] | None = None,
    compute_dtype: Any = None,
    conv_impl: str | None = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PretrainedModel:
    """Loads a checkpoint into a ready-to-apply model.

    Args:
        source: DeepMind's ``{V}_haiku.npz`` (``https://storage.googleapis.com/dm-nfnets/
            {V}_haiku.npz``, V = F0..F6), a file written by ``experiments.export``
            (pickle or ``.npz``, with its ``.json`` spec), or a training run directory.
        use_ema: for run directories, the EMA parameters (when the run kept them).
        model: registry name, to give the architecture explicitly (with
            ``model_kwargs``) instead of recognising it.
        model_kwargs: constructor options; without ``model`` they update the recognised
            ones (e.g. ``{'activation': 'relu'}``, which no tree records).
        image_size: test resolution override (default: the variant's, F0: 256).
        eval_preproc: preprocessing override (default: ``'resize_crop_32'`` for NFNets).
        class_names: names of the classes (default: ImageNet's for 1,000 classes, the
            dataset's for exports and runs).
        compute_dtype: activation dtype (default float32; ``jnp.bfloat16`` on TPU/GPU).
        conv_impl: convolution lowering (``'auto'`` picks the fastest here).
        batch_size: images per forward pass.

    Returns:
        A :class:`PretrainedModel`.

    Raises:
        nfnets_jax.checkpoints.CheckpointNotFoundError: no such file or directory.
        nfnets_jax.checkpoints.CheckpointMismatchError: the parameters do not fit the
            (recognised or given) network; the message lists every difference.
        nfnets_jax.checkpoints.UnrecognizedCheckpointError: the tree is no known network.

    Example:
        >>> model = load('F0_haiku.npz')  # doctest: +SKIP
        >>> model.variant, model.image_size  # doctest: +SKIP
        ('F0', 256)
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    loaded = load_checkpoint(source, use_ema=use_ema)
    spec, origin = spec_for(
        loaded,
        model=model,
        model_kwargs=model_kwargs,
        image_size=image_size,
        eval_preproc=eval_preproc,
        class_names=class_names,
    )
    expected_params, expected_state = spec.abstract_variables()
    fitted = fit_checkpoint(
        loaded,
        expected_params,
        expected_state,
        target=f"{spec.describe()} ({origin})",
        hint="Pass model=/model_kwargs= to load() to give the architecture explicitly.",
    )
    params, model_state = fitted.params, fitted.state
    device_params = jax.device_put(params)
    return PretrainedModel(
        spec=spec,
        params=device_params,
        model_state=jax.device_put(model_state),
        description=f"{spec.describe()} from {loaded.description} ({origin})",
        compute_dtype=compute_dtype,
        conv_impl=conv_impl,
        batch_size=batch_size,
    )

"""Pretrained NFNets in two lines: load a checkpoint, classify images.

    from nfnets_jax import pretrained
    model = pretrained.load("F0_haiku.npz")             # DeepMind's released F0 weights
    probs = model.predict(["cat.jpg", "dog.png"])        # [2, 1000] softmax probabilities
    model.top_k("cat.jpg", k=5)                          # [[Prediction(281, 'tabby', 0.61), ...]]

``load`` accepts DeepMind's ``F0..F6_haiku.npz``, files written by
``python -m experiments.export`` and training run directories; the network, its test
resolution and its evaluation preprocessing are recognised from the checkpoint
(:mod:`nfnets_jax.checkpoints`). Images go through the evaluation pipeline's own
TensorFlow preprocessing (:func:`nfnets_jax.data.eval_preprocess`).
"""

from nfnets_jax.checkpoints._src.pretrained import (
    DEFAULT_BATCH_SIZE,
    Prediction,
    PretrainedModel,
    load,
    spec_for,
)

__all__ = ["DEFAULT_BATCH_SIZE", "Prediction", "PretrainedModel", "load", "spec_for"]

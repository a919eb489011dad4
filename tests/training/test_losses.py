"""Targets, cross-entropy and top-k against hand computations and numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.training import losses


def test_targets_mix_then_smooth():
    # ratio 0.7 of class 0 with class 2, then smoothing 0.1 over K=4 (original order).
    targets = losses.make_targets(
        jnp.array([0]), 4, mix_labels=jnp.array([2]), ratio=jnp.array([0.7]), label_smoothing=0.1
    )
    expected = 0.9 * np.array([0.7, 0.0, 0.3, 0.0]) + 0.1 / 4
    np.testing.assert_allclose(targets[0], expected, rtol=1e-6)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)


def test_nfnet_smoothing_values_for_imagenet():
    targets = losses.make_targets(jnp.array([3]), 1000, label_smoothing=0.1)
    assert targets[0, 3] == pytest.approx(0.9 + 1e-4, rel=1e-6)
    assert targets[0, 0] == pytest.approx(1e-4, rel=1e-6)


def test_mix_labels_need_ratio():
    with pytest.raises(ValueError, match="ratio"):
        losses.make_targets(jnp.array([0]), 3, mix_labels=jnp.array([1]))


def test_cross_entropy_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32) * 3
    targets = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(targets * log_probs).sum(-1)
    got = losses.softmax_cross_entropy(jnp.asarray(logits, jnp.bfloat16), targets)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, targets), expected, rtol=1e-5)


def test_topk_correct():
    logits = jnp.array([[0.1, 0.5, 0.2, 0.9], [3.0, 2.0, 1.0, 0.0]])
    labels = jnp.array([1, 3])
    np.testing.assert_array_equal(losses.topk_correct(logits, labels, 1), [0.0, 0.0])
    np.testing.assert_array_equal(losses.topk_correct(logits, labels, 2), [1.0, 0.0])
    np.testing.assert_array_equal(losses.topk_correct(logits, labels, 4), [1.0, 1.0])

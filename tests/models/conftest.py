"""Shared helpers for the model tests: abstract parameter trees and golden files."""

import json
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

GOLDEN = pathlib.Path(__file__).with_name("golden")


def abstract_params(make_model, px: int = 32, batch: int = 1):
    """Parameter shapes of ``make_model()`` via ``jax.eval_shape`` (nothing allocated)."""
    forward = hk.transform(lambda x: make_model()(x, is_training=False))
    images = jax.ShapeDtypeStruct((batch, px, px, 3), jnp.float32)
    return jax.eval_shape(forward.init, jax.random.key(0), images)


def tree_shapes(params) -> dict[str, list[int]]:
    """``{'module/param': shape}`` of a Haiku params tree."""
    return {f"{m}/{n}": list(a.shape) for m, sub in params.items() for n, a in sub.items()}


def count(params) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


@pytest.fixture(scope="session")
def official():
    """DeepMind's parameter counts and trees (copy of the spec's official_param_trees.json)."""
    return json.loads((GOLDEN / "official_param_trees.json").read_text())


def random_params(abstract, seed: int = 0, skip_gain: float = 1.0):
    """Random float32 parameters for an abstract tree, without compiling an init.

    (Compiling a Haiku init is dominated by its per-parameter RNG and takes far longer on
    CPU than the forward pass.) Kernels get N(0, 1/fan_in), gains U(0.8, 1.2), biases
    N(0, 0.1^2) and every ``skip_gain`` the given value, so residual branches are active.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for module, sub in abstract.items():
        params[module] = {}
        for name, leaf in sub.items():
            shape = tuple(leaf.shape)
            if name == "w":
                value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
            elif name == "gain":
                value = rng.uniform(0.8, 1.2, size=shape)
            elif name == "skip_gain":
                value = np.full(shape, skip_gain)
            else:
                value = rng.normal(size=shape) * 0.1
            params[module][name] = jnp.asarray(value, jnp.float32)
    return params

"""Helpers for the normalized-baseline tests: tiny models, realistic random variables."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax.models import ResNet

TINY = dict(width_multiplier=0.125, depth_pattern=(1, 1, 1, 1))


def transform(make_model, **call_kwargs):
    """`hk.transform_with_state` of `make_model()(x, is_training, **call_kwargs)`."""
    return hk.transform_with_state(
        lambda x, is_training: make_model()(x, is_training=is_training, **call_kwargs)
    )


def tiny_resnet(version="v2", norm="batch", depth=50, **kwargs):
    """A narrow, 4-block ResNet (same code paths as the full-size one)."""
    return lambda: ResNet(10, depth, version, norm, **{**TINY, **kwargs})


def abstract_variables(forward, px=16, batch=2):
    """(params, state) shapes via `jax.eval_shape` (nothing compiled or allocated)."""
    x = jax.ShapeDtypeStruct((batch, px, px, 3), jnp.float32)
    return jax.eval_shape(lambda k, x: forward.init(k, x, True), jax.random.key(0), x)


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def realistic_variables(abstract_params, abstract_state, seed=0):
    """Random params/state in realistic ranges, so every layer does something.

    Kernels ~ N(0, 2/fan_in); norm scales and PN gammas ~ U(0.5, 1.5); shifts ~ N(0, 0.2);
    Proxy Norm's proxy parameters ~ N(0, 0.2) / U(-0.3, 0.3); running means ~ N(0, 0.1)
    and variances ~ U(0.5, 1.5). Built in numpy: no init is compiled.
    """
    rng = np.random.default_rng(seed)

    def fill(module, name, shape):
        if name == "w":
            return rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        if name in ("scale", "gamma", "var"):
            return rng.uniform(0.5, 1.5, size=shape)
        if name == "proxy_gamma":
            return rng.uniform(-0.3, 0.3, size=shape)
        if name == "mean":
            return rng.normal(size=shape) * 0.1
        return rng.normal(size=shape) * 0.2  # offset, beta, proxy_beta, b

    def build(abstract):
        return {
            m: {n: jnp.asarray(fill(m, n, tuple(a.shape)), jnp.float32) for n, a in sub.items()}
            for m, sub in abstract.items()
        }

    return build(abstract_params), build(abstract_state)

"""Independent NumPy references for the optim tests, and small hand-built parameter trees.

Nothing here imports nfnets_jax: these follow the rules of the original code as written in
../shared/spec/nfnets.md section 4, so the tests compare two separate implementations.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

TREES_FILE = pathlib.Path(__file__).with_name("param_trees.json")


def load_tree_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Flat 'module/param' -> shape of one of the stored official trees."""
    data = json.loads(TREES_FILE.read_text())
    return {path: tuple(shape) for path, shape in data[name].items()}


def official_count(name: str) -> int:
    return json.loads(TREES_FILE.read_text())["counts"][name]


def nest(flat: dict[str, object]) -> dict[str, dict[str, object]]:
    """'module/param' -> leaf into Haiku's {module: {param: leaf}}."""
    tree: dict[str, dict[str, object]] = {}
    for path, leaf in flat.items():
        module, name = path.rsplit("/", 1)
        tree.setdefault(module, {})[name] = leaf
    return tree


def flatten(tree: dict[str, dict[str, object]]) -> dict[str, object]:
    return {f"{m}/{n}": leaf for m, params in tree.items() for n, leaf in params.items()}


# --- The original grouping (experiment_nfnets._make_opt), on (module, name) -------------


def original_is_gain_or_bias(module: str, name: str) -> bool:
    del module
    return name in ("scale", "offset", "b") or "gain" in name or "bias" in name


def original_is_fc_weight(module: str, name: str) -> bool:
    # Partitioned from what is left after the gains/biases group.
    return (
        not original_is_gain_or_bias(module, name)
        and "linear" in module
        and "squeeze_excite" not in module
    )


def split_path(path: str) -> tuple[str, str]:
    module, name = path.rsplit("/", 1)
    return module, name


# --- The original unit-wise norm and clipping rule --------------------------------------


def np_unit_axes(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """None means the whole tensor (the original's keepdims=False branch)."""
    if np.squeeze(np.zeros(shape)).ndim <= 1:
        return None
    if len(shape) in (2, 3):
        return (0,)
    if len(shape) == 4:
        return (0, 1, 2)
    if len(shape) == 5:  # The 3-D conv extension (one unit per output channel).
        return (0, 1, 2, 3)
    raise ValueError(shape)


def np_unitwise_norm(x: np.ndarray, axes=None) -> np.ndarray:
    x = np.asarray(x).astype(np.float32)
    if axes is None:
        axes = np_unit_axes(x.shape)
    if axes is None:
        return np.sqrt(np.sum(x * x, dtype=np.float32)).astype(np.float32)
    return np.sqrt(np.sum(x * x, axis=axes, keepdims=True, dtype=np.float32))


def np_agc(g, p, clipping: float, eps: float, axes=None):
    """The original SGD_AGC rule; returns (clipped g, trigger, ratio), float32 maths."""
    g = np.asarray(g)
    p_norm = np.maximum(np_unitwise_norm(p, axes), np.float32(eps))
    g_norm = np_unitwise_norm(g, axes)
    max_norm = p_norm * np.float32(clipping)
    trigger = g_norm > max_norm
    scale = max_norm / np.maximum(g_norm, np.float32(1e-6))
    clipped = (g.astype(np.float32) * scale).astype(g.dtype)
    out = np.where(trigger, clipped, g)
    return out, np.atleast_1d(trigger), np.atleast_1d(g_norm / p_norm)


def np_agc_tree(grads: dict, params: dict, clipping: float, eps: float):
    """AGC over flat {path: array}; returns (clipped, clip_fraction, max_ratio)."""
    out, triggers, ratios = {}, [], []
    for path, g in grads.items():
        out[path], trig, ratio = np_agc(g, params[path], clipping, eps)
        triggers.append(trig.ravel())
        ratios.append(ratio.ravel())
    triggers = np.concatenate(triggers)
    return out, triggers.mean(), np.concatenate(ratios).max()


# --- Schedules and the SGD_AGC optimizer ------------------------------------------------


def np_warmup_cosine(itr: float, max_val, num_steps, warmup, start=0.0, min_val=0.0) -> float:
    if itr <= warmup:
        return (max_val - start) * itr / warmup + start
    frac = (itr - warmup) / (num_steps - warmup)
    return 0.5 * (max_val - min_val) * (1 + math.cos(math.pi * frac)) + min_val


def np_sgd_agc_step(params, grads, bufs, lr, *, wd, momentum, clipping, eps):
    """One step of the original SGD_AGC (SGD when clipping is None); returns (params, bufs)."""
    new_params, new_bufs = {}, {}
    for path, p in params.items():
        module, name = split_path(path)
        g = np.asarray(grads[path], np.float32)
        if clipping is not None and not original_is_fc_weight(module, name):
            g = np_agc(g, p, clipping, eps)[0]
        if not original_is_gain_or_bias(module, name):
            g = g + np.float32(wd) * p
        buf = np.float32(momentum) * bufs[path] + g
        g = g + np.float32(momentum) * buf  # Nesterov, PyTorch form.
        new_params[path] = p - np.float32(lr) * g
        new_bufs[path] = buf
    return new_params, new_bufs


def np_adamw_step(params, grads, mu, nu, t, lr, *, b1, b2, eps, wd, clipping, agc_eps):
    """One AdamW step (bias-corrected, decoupled decay) after AGC, original grouping."""
    new_params, new_mu, new_nu = {}, {}, {}
    for path, p in params.items():
        module, name = split_path(path)
        g = np.asarray(grads[path], np.float32)
        if clipping is not None and not original_is_fc_weight(module, name):
            g = np_agc(g, p, clipping, agc_eps)[0]
        m = b1 * mu[path] + (1 - b1) * g
        v = b2 * nu[path] + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        if not original_is_gain_or_bias(module, name):
            u = u + wd * p
        new_params[path] = (p - lr * u).astype(np.float32)
        new_mu[path], new_nu[path] = m, v
    return new_params, new_mu, new_nu


def random_grads(params, seed, low=-3.3, high=-1.3):
    """Gradients whose per-unit norm ratio to the parameter is spread over [10^low, 10^high].

    Zero parameters use a unit norm of 1 for the ratio.
    """
    rng = np.random.default_rng(seed)
    grads = {}
    for path, p in params.items():
        axes = np_unit_axes(p.shape)
        unit = () if axes is None else tuple(1 if a in axes else n for a, n in enumerate(p.shape))
        norm = np.broadcast_to(np_unitwise_norm(p, axes), unit if unit else ())
        norm = np.where(norm > 0, norm, 1.0)
        g = rng.normal(size=p.shape)
        g = g / np.broadcast_to(np_unitwise_norm(g, axes), g.shape)
        ratio = 10.0 ** rng.uniform(low, high, size=unit)
        grads[path] = (g * norm * ratio).astype(np.float32)
    return grads


def small_nfnet_params(seed: int = 0) -> dict[str, np.ndarray]:
    """A narrow NFNet-shaped tree (Haiku paths of the real model), float32, flat."""
    rng = np.random.default_rng(seed)

    def conv(prefix, kh, cin, cout):
        return {
            f"{prefix}/w": rng.normal(0, 1 / math.sqrt(kh * kh * cin), (kh, kh, cin, cout)),
            f"{prefix}/gain": 1 + 0.1 * rng.normal(size=(cout,)),
            f"{prefix}/bias": np.zeros(cout),
        }

    flat = {}
    flat.update(conv("NFNet/~/stem_conv0", 3, 3, 4))
    flat["NFNet/~/nf_block/skip_gain"] = np.zeros(())
    flat.update(conv("NFNet/~/nf_block/~/conv0", 1, 4, 8))
    flat.update(conv("NFNet/~/nf_block/~/conv1", 3, 8, 8))
    flat.update(conv("NFNet/~/nf_block/~/conv_shortcut", 1, 4, 8))
    se = "NFNet/~/nf_block/~/squeeze_excite/~/"
    flat[se + "linear/w"] = rng.normal(0, 1 / math.sqrt(8), (8, 4))
    flat[se + "linear/b"] = np.zeros(4)
    flat[se + "linear_1/w"] = rng.normal(0, 1 / math.sqrt(4), (4, 8))
    flat[se + "linear_1/b"] = np.zeros(8)
    flat.update(conv("NFNet/~/final_conv", 1, 8, 16))
    flat["NFNet/~/linear/w"] = rng.normal(0, 0.01, (16, 10))
    flat["NFNet/~/linear/b"] = np.zeros(10)
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}

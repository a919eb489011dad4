"""Signal Propagation Plots (SPPs) of any model of the project at initialization.

An SPP (Brock, De, Smith, arXiv:2101.08692, section 3 and Figure 1) follows a batch of
unit-Gaussian inputs through a freshly initialised network and plots, at the stem
output and after every residual block:

* the average squared channel mean ``mean_c(mean_NHW(x)_c^2)``,
* the average channel variance ``mean_c(var_NHW(x)_c)``,

and, for every residual block, the average channel variance of the residual branch's
output before it is added to the skip path. They show e.g. that a BN-ReLU ResNet's
variance grows within a stage and resets at every transition block, and that an
NF-ResNet reproduces that behaviour without normalization, while an unnormalized ResNet
explodes.

Every model here returns these metrics with ``return_metrics=True`` (NFNet, NF-ResNet,
NF-RegNet, the normalized ``ResNet``, SkipInit, Fixup). Models run in training mode,
so BatchNorm uses batch statistics as in the paper, with stochastic depth and dropout
switched off. The figure is drawn with matplotlib's Agg canvas (no display needed).

Example:
    >>> import tempfile
    >>> from nfnets_jax.models import ResNet
    >>> profile = compute_profile(lambda: ResNet(10, 18, width_multiplier=0.125),
    ...                           'BN-ResNet-18', image_size=32)
    >>> len(profile.avg_var), len(profile.res_avg_var)  # max-pool output + 8 blocks
    (9, 8)
    >>> float(profile.res_avg_var.max())  # zero-initialised residual branches
    0.0
    >>> out = tempfile.TemporaryDirectory()
    >>> figure = plot_signal_propagation([profile], os.path.join(out.name, 'spp.png'))
    >>> len(figure.axes), os.listdir(out.name)
    (3, ['spp.png'])
    >>> out.cleanup()
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets_jax import models

__all__ = [
    "SignalProfile",
    "compute_profile",
    "plot_signal_propagation",
    "profile_from_config",
    "profile_from_metrics",
    "save_profiles",
]

#: Titles of the three panels, in order, and the SignalProfile field each one plots.
PANELS = (
    ("Average channel squared mean", "avg_sq_mean"),
    ("Average channel variance", "avg_var"),
    ("Residual branch variance", "res_avg_var"),
)


@dataclasses.dataclass(frozen=True)
class SignalProfile:
    """The signal-propagation statistics of one model.

    Attributes:
        name: the label of the model in plots.
        avg_sq_mean: ``[N + 1]``: index 0 is the stem output, ``i`` the output of block
            ``i`` (1-based).
        avg_var: ``[N + 1]``, same positions.
        res_avg_var: ``[N]``: the residual branch of block ``i`` at index ``i - 1``.
    """

    name: str
    avg_sq_mean: np.ndarray
    avg_var: np.ndarray
    res_avg_var: np.ndarray

    @property
    def num_blocks(self) -> int:
        return int(self.res_avg_var.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (lists of floats)."""
        return {
            "name": self.name,
            **{field: [float(v) for v in getattr(self, field)] for _, field in PANELS},
        }


def _series(outputs: Mapping[str, Any], prefix: str) -> np.ndarray:
    indices = sorted(
        int(key[len(prefix) :])
        for key in outputs
        if key.startswith(prefix) and key[len(prefix) :].isdigit()
    )
    if indices != list(range(len(indices))):
        raise ValueError(f"The metrics {prefix}0, {prefix}1, ... are not contiguous: {indices}.")
    return np.array([float(outputs[f"{prefix}{i}"]) for i in indices], np.float64)


def profile_from_metrics(name: str, outputs: Mapping[str, Any]) -> SignalProfile:
    """Collects a model's ``return_metrics=True`` outputs into a :class:`SignalProfile`.

    Args:
        name: label of the model.
        outputs: the model's output dict with ``avg_sq_mean_i``, ``avg_var_i`` and
            ``res_avg_var_i`` entries.

    Example:
        >>> p = profile_from_metrics('m', {'avg_sq_mean_0': 1.0, 'avg_var_0': 2.0,
        ...     'avg_sq_mean_1': 0.5, 'avg_var_1': 3.0, 'res_avg_var_0': 1.0})
        >>> p.avg_var.tolist(), p.num_blocks
        ([2.0, 3.0], 1)
    """
    profile = SignalProfile(
        name=name,
        avg_sq_mean=_series(outputs, "avg_sq_mean_"),
        avg_var=_series(outputs, "avg_var_"),
        res_avg_var=_series(outputs, "res_avg_var_"),
    )
    if not profile.num_blocks or len(profile.avg_var) != profile.num_blocks + 1:
        raise ValueError(
            f"{name}: expected N + 1 block outputs and N residual branches, got "
            f"{len(profile.avg_var)} and {profile.num_blocks}. Does the model support "
            "return_metrics=True?"
        )
    return profile


def compute_profile(
    model_fn: Callable[[], hk.Module],
    name: str,
    *,
    batch_size: int = 16,
    image_size: int = 224,
    seed: int = 0,
    images: jax.Array | None = None,
) -> SignalProfile:
    """Runs a freshly initialised model on unit-Gaussian images and collects its SPP.

    Args:
        model_fn: builds the model (inside a Haiku transform); it is called as
            ``model(images, is_training=True, return_metrics=True)``.
        name: label of the model.
        batch_size: number of random images.
        image_size: their side.
        seed: seeds both the parameters and the images.
        images: optional NHWC inputs instead of random ones.

    Returns:
        The :class:`SignalProfile`.
    """
    forward = hk.transform_with_state(
        lambda x: model_fn()(x, is_training=True, return_metrics=True)
    )
    # The 'rbg' generator: any good random init shows the same statistics, and its
    # initializers compile several times faster on CPU than threefry's.
    init_key, data_key = jax.random.split(jax.random.key(seed, impl="rbg"))
    if images is None:
        images = jax.random.normal(data_key, (batch_size, image_size, image_size, 3))
    images = jnp.asarray(images, jnp.float32)
    params, state = jax.jit(forward.init)(init_key, images)
    outputs, _ = jax.jit(forward.apply)(params, state, None, images)
    return profile_from_metrics(name, jax.device_get(outputs))


def profile_from_config(
    config: ml_collections.ConfigDict,
    name: str,
    *,
    num_classes: int = 1000,
    active_branches: bool = True,
    **kwargs: Any,
) -> SignalProfile:
    """:func:`compute_profile` of an experiment config's model, without regularizers.

    The config's ``model``/``model_kwargs`` are used in float32, with
    ``stochdepth_rate`` and ``drop_rate`` set to 0 where the model takes them.

    Args:
        config: an experiment config (a preset of ``experiments.configs``).
        name: label of the model.
        num_classes: classifier width (irrelevant to the metrics).
        active_branches: start every residual branch switched on, as in the paper's
            plots: ``zero_init_residual=False`` (normalized ResNets) and
            ``skipinit_gain = 1`` (NF models), where the model takes them. With False
            the preset's own initialization is kept (zero-init blocks are identities).
        **kwargs: ``batch_size``, ``image_size``, ``seed`` or ``images`` for
            :func:`compute_profile`.
    """
    model_cls = models.get_model(config.model)
    model_kwargs = dict(config.model_kwargs.to_dict())
    model_kwargs.pop("compute_dtype", None)
    accepted = inspect.signature(model_cls).parameters
    for key in ("stochdepth_rate", "drop_rate"):
        if key in accepted:
            model_kwargs[key] = 0.0
    if active_branches:
        if "zero_init_residual" in accepted:
            model_kwargs["zero_init_residual"] = False
        if "skipinit_gain" in accepted:
            model_kwargs["skipinit_gain"] = jnp.ones
    return compute_profile(lambda: model_cls(num_classes, **model_kwargs), name, **kwargs)


def plot_signal_propagation(
    profiles: Sequence[SignalProfile],
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
) -> Any:
    """Draws the three SPP panels, one line per model, and optionally saves a PNG.

    Panel 1 and 2 plot ``avg_sq_mean`` and ``avg_var`` against the position (0 = stem
    output, ``i`` = after block ``i``); panel 3 plots ``res_avg_var`` against the block
    number ``1..N``.

    Args:
        profiles: the models to compare.
        path: where to write the PNG (directories are created), or None.
        title: figure title.

    Returns:
        The ``matplotlib.figure.Figure`` (its lines hold exactly the plotted data).
    """
    from matplotlib.figure import Figure  # Agg canvas; no pyplot, no display

    if not profiles:
        raise ValueError("plot_signal_propagation needs at least one profile.")
    figure = Figure(figsize=(15, 4.2), dpi=100, layout="constrained")
    axes = figure.subplots(1, len(PANELS))
    for ax, (panel_title, field) in zip(axes, PANELS, strict=True):
        for profile in profiles:
            values = getattr(profile, field)
            start = 1 if field == "res_avg_var" else 0
            ax.plot(np.arange(start, start + len(values)), values, marker=".", label=profile.name)
        ax.set_title(panel_title)
        ax.set_xlabel("residual block" if field == "res_avg_var" else "depth (0 = stem)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        figure.suptitle(title)
    if path is not None:
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        figure.savefig(path, format="png")
    return figure


def save_profiles(profiles: Sequence[SignalProfile], path: str | os.PathLike) -> None:
    """Writes the profiles as JSON (the numbers behind the plot)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump([p.to_dict() for p in profiles], f, indent=1)

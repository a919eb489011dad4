"""Signal propagation plots: the metrics they show, and the PNG the tool writes."""

import json

import haiku as hk
import jax
import matplotlib.image
import numpy as np
import pytest

from experiments import signal_prop as tool
from nfnets_jax.models import ResNet
from nfnets_jax.models import signal_prop_plots as spp
from tests.training.baseline_tiny import SHRINK


def numpy_channel_stats(x):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 1, 2))
    return float((mean**2).mean()), float(x.var(axis=(0, 1, 2)).mean())


@pytest.mark.slow
def test_resnet_metrics_are_the_block_outputs_statistics():
    """avg_sq_mean/avg_var of every block output and the branch variance, vs numpy."""
    outputs_seen = {}

    def interceptor(next_f, args, kwargs, context):
        out = next_f(*args, **kwargs)
        if (
            context.method_name == "__call__"
            and context.module.module_name.startswith("ResNet/~/block_")
            and context.module.module_name.count("/") == 2
        ):
            outputs_seen[context.module.module_name] = out
        return out

    def run(x):
        with hk.intercept_methods(interceptor):
            out = ResNet(10, 50, "v2", "batch", zero_init_residual=False, **SHRINK["ResNet"])(
                x, is_training=True, return_metrics=True
            )
        return out, dict(outputs_seen)

    forward = hk.transform_with_state(run)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    params, state = forward.init(jax.random.key(1, impl="unsafe_rbg"), x)
    (metrics, blocks), _ = forward.apply(params, state, None, x)
    profile = spp.profile_from_metrics("bn", jax.device_get(metrics))
    assert profile.num_blocks == 4
    for i in range(4):
        out, branch = blocks[f"ResNet/~/block_{i}"]
        sq_mean, var = numpy_channel_stats(out)
        assert profile.avg_sq_mean[i + 1] == pytest.approx(sq_mean, rel=1e-4)
        assert profile.avg_var[i + 1] == pytest.approx(var, rel=1e-4)
        assert profile.res_avg_var[i] == pytest.approx(numpy_channel_stats(branch)[1], rel=1e-4)
        assert profile.res_avg_var[i] > 0  # branches active (zero_init_residual=False)


def test_profile_from_metrics_needs_complete_metrics():
    with pytest.raises(ValueError, match="return_metrics"):
        spp.profile_from_metrics("x", {"avg_var_0": 1.0, "avg_sq_mean_0": 1.0})


def test_the_tool_writes_a_png_whose_curves_are_the_computed_metrics(tmp_path):
    specs = [
        "BN=tests/training/baseline_tiny.py:resnet50_bn",
        "NF=tests/training/baseline_tiny.py:nf_resnet50",
    ]
    png = tool.run(specs, str(tmp_path), batch_size=2, image_size=16)
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600
    assert np.asarray(image).std() > 0.01  # something was drawn
    saved = json.loads((tmp_path / "signal_propagation.json").read_text())
    assert [p["name"] for p in saved] == ["BN", "NF"]
    profiles = [
        spp.SignalProfile(
            p["name"], *(np.array(p[field]) for field in ("avg_sq_mean", "avg_var", "res_avg_var"))
        )
        for p in saved
    ]
    # The active-branch default: BN branches are not zero-initialised, NF skip gains are 1.
    for profile in profiles:
        assert profile.num_blocks == 4 and np.all(profile.res_avg_var > 0)
        assert not np.allclose(profile.avg_var[1:], profile.avg_var[1])
    # Redraw from the same numbers and read back the plotted line data.
    figure = spp.plot_signal_propagation(profiles, tmp_path / "again.png")
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == [title for title, _ in spp.PANELS]
    for ax, (_, field) in zip(axes, spp.PANELS, strict=True):
        assert [line.get_label() for line in ax.get_lines()] == ["BN", "NF"]
        for line, profile in zip(ax.get_lines(), profiles, strict=True):
            np.testing.assert_allclose(line.get_ydata(), getattr(profile, field))
            start = 1 if field == "res_avg_var" else 0
            np.testing.assert_array_equal(
                line.get_xdata(), np.arange(start, start + len(getattr(profile, field)))
            )
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tool_errors():
    with pytest.raises(tool.ConfigError, match="--models is empty"):
        tool.run([], "/tmp/unused")
    with pytest.raises(tool.ConfigError, match="Unknown config 'resnet51_bn'"):
        tool.run(["resnet51_bn"], "/tmp/unused")

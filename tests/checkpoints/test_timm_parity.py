"""Parity with timm itself: the same weights give the same logits, in both directions.

timm's ``dm_nfnet_f0`` (timm 1.0.31, requirements-timm.txt) at 64 px, batch 2, on the
CPU: its random weights read by the project (``numerics='timm'``), and the project's
random weights written with :func:`~nfnets_jax.checkpoints.save_timm` and loaded by
``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=path))``,
which loads strictly and offline (the local file only).
"""

import dataclasses

import numpy as np
import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

import jax  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from nfnets_jax import checkpoints  # noqa: E402

IMAGES = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
# float32 through ~60 layers, two implementations: relative to the largest logit.
RTOL = 3e-5  # measured: 4.4e-6 (6.7e-5 on logits up to 15)


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def timm_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).numpy()


def our_logits(loaded: checkpoints.LoadedCheckpoint, numerics: str = "timm") -> np.ndarray:
    kwargs = {**loaded.spec.model_kwargs, "numerics": numerics}
    network = dataclasses.replace(loaded.spec, model_kwargs=kwargs).build()
    out, _ = jax.jit(lambda p, x: network.apply(p, {}, None, x, is_training=False))(
        loaded.params, IMAGES
    )
    return np.asarray(out["logits"])


def assert_close(ours, theirs):
    scale = np.abs(theirs).max()
    assert scale > 0.1  # the random weights give logits that say something
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=RTOL * scale)


def randomize_gains(model, seed):
    """timm initialises skip gains to 0 (every block an identity): make every part count."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("skipinit_gain", ".gain", ".bias")):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))


def test_timm_weights_give_timms_logits(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("dm_nfnet_f0")
    randomize_gains(model, 1)
    path = tmp_path / "timm_f0.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = checkpoints.load_checkpoint(path)
    assert loaded.spec.model_kwargs["numerics"] == "timm"
    theirs = timm_logits(model)
    assert_close(our_logits(loaded), theirs)
    # DeepMind's numerics on the same weights differ by more than the tolerance.
    assert np.abs(our_logits(loaded, "deepmind") - theirs).max() > RTOL * np.abs(theirs).max()
    # A .pth file gives the same parameters.
    torch.save(model.state_dict(), tmp_path / "timm_f0.pth")
    pth = checkpoints.load_checkpoint(tmp_path / "timm_f0.pth")
    for module, params in loaded.params.items():
        for name, value in params.items():
            np.testing.assert_array_equal(pth.params[module][name], value)


def test_our_weights_load_strictly_into_timm(tmp_path):
    shapes = checkpoints.timm_model_spec(checkpoints.TIMM_MODELS["dm_nfnet_f0"], 1000)
    tree = shapes.abstract_params()
    rng = np.random.default_rng(2)
    params = {}
    for module, leaves in tree.items():
        params[module] = {}
        for name, leaf in leaves.items():
            if name in ("skip_gain", "gain", "bias", "b"):
                value = 0.5 + rng.random(leaf.shape)
            else:
                fan_in = int(np.prod(leaf.shape[:-1])) or 1
                value = rng.standard_normal(leaf.shape) / np.sqrt(fan_in)
            params[module][name] = value.astype(np.float32)
    path = tmp_path / "ours_f0.safetensors"
    checkpoints.save_timm(params, path)
    model = timm.create_model(
        "dm_nfnet_f0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    loaded = checkpoints.LoadedCheckpoint(params, None, shapes, str(path), "ours")
    assert_close(our_logits(loaded), timm_logits(model))

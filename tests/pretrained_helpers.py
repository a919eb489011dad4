"""Synthetic checkpoints and real sample images for the pretrained/CLI/notebook tests.

Checkpoints are the tiny NFNet of ``tests/training/tiny.py`` (two stages of width 16)
with random parameters, written exactly as DeepMind's 2021 release was: a dill-style
pickle of Haiku FlatMappings of numpy 1.x float32 arrays
(``tests.checkpoints.test_formats.legacy_bytes``).
Images are real photos shipped inside scikit-image and matplotlib.
"""

import os

import jax
import numpy as np

from nfnets_jax.checkpoints import ModelSpec
from tests.checkpoints.test_formats import legacy_bytes
from tests.models.conftest import random_params
from tests.training.tiny import TINY_NFNET

HEAD = "NFNet/~/linear"


def tiny_spec(num_classes: int = 1000, **kwargs) -> ModelSpec:
    return ModelSpec(
        model="NFNet",
        model_kwargs={**TINY_NFNET, **kwargs},
        num_classes=num_classes,
        image_size=64,
        eval_preproc="resize_crop_32",
    )


def synthetic_params(num_classes: int = 1000, seed: int = 0, **kwargs):
    """Random float32 numpy parameters of the tiny NFNet (no Haiku init compiled)."""
    params = random_params(tiny_spec(num_classes, **kwargs).abstract_params(), seed=seed)
    return jax.tree.map(np.asarray, params)


def write_released_layout(params, path) -> str:
    """Writes ``params`` the way DeepMind's ``{V}_haiku.npz`` files were written."""
    arrays = {
        m: {n: np.asarray(v, np.float32) for n, v in sub.items()} for m, sub in params.items()
    }
    with open(path, "wb") as f:
        f.write(legacy_bytes(arrays))
    return os.fspath(path)


def grace_hopper_path() -> str:
    import matplotlib

    return os.path.join(
        os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"
    )


def sample_images() -> dict[str, np.ndarray]:
    """Real photos as uint8 RGB arrays of different sizes (and one greyscale)."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),  # 512 x 512 x 3
        "chelsea": data.chelsea(),  # 300 x 451 x 3
        "camera": data.camera(),  # 512 x 512 greyscale
    }

"""`nfnets_jax.pretrained`: a released-layout file in, ImageNet predictions out."""

import io

import haiku as hk
import jax
import numpy as np
import pytest
from PIL import Image

from nfnets_jax import checkpoints, pretrained
from nfnets_jax.data import MEAN_RGB, STDDEV_RGB, imagenet
from nfnets_jax.models import NFNet
from tests.data.test_preprocess import np_normalize, np_resize
from tests.pretrained_helpers import (
    HEAD,
    TINY_NFNET,
    grace_hopper_path,
    sample_images,
    synthetic_params,
    write_released_layout,
)

SIZE = 64  # test resolution used here (the default of an unknown NFNet is 256)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A 1,000-class tiny NFNet written exactly like DeepMind's F0_haiku.npz."""
    params = synthetic_params(1000, seed=3)
    path = write_released_layout(params, tmp_path_factory.mktemp("ckpt") / "tiny_haiku.npz")
    return path, params


@pytest.fixture(scope="module")
def model(released):
    return pretrained.load(released[0], image_size=SIZE, conv_impl="native")


def test_the_network_is_recognised_from_the_released_layout(released, model):
    path, params = released
    assert model.variant is None  # narrower than any F variant
    assert dict(model.spec.model_kwargs) == {
        "variant": "F0",
        "width_pattern": (16, 16),
        "depth_pattern": (1, 1),
        "stem_widths": (8, 8, 8),
        "group_width": 8,
    }
    assert (model.num_classes, model.spec.eval_preproc) == (1000, "resize_crop_32")
    assert model.class_names == imagenet.class_names()
    assert "inferred from the tree" in model.description
    assert pretrained.load(path).image_size == 256  # default: F0's test size
    loaded = jax.tree.map(np.asarray, model.params)
    assert checkpoints.flatten_params(loaded).keys() == checkpoints.flatten_params(params).keys()
    for key, value in checkpoints.flatten_params(params).items():
        np.testing.assert_array_equal(checkpoints.flatten_params(loaded)[key], value)


def test_the_architecture_can_be_given_explicitly(released):
    path, _ = released
    given = pretrained.load(path, model="NFNet", model_kwargs=TINY_NFNET, eval_preproc="resize")
    assert "architecture given by the caller" in given.description
    assert dict(given.spec.model_kwargs) == TINY_NFNET
    assert (given.image_size, given.spec.eval_preproc) == (256, "resize")
    assert given.class_names[945] == "bell pepper"


def test_preprocess_is_resize_crop_32_of_any_image_form(model):
    photo = sample_images()["chelsea"]  # 300 x 451, aspect ratio ignored
    expected = np_normalize(np_resize(photo, SIZE + 32, SIZE + 32)[16 : 16 + SIZE, 16 : 16 + SIZE])
    png = io.BytesIO()
    Image.fromarray(photo).save(png, format="PNG")
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    batch = model.preprocess([photo, png.getvalue(), Image.fromarray(photo), rgba])
    assert batch.shape == (4, SIZE, SIZE, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], expected, atol=0.15 / 57)  # TF's quantized bicubic
    for other in batch[1:]:  # PNG bytes, PIL image and RGBA decode to the same pixels
        np.testing.assert_array_equal(other, batch[0])
    # A greyscale image becomes three equal channels before normalization.
    grey = model.preprocess(sample_images()["camera"])[0] * STDDEV_RGB + MEAN_RGB
    np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-3)
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-3)


def test_logits_are_the_networks_on_preprocessed_images(released, model):
    _, params = released
    images = [grace_hopper_path(), *sample_images().values()]
    forward = hk.transform(
        lambda x: NFNet(1000, **TINY_NFNET, conv_impl="native")(x, is_training=False)
    )
    inputs = model.preprocess(images)
    expected = np.asarray(jax.jit(forward.apply)(params, None, inputs)["logits"])
    logits = model.logits(images)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    probs = model.predict(images)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    shifted = np.exp(expected - expected.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, shifted / shifted.sum(-1, keepdims=True), atol=1e-6)
    top = model.top_k(images, k=3)
    assert len(top) == 4 and all(len(row) == 3 for row in top)
    for row, p in zip(top, probs, strict=True):
        assert [t.index for t in row] == list(np.argsort(-p, kind="stable")[:3])
        assert [t.name for t in row] == [imagenet.class_names()[t.index] for t in row]


def test_top_k_of_a_known_classifier(tmp_path):
    """Zero classifier weights: the bias alone decides, so probabilities are closed form."""
    params = synthetic_params(1000, seed=4)
    params[HEAD]["w"] = np.zeros_like(params[HEAD]["w"])
    bias = np.zeros(1000, np.float32)
    bias[[945, 281, 1, 517, 0]] = [5.0, 4.0, 3.0, 2.0, 1.0]
    params[HEAD]["b"] = bias
    path = write_released_layout(params, tmp_path / "known.npz")
    model = pretrained.load(path, image_size=SIZE, conv_impl="native")
    softmax = np.exp(bias.astype(np.float64)) / np.exp(bias.astype(np.float64)).sum()
    for row in model.top_k(list(sample_images().values()), k=5):
        assert [(p.index, p.name) for p in row] == [
            (945, "bell pepper"),
            (281, "tabby"),
            (1, "goldfish"),
            (517, "crane"),
            (0, "tench"),
        ]
        np.testing.assert_allclose(
            [p.probability for p in row], softmax[[945, 281, 1, 517, 0]], rtol=1e-6
        )


def test_clear_errors(released, tmp_path, model):
    path, _ = released
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="dm-nfnets/F0_haiku"):
        pretrained.load(tmp_path / "F0_haiku.npz")
    with pytest.raises(ValueError, match="neither a zip"):
        pretrained.load(grace_hopper_path())
    # An explicit option the file contradicts: the error lists what differs.
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        pretrained.load(path, model_kwargs={"use_two_convs": False})
    assert "unexpected in the checkpoint (6)" in str(error.value)  # conv1b of 2 blocks
    assert "conv1b" in str(error.value) and "does not fit" in str(error.value)
    with pytest.raises(ValueError, match="uint8"):
        model.preprocess(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="Cannot decode image #0"):
        model.preprocess(b"not an image")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        model.preprocess("missing.jpg")
    with pytest.raises(ValueError, match="shape"):
        model.preprocess(np.zeros((8, 8, 2), np.uint8))

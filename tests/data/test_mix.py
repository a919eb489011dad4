"""MixUp and CutMix: ratios, box masks and batch layout."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from nfnets_jax.data.mix import cutmix_masks, mix_batch, mixup_ratios

SEED = tf.constant([11, 22], tf.int64)


def test_mixup_ratios_follow_beta():
    for alpha in (0.2, 1.0):
        r = mixup_ratios(SEED, alpha, 20000).numpy()
        assert r.dtype == np.float32 and r.min() >= 0 and r.max() <= 1
        # Empirical CDF against Beta(alpha, alpha) at fixed points: the standard error is
        # below 0.0036, so 0.015 is over 4 sigma. (A KS test would flag float32 rounding
        # the ~2% of draws within 6e-8 of 1 to exactly 1.)
        beta = stats.beta(alpha, alpha)
        for t in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
            assert np.mean(r <= t) == pytest.approx(beta.cdf(t), abs=0.015), (alpha, t)
        assert r.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.03)
    np.testing.assert_array_equal(mixup_ratios(SEED, 0.2, 5), mixup_ratios(SEED, 0.2, 5))


def np_cutmix_masks(seed, num, h, w):
    """The box rule of the spec, from the same stateless draws."""
    keys = tf.random.experimental.stateless_split(seed, num=3)
    cx = tf.random.stateless_uniform([num], keys[0], 0, w, dtype=tf.int32).numpy()
    cy = tf.random.stateless_uniform([num], keys[1], 0, h, dtype=tf.int32).numpy()
    p = tf.random.stateless_uniform([num], keys[2]).numpy()
    length = np.sqrt(np.float32(1) - p)
    masks = np.zeros((num, h, w, 1), np.float32)
    for i in range(num):
        rw = int(length[i] * np.float32(w))
        rh = int(length[i] * np.float32(h))
        x0, x1 = np.clip([cx[i] - rw // 2, cx[i] + rw // 2], 0, w)
        y0, y1 = np.clip([cy[i] - rh // 2, cy[i] + rh // 2], 0, h)
        masks[i, y0:y1, x0:x1] = 1
    return masks


def test_cutmix_masks_are_the_spec_boxes():
    masks = cutmix_masks(SEED, 64, 24, 40).numpy()
    np.testing.assert_array_equal(masks, np_cutmix_masks(SEED, 64, 24, 40))
    assert masks.shape == (64, 24, 40, 1)
    # Boxes vary in size; clipping makes the mean area fraction below E[1 - p] = 1/2.
    areas = masks.mean(axis=(1, 2, 3))
    assert 0.2 < areas.mean() < 0.5 and areas.min() < 0.1 and areas.max() > 0.7


@pytest.fixture(scope="module")
def pairs():
    """16 examples with distinct constant images (value 10 * i + 1) and labels 100 + i."""
    images = np.stack([np.full((12, 20, 3), 10.0 * i + 1, np.float32) for i in range(16)])
    return {
        "images": images,
        "labels": np.arange(100, 116, dtype=np.int32),
        "index": np.arange(16, dtype=np.int64),
    }


def check_mixup_rows(out, pairs, rows, first, second):
    r = out["ratio"][rows]
    expected = (
        r[:, None, None, None] * pairs["images"][first]
        + (1 - r[:, None, None, None]) * (pairs["images"][second])
    )
    np.testing.assert_allclose(out["images"][rows], expected, rtol=1e-6)
    np.testing.assert_array_equal(out["labels"][rows], pairs["labels"][first])
    np.testing.assert_array_equal(out["mix_labels"][rows], pairs["labels"][second])


def check_cutmix_rows(out, pairs, rows, first, second):
    for row, a, b in zip(
        range(rows.start, rows.stop),
        range(first.start, first.stop),
        range(second.start, second.stop),
        strict=True,
    ):
        image = out["images"][row]
        from_first = image[..., 0] == pairs["images"][a, 0, 0, 0]
        from_second = image[..., 0] == pairs["images"][b, 0, 0, 0]
        # Every pixel comes from one of the pair; the ratio is the first one's area.
        assert np.all(from_first | from_second)
        assert out["ratio"][row] == pytest.approx(from_first.mean(), abs=1e-6)
        ys, xs = np.nonzero(from_first)
        if len(ys):  # the first image fills one axis-aligned box
            assert from_first[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
        assert out["labels"][row] == pairs["labels"][a]
        assert out["mix_labels"][row] == pairs["labels"][b]


def test_mixup_cutmix_layout(pairs):
    out = {k: v.numpy() for k, v in mix_batch(pairs, SEED, mixup=True, cutmix=True).items()}
    assert out["images"].shape == (8, 12, 20, 3) and out["ratio"].dtype == np.float32
    assert set(out) == {"images", "labels", "mix_labels", "ratio", "index", "mix_index"}
    # Rows 0-3: MixUp of inputs 0-3 with 4-7; rows 4-7: CutMix of inputs 8-11 with 12-15.
    check_mixup_rows(out, pairs, slice(0, 4), slice(0, 4), slice(4, 8))
    check_cutmix_rows(out, pairs, slice(4, 8), slice(8, 12), slice(12, 16))
    np.testing.assert_array_equal(out["index"], [0, 1, 2, 3, 8, 9, 10, 11])
    np.testing.assert_array_equal(out["mix_index"], [4, 5, 6, 7, 12, 13, 14, 15])
    assert np.all((out["ratio"] >= 0) & (out["ratio"] <= 1))


def test_mixup_only_and_cutmix_only(pairs):
    out = {k: v.numpy() for k, v in mix_batch(pairs, SEED, mixup=True, cutmix=False).items()}
    check_mixup_rows(out, pairs, slice(0, 8), slice(0, 8), slice(8, 16))
    out = mix_batch(pairs, SEED, mixup=False, cutmix=True, mixup_alpha=0.4)
    out = {k: v.numpy() for k, v in out.items()}
    check_cutmix_rows(out, pairs, slice(0, 8), slice(0, 8), slice(8, 16))


def test_mix_inside_tf_data_matches_eager(pairs):
    ds = tf.data.Dataset.from_tensor_slices(pairs).batch(16, drop_remainder=True)
    ds = ds.map(lambda b: mix_batch(b, SEED, mixup=True, cutmix=True))
    in_pipeline = next(iter(ds.as_numpy_iterator()))
    eager = mix_batch(pairs, SEED, mixup=True, cutmix=True)
    for key, value in eager.items():
        np.testing.assert_array_equal(in_pipeline[key], value.numpy(), err_msg=key)


def test_mix_errors(pairs):
    with pytest.raises(ValueError, match="mixup=True and/or cutmix=True"):
        mix_batch(pairs, SEED, mixup=False, cutmix=False)
    odd = {k: v[:6] for k, v in pairs.items()}
    with pytest.raises(ValueError, match="per-device batch .* must be even"):
        mix_batch(odd, SEED, mixup=True, cutmix=True)

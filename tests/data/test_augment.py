"""Parsing of the original augmentation names."""

import pytest

from nfnets_jax.data.augment import AugmentConfig, parse_augment_name


@pytest.mark.parametrize(
    "name, expected",
    [
        # NFNet-F0 / F1 / F3 recipes (RA_level '405', '410', '415').
        ("cutmix_mixup_randaugment_405", AugmentConfig(True, True, 0.2, 4, 5)),
        ("cutmix_mixup_randaugment_410", AugmentConfig(True, True, 0.2, 4, 10)),
        ("cutmix_mixup_randaugment_415", AugmentConfig(True, True, 0.2, 4, 15)),
        # NF-RegNet recipe.
        ("mixup_cutmix", AugmentConfig(True, True, 0.2, 0, 0)),
        ("mixup", AugmentConfig(True, False, 0.2, 0, 0)),
        ("cutmix", AugmentConfig(False, True, 0.2, 0, 0)),
        # A number right after mixup is its Beta alpha.
        ("mixup_0.4_randaugment_410", AugmentConfig(True, False, 0.4, 4, 10)),
        ("mixup_1_cutmix", AugmentConfig(True, True, 1.0, 0, 0)),
        # A code of at most 100 is a magnitude with the default 2 layers.
        ("randaugment_15", AugmentConfig(False, False, 0.2, 2, 15)),
        ("randaugment_210", AugmentConfig(False, False, 0.2, 2, 10)),
        ("randaugment_100", AugmentConfig(False, False, 0.2, 2, 100)),
        (None, AugmentConfig()),
        ("", AugmentConfig()),
        ("None", AugmentConfig()),
    ],
)
def test_parse_augment_name(name, expected):
    assert parse_augment_name(name) == expected


def test_config_properties():
    config = parse_augment_name("cutmix_mixup_randaugment_405")
    assert config.mixing and config.randaugment
    assert not parse_augment_name("randaugment_405").mixing
    assert not parse_augment_name("mixup").randaugment


@pytest.mark.parametrize(
    "name, message",
    [
        ("autoaugment", "AutoAugment is not implemented"),
        ("cutmix_mixup_autoaugment", "AutoAugment is not implemented"),
        ("randaugment", "must be followed by its code"),
        ("randaugment_x", "must be followed by its code"),
        ("mixup_-0.5", "alpha must be > 0"),
        ("cutmix_mixup_randaugmnt_405", "unknown token 'randaugmnt'"),
        ("mixup_cutout", "unknown token 'cutout'"),
    ],
)
def test_bad_names_raise_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        parse_augment_name(name)

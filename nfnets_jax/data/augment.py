"""The names that pick a training augmentation and the crops, parsed without TensorFlow.

Start-up validation checks them before anything loads TensorFlow.

The original experiment selects its training augmentation with one string, e.g.
`'cutmix_mixup_randaugment_405'` for NFNet-F0 or `'mixup_cutmix'` for NF-RegNets. The
string is a `_`-joined list of tokens:

* `mixup` - MixUp (Zhang et al., arXiv:1710.09412). An optional number right after it
  sets the Beta(alpha, alpha) concentration (default 0.2), e.g. `mixup_0.4`.
* `cutmix` - CutMix (Yun et al., arXiv:1905.04899).
* `randaugment_NNN` - RandAugment (Cubuk et al., arXiv:1909.13719). A code above 100 is
  `layers * 100 + magnitude` (`405` = 4 layers at magnitude 5); a code of at most 100 is
  a magnitude with the original's default of 2 layers.

With both `mixup` and `cutmix`, each per-device batch has its first half mixed by
MixUp and its second half by CutMix (the original's `my_mixup_cutmix`).
"""

from __future__ import annotations

import dataclasses

__all__ = ["TRAIN_PREPROCS", "AugmentConfig", "parse_augment_name", "parse_eval_preproc"]

# Training crops (`train_preproc`, see `nfnets_jax.data.preprocess`).
TRAIN_PREPROCS = (
    "inception_crop",
    "resize",
    "resize_flip",
    "resize_shift",
    "resize_shift_flip",
)

# Default MixUp Beta concentration of the original `dataset.py` (spec section 6.3).
DEFAULT_MIXUP_ALPHA = 0.2
# RandAugment codes above this are `layers * 100 + magnitude` (spec section 6.5).
_LAYER_CODE_THRESHOLD = 100
# Layers used when the code is a bare magnitude (the original's default).
_DEFAULT_LAYERS = 2


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What a training augmentation name asks for.

    Attributes:
        mixup: apply MixUp.
        cutmix: apply CutMix.
        mixup_alpha: Beta(alpha, alpha) concentration of the MixUp weight.
        randaugment_layers: RandAugment layers per image (0: no RandAugment).
        randaugment_magnitude: RandAugment magnitude M (the original's 0-10 scale,
            extrapolated above 10 as F3-F7 do with M = 15).
    """

    mixup: bool = False
    cutmix: bool = False
    mixup_alpha: float = DEFAULT_MIXUP_ALPHA
    randaugment_layers: int = 0
    randaugment_magnitude: int = 0

    @property
    def mixing(self) -> bool:
        """Whether pairs of examples are mixed (MixUp and/or CutMix)."""
        return self.mixup or self.cutmix

    @property
    def randaugment(self) -> bool:
        """Whether RandAugment runs."""
        return self.randaugment_layers > 0


def _as_float(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def parse_augment_name(name: str | None) -> AugmentConfig:
    """Parses an original-style augmentation name.

    Args:
        name: e.g. `'cutmix_mixup_randaugment_405'`, `'mixup_cutmix'`,
            `'mixup_0.4_randaugment_410'`, `'randaugment_15'`; `None`, `''` or `'none'`
            for no augmentation beyond the crop and flip.

    Returns:
        The parsed `AugmentConfig`.

    Raises:
        ValueError: for unknown tokens, a missing or malformed RandAugment code, a
            non-positive MixUp alpha, or `autoaugment` (not implemented, see below).

    Example:
        >>> parse_augment_name('cutmix_mixup_randaugment_405')
        AugmentConfig(mixup=True, cutmix=True, mixup_alpha=0.2, randaugment_layers=4,
        randaugment_magnitude=5)
    """
    if name is None or name.strip().lower() in ("", "none"):
        return AugmentConfig()
    tokens = name.strip().lower().split("_")
    config: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "mixup":
            config["mixup"] = True
            alpha = _as_float(tokens[i + 1]) if i + 1 < len(tokens) else None
            if alpha is not None:
                if alpha <= 0:
                    raise ValueError(
                        f"Augment name {name!r}: the MixUp alpha must be > 0, got {alpha}."
                    )
                config["mixup_alpha"] = alpha
                i += 1
        elif token == "cutmix":
            config["cutmix"] = True
        elif token == "randaugment":
            code = tokens[i + 1] if i + 1 < len(tokens) else ""
            if not code.isdigit():
                raise ValueError(
                    f"Augment name {name!r}: 'randaugment' must be followed by its code, "
                    "e.g. 'randaugment_405' (4 layers, magnitude 5) or 'randaugment_15' "
                    "(2 layers, magnitude 15)."
                )
            value = int(code)
            if value > _LAYER_CODE_THRESHOLD:
                layers, magnitude = value // 100, value % 100
            else:
                layers, magnitude = _DEFAULT_LAYERS, value
            config["randaugment_layers"] = layers
            config["randaugment_magnitude"] = magnitude
            i += 1
        elif token == "autoaugment":
            raise ValueError(
                f"Augment name {name!r}: AutoAugment is not implemented (its policy table "
                "is not part of the NFNet recipe this package reproduces). Use RandAugment, "
                "e.g. 'cutmix_mixup_randaugment_405' as NFNet-F0 does."
            )
        else:
            raise ValueError(
                f"Augment name {name!r}: unknown token {token!r}. Use '_'-joined tokens "
                "'mixup' (optionally followed by alpha), 'cutmix' and 'randaugment_<code>', "
                "e.g. 'cutmix_mixup_randaugment_405', or None."
            )
        i += 1
    return AugmentConfig(**config)  # type: ignore[arg-type]


def parse_eval_preproc(method: str) -> tuple[str, float]:
    """Parses an eval preprocessing name into `('resize_crop', p)` or `('crop_resize', 0)`.

    Raises:
        ValueError: for unknown names or a non-positive `p`.

    Example:
        >>> parse_eval_preproc('resize_crop_32')
        ('resize_crop', 32.0)
    """
    if method == "crop_resize":
        return "crop_resize", 0.0
    if method == "resize":
        return "resize_crop", 1.0
    prefix = "resize_crop_"
    if method.startswith(prefix):
        try:
            pad = float(method[len(prefix) :])
        except ValueError:
            pad = -1.0
        if pad > 0:
            return "resize_crop", pad
    raise ValueError(
        f"Unknown eval_preproc {method!r}; expected 'resize_crop_<p>' (e.g. 'resize_crop_32', "
        "p > 0), 'crop_resize' or 'resize'."
    )

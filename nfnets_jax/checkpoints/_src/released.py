"""DeepMind's released NFNet ImageNet weights: where they are and what they score.

References:
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171 (Table 3; released weights in the authors' README).
"""

from __future__ import annotations

__all__ = ["RELEASED_VARIANTS", "REPORTED_ACCURACY", "WEIGHTS_URL", "released_weights_url"]

#: Where DeepMind publishes the NFNet ImageNet weights (spec section 3.2).
WEIGHTS_URL = "https://storage.googleapis.com/dm-nfnets/{variant}_haiku.npz"
#: Variants with released weights: F0-F5 trained without SAM, F6 with SAM.
RELEASED_VARIANTS = ("F0", "F1", "F2", "F3", "F4", "F5", "F6")
#: ImageNet top-1/top-5 (%) reported for the released checkpoints (spec section 3.2; the
#: paper's numbers, means of 3 seeds except F6+SAM), at the variant's test resolution.
REPORTED_ACCURACY = {
    "F0": (83.6, 96.8),
    "F1": (84.7, 97.1),
    "F2": (85.1, 97.3),
    "F3": (85.7, 97.5),
    "F4": (85.9, 97.6),
    "F5": (86.0, 97.6),
    "F6": (86.5, 97.9),
}


def released_weights_url(variant: str) -> str:
    """Download address of DeepMind's weights for ``variant`` ('F0' ... 'F6').

    Raises:
        ValueError: for variants without released weights.

    Example:
        >>> released_weights_url('F0')
        'https://storage.googleapis.com/dm-nfnets/F0_haiku.npz'
    """
    if variant not in RELEASED_VARIANTS:
        raise ValueError(
            f"DeepMind released weights for {', '.join(RELEASED_VARIANTS)} only, not {variant!r}."
        )
    return WEIGHTS_URL.format(variant=variant)

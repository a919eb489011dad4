"""nfnets_jax: Normalizer-Free Networks and Adaptive Gradient Clipping in JAX/Haiku."""

__version__ = "0.1.0"

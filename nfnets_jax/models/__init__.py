"""nfnets_jax.models."""

"""nfnets_jax.training."""

"""nfnets_jax.data."""

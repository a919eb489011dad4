"""nfnets_jax.optim."""

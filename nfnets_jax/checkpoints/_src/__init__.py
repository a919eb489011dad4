"""Implementation of `nfnets_jax.checkpoints`; import the public names from there."""

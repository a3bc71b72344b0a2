"""ggtalker_jax.train."""

"""ggtalker_jax.data."""

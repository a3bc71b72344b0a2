"""ggtalker_jax.head."""

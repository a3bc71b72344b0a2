"""ggtalker_jax.render."""

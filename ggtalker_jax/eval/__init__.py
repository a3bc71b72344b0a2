"""ggtalker_jax.eval."""

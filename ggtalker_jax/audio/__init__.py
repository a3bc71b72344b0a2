"""ggtalker_jax.audio."""

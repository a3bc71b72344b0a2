"""ggtalker_jax.models."""

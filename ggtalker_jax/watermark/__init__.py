"""ggtalker_jax.watermark."""

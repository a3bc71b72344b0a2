"""Pallas kernels for the Gaussian rasterizer (installed as `ggtalker_jax.kernels`)."""

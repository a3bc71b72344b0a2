"""ggtalker-jax: talking-head synthesis with generalizable Gaussian priors (GGTalker) in JAX.

Subpackages (one concept each): `render` (Gaussian rasterizer), `kernels` (Pallas kernels),
`head` (head models, UV binding), `audio`, `media` (the video reader/writer), `data`, `models` (Flax
networks), `train` (losses, priors, adaptation), `eval`, `watermark`.
"""

__version__ = "0.1.0"

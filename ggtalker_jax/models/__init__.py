"""ggtalker_jax.models: Flax (linen) networks of GGTalker.

- ``A2ETransformer``: audio -> expression diffusion transformer (``diffusion`` has the sampler).
- ``IdentityGaussianGenerator``: Attention-UNet, reference image in UV -> UV Gaussian maps.
- ``ColorMLP``: per-Gaussian expression-dependent colour residual.
- ``BodyInpainter``: UNet blending the rendered head into the head-masked frame.
"""
from ggtalker_jax.models.a2e import A2ETransformer
from ggtalker_jax.models.color_mlp import ColorMLP
from ggtalker_jax.models.configs import (EXPR_DIM, A2EConfig, ColorMLPConfig, GeneratorConfig,
                                         InpainterConfig, ModelsConfig, get_config, paper_config,
                                         small_config)
from ggtalker_jax.models.generator import IdentityGaussianGenerator, rgb_to_sh0, sh0_to_rgb
from ggtalker_jax.models.inpainter import BodyInpainter

__all__ = [
    "A2ETransformer", "IdentityGaussianGenerator", "ColorMLP", "BodyInpainter",
    "A2EConfig", "GeneratorConfig", "ColorMLPConfig", "InpainterConfig", "ModelsConfig",
    "small_config", "paper_config", "get_config", "sh0_to_rgb", "rgb_to_sh0", "EXPR_DIM",
]

"""The talking-head avatar: one identity's learnable parts and the function that renders its frames.

Data flow for one frame (README, "Architecture"):

    reference image --unwrap to UV--> generator --> UV Gaussian maps (+ per-identity UV refinement)
    53-dim expression + pose --head model--> posed mesh --UV binding--> Gaussian means/quats/scales
    colour = SH0 colour + ColorMLP(feature, expression)            (motion-aligned fine texture)
    rasterize (RGB + feature channels, alpha) --> BodyInpainter(render, frame with head masked) --> frame

Parameters (a dict pytree of named groups; the trainer freezes whole groups by these names):
    generator, generator_stats   Identity-Gaussian Generator weights and BatchNorm statistics
    uv_delta                     per-identity refinement of the generated UV maps (adaptation stage 1)
    head                         per-identity head-model parameters: shape [S], expression and pose
                                 corrections per training frame [T, 53] / [T, 6]
    color_mlp                    colour MLP
    inpainter, inpainter_stats   Body Inpainter weights and BatchNorm statistics
    a2e                          Audio-Expression diffusion transformer
BatchNorm runs with its stored statistics (eval mode) during adaptation and rendering; only the
Expression-Visual prior updates them.

Configs: `PriorConfig` is what defines a prior (network sizes, head model and so the UV layout, the A2E's
window and context, audio features and expression normalisation); it is stored with the prior's weights. `AvatarConfig` adds the run-time choices of
one avatar (image size, rasterizer backend, mask dilation).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax import head as head_lib
from ggtalker_jax import models
from ggtalker_jax.audio.features import FeatureSpec
from ggtalker_jax.models import diffusion
from ggtalker_jax.constants import (EXPR_DIM, LEFT_INNER_CORNER, LOWER_INNER_LIP, RIGHT_INNER_CORNER,
                                    UPPER_INNER_LIP)
from ggtalker_jax.head import uv as uv_lib
from ggtalker_jax.render import rasterization
from ggtalker_jax.render.camera import head_space_to_pixels, head_space_viewmat

UV_MAP_KEYS = ("offset", "scale", "rotation", "opacity", "sh0", "feature")
NETWORK_GROUPS = ("a2e", "generator", "generator_stats", "color_mlp", "inpainter", "inpainter_stats")
STATS_GROUPS = ("generator_stats", "inpainter_stats")


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """What defines a prior, stored with its weights (`ggtalker_jax.priors`).

    models_preset: a `ggtalker_jax.models` config ("small" | "paper"); the generator's output resolution R
      is the prior's UV resolution (R * R texels; the valid ones become Gaussians).
    head_model: "open" or a FLAME file path: the mesh and UV layout the Gaussians are bound to.
    a2e_window / a2e_context: the A2E generates `a2e_window` frames at a time; every window after the first
      is conditioned on the `a2e_context` frames before it. The A2E trainer, adaptation and inference all
      cut audio this way (trained with context dropout, so a window without context works too).
    audio: the audio features the A2E reads (`audio.features.FeatureSpec`); its width is the A2E's
      audio_dim, and adaptation and rendering must give the same kind.
    expr_mean / expr_std: per-dimension statistics [53] of the expressions the A2E was trained on; the A2E
      works on ``(expression - mean) / std`` (`expression_norm`), in training and at inference. None:
      no normalisation (priors trained before it existed).

    The A2E part (`A2E_FIELDS`) is how that A2E was trained and always travels with its weights.
    """
    models_preset: str = "small"
    head_model: str = "open"
    a2e_window: int = 32
    a2e_context: int = 4
    audio: FeatureSpec = FeatureSpec()
    expr_mean: tuple[float, ...] | None = dataclasses.field(default=None, repr=False)
    expr_std: tuple[float, ...] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.a2e_window < 2 or not 0 <= self.a2e_context < self.a2e_window:
            raise ValueError(f"PriorConfig: need a2e_window >= 2 and 0 <= a2e_context < a2e_window, got "
                             f"{self.a2e_window} / {self.a2e_context}")
        if isinstance(self.audio, dict):
            object.__setattr__(self, "audio", FeatureSpec.from_dict(self.audio))
        for name in ("expr_mean", "expr_std"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(float(x) for x in v)
                if len(v) != EXPR_DIM or not all(np.isfinite(v)):
                    raise ValueError(f"PriorConfig: {name} must be {EXPR_DIM} finite numbers, got {len(v)}")
                object.__setattr__(self, name, v)
        if (self.expr_mean is None) != (self.expr_std is None):
            raise ValueError("PriorConfig: expr_mean and expr_std come together (both or neither)")
        if self.expr_std is not None and min(self.expr_std) <= 0:
            raise ValueError("PriorConfig: expr_std must be > 0 everywhere")

    @property
    def models(self) -> models.ModelsConfig:
        m = models.get_config(self.models_preset)
        if m.a2e.audio_dim == self.audio.dim:
            return m
        return dataclasses.replace(m, a2e=dataclasses.replace(m.a2e, audio_dim=self.audio.dim))

    @property
    def expression_norm(self) -> diffusion.ExpressionNorm:
        """The A2E's expression normalisation (identity when the prior has none)."""
        if self.expr_mean is None:
            return diffusion.ExpressionNorm.identity(EXPR_DIM)
        return diffusion.ExpressionNorm.create(self.expr_mean, self.expr_std)

    def with_a2e_of(self, other: "PriorConfig") -> "PriorConfig":
        """This prior's networks with `other`'s A2E definition (windowing, audio features, normalisation)."""
        return dataclasses.replace(self, **{k: getattr(other, k) for k in A2E_FIELDS})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["audio"] = self.audio.to_dict()
        for k in ("expr_mean", "expr_std"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    @staticmethod
    def from_dict(d: dict) -> "PriorConfig":
        kw = {f.name: d[f.name] for f in dataclasses.fields(PriorConfig) if f.name in d}
        if "audio" in kw:
            kw["audio"] = FeatureSpec.from_dict(kw["audio"])
        return PriorConfig(**kw)


A2E_FIELDS = ("a2e_window", "a2e_context", "audio", "expr_mean", "expr_std")


@dataclasses.dataclass(frozen=True)
class AvatarConfig:
    """One avatar: its prior's definition plus run-time choices. `small()` runs on a CPU in seconds;
    `paper()` is GGTalker's size."""
    prior: PriorConfig = PriorConfig()
    image_size: int = 64
    head_mask_dilation: int = 3          # pixels; the inpainter blends inside a dilated head mask
    backend: str = "auto"                # rasterizer backend: "auto" = Pallas/Triton on GPU, the XLA:CPU compositor elsewhere

    def __post_init__(self):
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"AvatarConfig: image_size must be a multiple of 16 (>= 16: the inpainter halves "
                             f"it 4 times), got {self.image_size}")

    @property
    def models(self) -> models.ModelsConfig:
        return self.prior.models

    @property
    def uv_resolution(self) -> int:
        return self.models.generator.resolution

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "AvatarConfig":
        d = dict(d)
        if "prior" in d:
            prior = PriorConfig.from_dict(d.pop("prior"))
        else:   # a config written before priors and run-time choices were split
            prior = PriorConfig.from_dict(d)
        fields = {f.name for f in dataclasses.fields(AvatarConfig)} - {"prior"}
        return AvatarConfig(prior=prior, **{k: v for k, v in d.items() if k in fields})

    @staticmethod
    def small(image_size: int = 64, prior: PriorConfig | None = None) -> "AvatarConfig":
        return AvatarConfig(prior=prior or PriorConfig(models_preset="small"), image_size=image_size)

    @staticmethod
    def paper() -> "AvatarConfig":
        return AvatarConfig(prior=PriorConfig(models_preset="paper"), image_size=512, backend="pallas")


@dataclasses.dataclass(frozen=True)
class AvatarStatic:
    """What rendering needs besides the learnable parameters (no gradients flow into it).

    head_model: `ggtalker_jax.head.HeadModel`; binding: `ggtalker_jax.head.uv.UVBinding` at the generator's
    UV resolution; texel_uv [M, 2]: UV coordinates of the bound texels (colour MLP input).
    """
    config: AvatarConfig
    head_model: Any
    binding: Any
    texel_uv: np.ndarray

    @staticmethod
    def build(config: AvatarConfig, head_model=None) -> "AvatarStatic":
        model = head_lib.load(config.prior.head_model) if head_model is None else head_model
        binding = uv_lib.build_uv_binding(model, config.uv_resolution)
        r = config.uv_resolution
        texel_uv = (np.asarray(binding.texel_index, np.float32)[:, ::-1] + 0.5) / r  # (u, v) from (row, col)
        return AvatarStatic(config, model, binding, texel_uv)

    @property
    def num_gaussians(self) -> int:
        return int(self.binding.face.shape[0])


# ----------------------------------------------------------------------------------------------------
# Networks: construction and initialisation
# ----------------------------------------------------------------------------------------------------
def networks(config: AvatarConfig):
    """The four Flax modules of one avatar config: (a2e, generator, color_mlp, inpainter)."""
    m = config.models
    return (models.A2ETransformer(m.a2e), models.IdentityGaussianGenerator(m.generator),
            models.ColorMLP(m.color_mlp), models.BodyInpainter(m.inpainter))


def init_network_params(rng, config: AvatarConfig | PriorConfig) -> dict:
    """Fresh network variables: {"a2e", "generator", "generator_stats", "color_mlp", "inpainter",
    "inpainter_stats"} (what a prior holds). The shapes depend only on the prior's definition."""
    m = config.models
    a2e, gen, cmlp, inp = (models.A2ETransformer(m.a2e), models.IdentityGaussianGenerator(m.generator),
                           models.ColorMLP(m.color_mlp), models.BodyInpainter(m.inpainter))
    k = jax.random.split(rng, 4)
    r, s = m.generator.resolution, 16      # the inpainter is fully convolutional: any multiple of 16
    a2e_vars = a2e.init(k[0], jnp.zeros((1, 8, m.a2e.expr_dim)), jnp.zeros((1,), jnp.int32),
                        jnp.zeros((1, 8, m.a2e.audio_dim)))
    gen_vars = gen.init(k[1], jnp.zeros((1, r, r, m.generator.in_channels)))
    n = 4
    cmlp_vars = cmlp.init(k[2], jnp.zeros((n, m.color_mlp.feature_dim)), jnp.zeros((m.a2e.expr_dim,)),
                          jnp.zeros((n, 2)) if m.color_mlp.num_uv_freqs else None)
    fr = m.inpainter.render_feature_dim
    img = jnp.zeros((1, s, s, 3))
    one = jnp.zeros((1, s, s, 1))
    inp_vars = inp.init(k[3], img, one, jnp.zeros((1, s, s, fr)) if fr else None, img, one)
    return {"a2e": a2e_vars["params"],
            "generator": gen_vars["params"], "generator_stats": gen_vars["batch_stats"],
            "color_mlp": cmlp_vars["params"],
            "inpainter": inp_vars["params"], "inpainter_stats": inp_vars["batch_stats"]}


def init_identity_params(network_params: dict, static: "AvatarStatic", num_frames: int, shape) -> dict:
    """Avatar parameters for one identity: the prior networks plus zero UV refinement and head
    parameters: `shape` [S] (from tracking) and zero per-frame corrections for `num_frames` frames."""
    r = static.config.uv_resolution
    gcfg = static.config.models.generator
    channels = {"offset": 3, "scale": 3, "rotation": 4, "opacity": 1, "sh0": 3,
                "feature": gcfg.feature_dim}
    params = dict(network_params)
    params["uv_delta"] = {k: jnp.zeros((r, r, c)) for k, c in channels.items()}
    params["head"] = {"shape": jnp.asarray(shape, jnp.float32),
                      "expr_delta": jnp.zeros((num_frames, EXPR_DIM)),
                      "pose_delta": jnp.zeros((num_frames, 6))}
    return params


# ----------------------------------------------------------------------------------------------------
# From a reference image to UV Gaussian maps
# ----------------------------------------------------------------------------------------------------
def texel_points(static: AvatarStatic, vertices):
    """Surface points of the bound texels on a mesh: vertices [..., V, 3] -> [..., M, 3]."""
    faces = jnp.asarray(static.head_model.faces)[jnp.asarray(static.binding.face)]  # [M, 3]
    corners = vertices[..., faces, :]                                                # [..., M, 3, 3]
    return jnp.einsum("...mkc,mk->...mc", corners, jnp.asarray(static.binding.bary, vertices.dtype))


def bilinear_sample(image, xy):
    """Samples image [H, W, C] at pixel coordinates xy [N, 2] (pixel centres at +0.5) -> [N, C]."""
    h, w = image.shape[:2]
    x = jnp.clip(xy[:, 0] - 0.5, 0.0, w - 1.0)
    y = jnp.clip(xy[:, 1] - 0.5, 0.0, h - 1.0)
    x0, y0 = jnp.floor(x).astype(jnp.int32), jnp.floor(y).astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def reference_uv_input(static: AvatarStatic, image, vertices, K):
    """The generator's input from one reference frame: [R, R, 7] =
    reference RGB unwrapped into UV with the tracked mesh (zero where the texel faces away from the
    camera or falls outside the frame) | canonical (template) surface position per texel, scaled to about
    [-1, 1] | UV valid mask.

    image [H, W, 3] in [0, 1]; vertices [V, 3] posed reference mesh in head space; K [3, 3].
    """
    r = static.config.uv_resolution
    h, w = image.shape[:2]
    points = texel_points(static, vertices)
    xy, z = head_space_to_pixels(points, K)
    # Facing test: the posed triangle's normal against the direction to the camera (at the origin).
    tri = vertices[jnp.asarray(static.head_model.faces)[jnp.asarray(static.binding.face)]]
    normal = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    facing = jnp.sum(normal * -points, axis=-1) > 0
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h) & (z > 0)
    colour = bilinear_sample(jnp.asarray(image, jnp.float32), xy) * (facing & inside)[:, None]
    canon = texel_points(static, jnp.asarray(static.head_model.v_template, jnp.float32))
    centre = jnp.mean(canon, axis=0)
    canon = (canon - centre) / (jnp.max(jnp.abs(canon - centre)) + 1e-8)
    rows, cols = np.asarray(static.binding.texel_index).T
    out = jnp.zeros((r, r, 7), jnp.float32)
    out = out.at[rows, cols, 0:3].set(colour)
    out = out.at[rows, cols, 3:6].set(canon)
    return out.at[rows, cols, 6].set(1.0)


def identity_uv_input(static: AvatarStatic, shape, reference_frame, reference_params: dict, K):
    """The generator's input for an identity: its reference frame [H, W, 3] unwrapped with the mesh posed
    by `reference_params` (one frame's dict, see `posed_vertices`, without the batch dim) -> [R, R, 7]."""
    frame = {k: jnp.asarray(v)[None] for k, v in reference_params.items()}
    vertices = posed_vertices(static, jnp.asarray(shape), frame)[0]
    return reference_uv_input(static, jnp.asarray(reference_frame, jnp.float32), vertices, jnp.asarray(K))


def generate_uv_maps(params: dict, static: AvatarStatic, uv_input, train: bool = False):
    """Generator + the identity's UV refinement: uv_input [R, R, Cin] (or a batch [B, R, R, Cin]) -> dict
    of [R, R, k] (or [B, R, R, k]) maps (offset, scale, rotation, opacity, sh0, feature).

    train=False uses the stored BatchNorm statistics (adaptation, rendering); train=True (prior training)
    normalises with the batch's statistics and returns (maps, new_generator_stats).
    """
    _, gen, _, _ = networks(static.config)
    batched = uv_input.ndim == 4
    x = uv_input if batched else uv_input[None]
    variables = {"params": params["generator"], "batch_stats": params["generator_stats"]}
    if train:
        maps, updates = gen.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
        maps, updates = gen.apply(variables, x, train=False), None
    if not batched:
        maps = {k: v[0] for k, v in maps.items()}
    maps = apply_uv_delta(maps, params.get("uv_delta"))
    return (maps, updates["batch_stats"]) if train else maps


def apply_uv_delta(maps: dict, delta: dict | None) -> dict:
    """Refines generated UV maps in each quantity's natural space (log for scale, logit for opacity),
    keeping every value valid. delta: dict of [R, R, k] (zeros = no change) or None."""
    if delta is None:
        return maps
    rot = maps["rotation"] + delta["rotation"]
    opacity = jnp.clip(maps["opacity"], 1e-6, 1 - 1e-6)
    logit = jnp.log(opacity) - jnp.log1p(-opacity) + delta["opacity"]
    return {"offset": maps["offset"] + delta["offset"],
            "scale": maps["scale"] * jnp.exp(delta["scale"]),
            "rotation": rot / jnp.linalg.norm(rot, axis=-1, keepdims=True).clip(1e-8),
            "opacity": jax.nn.sigmoid(logit),
            "sh0": maps["sh0"] + delta["sh0"],
            "feature": maps["feature"] + delta["feature"]}


# ----------------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------------
def posed_vertices(static: AvatarStatic, shape, frame: dict):
    """Head-model vertices for frames: frame holds [B, ...] arrays `expression53` [B, 53], `global_rot`,
    `translation`, `neck_pose` [B, 3] and `eye_pose` [B, 6] (missing ones are zero) -> [B, V, 3]."""
    expression, jaw = head_lib.split_expression53(frame["expression53"])
    b = expression.shape[0]
    zeros3 = jnp.zeros((b, 3))
    return head_lib.forward(
        static.head_model, shape=jnp.broadcast_to(shape, (b, shape.shape[-1])), expression=expression,
        jaw_pose=jaw, neck_pose=frame.get("neck_pose", zeros3), eye_pose=frame.get("eye_pose", jnp.zeros((b, 6))),
        global_rot=frame.get("global_rot", zeros3), translation=frame.get("translation", zeros3)).vertices


def frame_gaussians(params: dict, static: AvatarStatic, uv_maps: dict, vertices, expression53):
    """Gaussians of one frame: vertices [V, 3], expression53 [53] -> dict of means [M, 3], quats [M, 4],
    scales [M, 3], opacities [M], colors [M, 3 + Fr] (RGB then rendered feature channels)."""
    g = uv_lib.uv_maps_to_gaussians(static.binding, uv_maps)
    means, quats, scales = uv_lib.bind_gaussians(static.binding, vertices, static.head_model.faces,
                                                 g["offset"], g["rotation"], g["scale"])
    _, _, cmlp, _ = networks(static.config)
    residual = cmlp.apply({"params": params["color_mlp"]}, g["feature"], expression53,
                          jnp.asarray(static.texel_uv) if static.config.models.color_mlp.num_uv_freqs else None)
    rgb = models.sh0_to_rgb(g["sh0"]) + residual
    fr = static.config.models.inpainter.render_feature_dim
    colors = jnp.concatenate([rgb, g["feature"][:, :fr]], axis=-1)
    return {"means": means, "quats": quats, "scales": scales, "opacities": g["opacity"][:, 0],
            "colors": colors}


def dilate_mask(mask, pixels: int):
    """Binary dilation of masks [B, H, W, 1] by a square of half-width `pixels` (max-pool)."""
    if pixels <= 0:
        return mask
    k = 2 * pixels + 1
    return jax.lax.reduce_window(mask, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, 1, 1, 1), "SAME")


def render_heads(params: dict, static: AvatarStatic, uv_maps: dict, frame: dict, K, shape=None,
                 per_frame_maps: bool = False) -> dict:
    """Rasterizes the head Gaussians of a batch of frames (no inpainting).

    frame: per-frame head parameters (see `posed_vertices`), leading dim B. shape [S] (or [B, S]): the
    head's shape coefficients (default: the identity's own, params["head"]["shape"]). uv_maps: dict of
    [R, R, k] maps shared by the batch, or with `per_frame_maps` [B, R, R, k] (one identity per frame).
    K [3, 3] (or [B, 3, 3] with per-frame maps): intrinsics. Returns `head_rgb` [B, H, W, 3] (render over
    black), `head_alpha` [B, H, W, 1], `head_features` [B, H, W, Fr].
    """
    cfg = static.config
    s = cfg.image_size
    vertices = posed_vertices(static, params["head"]["shape"] if shape is None else shape, frame)
    view = head_space_viewmat()[None]

    def one(maps, v, e, k):
        g = frame_gaussians(params, static, maps, v, e)
        colors, alphas, _ = rasterization(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                                          view, jnp.asarray(k, jnp.float32)[None], s, s, backend=cfg.backend)
        return colors[0], alphas[0]

    if per_frame_maps:
        colors, alphas = jax.vmap(one)(uv_maps, vertices, frame["expression53"], K)
    else:
        colors, alphas = jax.vmap(one, in_axes=(None, 0, 0, None))(uv_maps, vertices, frame["expression53"], K)
    return {"head_rgb": colors[..., :3], "head_alpha": alphas, "head_features": colors[..., 3:]}


def inpaint_frames(params: dict, static: AvatarStatic, heads: dict, frames, head_masks, train: bool = False) -> dict:
    """Blends rendered heads (`render_heads` output) into the original frames with the Body Inpainter.

    frames [B, H, W, 3] in [0, 1]: the original frames (only their body/background is used: the dilated
    head region is masked out). head_masks [B, H, W, 1]. Returns `heads` plus `image` [B, H, W, 3] (the
    inpainter output) and `inpaint_mask` [B, H, W, 1]; with train=True (prior training: BatchNorm on batch
    statistics) also `inpainter_stats`, the updated statistics.
    """
    cfg = static.config
    alphas, head_rgb, head_feat = heads["head_alpha"], heads["head_rgb"], heads["head_features"]
    mask = dilate_mask(jnp.maximum(head_masks, (alphas > 0.05).astype(alphas.dtype)), cfg.head_mask_dilation)
    masked = frames * (1.0 - mask)
    _, _, _, inp = networks(cfg)
    fr = cfg.models.inpainter.render_feature_dim
    variables = {"params": params["inpainter"], "batch_stats": params["inpainter_stats"]}
    args = (jnp.clip(head_rgb, 0.0, 1.0), alphas, head_feat if fr else None, masked, mask)
    out = {**heads, "inpaint_mask": mask}
    if train:
        out["image"], updates = inp.apply(variables, *args, train=True, mutable=["batch_stats"])
        out["inpainter_stats"] = updates["batch_stats"]
    else:
        out["image"] = inp.apply(variables, *args, train=False)
    return out


def render_frames(params: dict, static: AvatarStatic, uv_maps: dict, frame: dict, K, frames, head_masks,
                  train: bool = False, shape=None) -> dict:
    """Renders a batch of frames of one identity: `render_heads` then `inpaint_frames` (see both).

    Returns dict: `image` [B, H, W, 3] (inpainter output), `head_rgb` [B, H, W, 3] (render over black),
    `head_alpha` [B, H, W, 1], `head_features` [B, H, W, Fr], `inpaint_mask` [B, H, W, 1], and with
    train=True `inpainter_stats`.
    """
    heads = render_heads(params, static, uv_maps, frame, K, shape=shape)
    return inpaint_frames(params, static, heads, frames, head_masks, train=train)


# ----------------------------------------------------------------------------------------------------
# Mouth opening of expressions (the head model's own lip landmarks)
# ----------------------------------------------------------------------------------------------------
def mouth_opening(head_model, expression53, shape=None) -> np.ndarray:
    """Mouth opening of expressions [T, 53] -> [T] float64: the head model's MediaPipe inner-lip points,
    gap |13 - 14| over width |78 - 308| (the measure `eval.metrics.mouth_opening` takes on video frames), at
    the rest pose (a rigid head pose does not change the ratio). shape [S]: the identity's (default the
    mean head). NaN where the model places none of these points. No detector involved: deterministic."""
    from ggtalker_jax.data.track import landmark_submodel

    expr = jnp.asarray(expression53, jnp.float32).reshape(-1, EXPR_DIM)
    index = {int(m): i for i, m in enumerate(np.asarray(head_model.lmk_mediapipe_index))}
    need = (UPPER_INNER_LIP, LOWER_INNER_LIP, LEFT_INNER_CORNER, RIGHT_INNER_CORNER)
    if not all(k in index for k in need):
        return np.full(expr.shape[0], np.nan)
    small = landmark_submodel(head_model)
    e, jaw = head_lib.split_expression53(expr)
    shape = jnp.zeros((small.num_shape,)) if shape is None else jnp.asarray(shape, jnp.float32)
    lmk = np.asarray(head_lib.forward(small, shape=jnp.broadcast_to(shape, (e.shape[0], shape.shape[-1])),
                                      expression=e, jaw_pose=jaw).landmarks, np.float64)
    upper, lower, left, right = (lmk[:, index[k]] for k in need)
    gap = np.linalg.norm(upper - lower, axis=-1)
    return gap / np.maximum(np.linalg.norm(left - right, axis=-1), 1e-8)

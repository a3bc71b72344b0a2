"""The talking-head avatar: one identity's learnable parts and the function that renders its frames.

Data flow for one frame (README, "Architecture"):

    reference image --unwrap to UV (Rp)--> generator --> UV Gaussian maps at Rp --resample--> R x R maps
                                                        (+ per-identity UV refinement at R)
    53-dim expression + pose --head model--> posed mesh --UV binding (R)--> Gaussian means/quats/scales
    colour = SH0 colour + ColorMLP(feature, expression)            (motion-aligned fine texture)
    rasterize (RGB + feature channels, alpha) --> BodyInpainter(render, frame with head masked)
    --> frame: the inpainter's output inside the dilated head region, the original frame outside it

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
window and context, audio features and expression normalisation); it is stored with the prior's weights.
`AvatarConfig` adds the run-time choices of one avatar (image size, UV resolution R and so the number of
Gaussians, rasterizer backend, mask dilation); Rp, the generator's resolution, is the prior's.
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
MIN_UV_RESOLUTION, MAX_UV_RESOLUTION = 8, 1024
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


COMPOSITES = ("render_over_inpainter", "inpainter")


def wide_head_reach(image_size: int) -> int:
    """S / 10 pixels (at least 2): how far a rendered head may reach beyond a head mask recorded in another
    pose (`AvatarConfig.posed_head_reach`), and every avatar's reach before `AvatarConfig.head_reach`."""
    return max(2, round(image_size / 10))


@dataclasses.dataclass(frozen=True)
class AvatarConfig:
    """One avatar: its prior's definition plus run-time choices. `small()` runs on a CPU in seconds;
    `paper()` is GGTalker's size.

    image_size: frame size S in pixels (a multiple of 16); the avatar renders and inpaints at S x S.
    uv_resolution: R, the per-identity UV map is R x R texels (one Gaussian per bound texel); None: the
      prior generator's own resolution. The generator runs at its resolution and its maps are resampled
      to R (`resample_uv_maps`), so a small prior can start a dense, sharp head.
    head_mask_dilation: pixels the inpainter's region extends beyond the head (None: S / 32, at least 2).
    head_reach: pixels beyond the frame's head mask the rendered head may still claim before the dilation
      (`inpaint_region`). 0 (default): the head mask of the frame whose body and background are used
      bounds the head, right whenever the pose is that frame's (adaptation, evaluation, `--pose video`):
      the head model's skull and neck reach beyond a real head's silhouette, and drawn there they hid the
      true background and collar (retalking_face1_6s, test frames with their tracked expressions: PSNR
      27.8 dB at S / 10, 29.9 at 0, same avatar). A pose the frames were not recorded with (`--pose FILE`)
      needs more (`posed_head_reach`).
    backend: rasterizer backend (`ggtalker_jax.render.rasterization`'s; "xla" is the dense reference).
    composite: how the avatar's region of a frame is made (`inpaint_frames`): "render_over_inpainter" (the
      rendered head by its own alpha over the Body Inpainter's output, which fills what the head does not
      cover: mouth interior, neck, hair edge; the head's pixels are the Gaussians' own) or "inpainter"
      (the inpainter's output alone, with the render as its input; avatars recorded before this choice).
    inpainter_size: the Body Inpainter runs at this size (a multiple of 16, at most S; None: S): its inputs
      are downsampled (antialiased), its output upsampled back. A prior's inpainter learned to fill a hole
      as wide as its training frames' head border; run at a larger size it leaves the hole dark. With
      "render_over_inpainter" the head's own pixels stay at S.
    """
    prior: PriorConfig = PriorConfig()
    image_size: int = 64
    uv_resolution: int | None = None
    head_mask_dilation: int | None = None
    head_reach: int = 0
    backend: str = "auto"                # "auto": Pallas/Triton on a GPU, the XLA:CPU compositor elsewhere
    composite: str = "render_over_inpainter"
    inpainter_size: int | None = None

    def __post_init__(self):
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"AvatarConfig: image_size must be a multiple of 16 (>= 16: the inpainter halves "
                             f"it 4 times), got {self.image_size}")
        if self.uv_resolution is not None and not MIN_UV_RESOLUTION <= self.uv_resolution <= MAX_UV_RESOLUTION:
            raise ValueError(f"AvatarConfig: uv_resolution must be in [{MIN_UV_RESOLUTION}, {MAX_UV_RESOLUTION}] "
                             f"(R x R texels, one Gaussian each), got {self.uv_resolution}")
        if self.head_mask_dilation is not None and self.head_mask_dilation < 0:
            raise ValueError(f"AvatarConfig: head_mask_dilation must be >= 0 pixels, got {self.head_mask_dilation}")
        if self.head_reach < 0:
            raise ValueError(f"AvatarConfig: head_reach must be >= 0 pixels, got {self.head_reach}")
        if self.inpainter_size is not None and (self.inpainter_size < 16 or self.inpainter_size % 16):
            raise ValueError(f"AvatarConfig: inpainter_size must be a multiple of 16 (>= 16), got {self.inpainter_size}")
        if self.composite not in COMPOSITES:
            raise ValueError(f"AvatarConfig: composite must be one of {COMPOSITES}, got {self.composite!r}")

    @property
    def models(self) -> models.ModelsConfig:
        return self.prior.models

    @property
    def prior_uv_resolution(self) -> int:
        """The generator's output resolution (the prior's UV layout)."""
        return self.models.generator.resolution

    @property
    def resolved_uv_resolution(self) -> int:
        """R: `uv_resolution`, or the prior's when None."""
        return self.uv_resolution or self.prior_uv_resolution

    @property
    def mask_dilation(self) -> int:
        """Pixels the inpainter's region extends beyond the head mask."""
        if self.head_mask_dilation is not None:
            return self.head_mask_dilation
        return max(2, round(self.image_size / 32))

    @property
    def inpainter_resolution(self) -> int:
        """The size the Body Inpainter runs at (`inpainter_size`, at most the frame size S)."""
        return min(self.inpainter_size or self.image_size, self.image_size)

    def posed_head_reach(self) -> int:
        """The reach for poses the frames were not recorded with (a user's pose file): S / 10."""
        return max(self.head_reach, wide_head_reach(self.image_size))

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
        d.setdefault("composite", "inpainter")      # recorded before the choice existed: as they rendered then
        if "head_reach" not in d:                   # likewise: the reach was S / 10 then
            d["head_reach"] = wide_head_reach(int(d.get("image_size", 64)))
        return AvatarConfig(prior=prior, **{k: v for k, v in d.items() if k in fields})

    @staticmethod
    def small(image_size: int = 64, prior: PriorConfig | None = None, uv_resolution: int | None = None) -> "AvatarConfig":
        return AvatarConfig(prior=prior or PriorConfig(models_preset="small"), image_size=image_size,
                            uv_resolution=uv_resolution)

    @staticmethod
    def paper() -> "AvatarConfig":
        return AvatarConfig(prior=PriorConfig(models_preset="paper"), image_size=512, uv_resolution=512,
                            backend="pallas")


@dataclasses.dataclass(frozen=True)
class AvatarStatic:
    """What rendering needs besides the learnable parameters (no gradients flow into it).

    head_model: `ggtalker_jax.head.HeadModel`; binding: `ggtalker_jax.head.uv.UVBinding` at R (the
    avatar's UV resolution); prior_binding: the same at the generator's resolution (its input is unwrapped
    there; the same object when R is the prior's); texel_uv [M, 2]: UV coordinates of the bound texels
    (colour MLP input); spacing [R, R, 1] / prior_spacing: per texel, the texel spacing on the mesh in
    `head.uv.bind_gaussians`' units (see `texel_spacing`; 1 where no texel is bound).
    """
    config: AvatarConfig
    head_model: Any
    binding: Any
    prior_binding: Any
    texel_uv: np.ndarray
    spacing: np.ndarray
    prior_spacing: np.ndarray

    @staticmethod
    def build(config: AvatarConfig, head_model=None) -> "AvatarStatic":
        model = head_lib.load(config.prior.head_model) if head_model is None else head_model
        r, rp = config.resolved_uv_resolution, config.prior_uv_resolution
        binding = uv_lib.build_uv_binding(model, r)
        prior_binding = binding if r == rp else uv_lib.build_uv_binding(model, rp)
        texel_uv = (np.asarray(binding.texel_index, np.float32)[:, ::-1] + 0.5) / r  # (u, v) from (row, col)
        spacing = dense_uv(binding, texel_spacing(model, binding)[:, None], fill=1.0)
        prior_spacing = spacing if r == rp else dense_uv(prior_binding, texel_spacing(model, prior_binding)[:, None],
                                                         fill=1.0)
        return AvatarStatic(config, model, binding, prior_binding, texel_uv, spacing, prior_spacing)

    @property
    def num_gaussians(self) -> int:
        return int(self.binding.face.shape[0])

    @property
    def uv_resolution(self) -> int:
        return int(self.binding.resolution)

    @property
    def prior_uv_resolution(self) -> int:
        return int(self.prior_binding.resolution)


def texel_spacing(model, binding) -> np.ndarray:
    """[M] float32: the spacing of texels on the mesh surface at each bound texel, in the length unit
    `head.uv.bind_gaussians` gives that texel (sqrt(triangle area / texels of the triangle)). The spacing
    is sqrt(3D area / UV area) / R of the texel's triangle; the 3D area cancels, so this is static:
    sqrt(texels_per_face / (UV area * R^2)). About 1 once R is dense enough for every triangle to own
    several texels; far from 1 at coarse R, where a texel stands for many small triangles."""
    uv = np.asarray(model.uvs, np.float64)[np.asarray(model.uv_faces)]            # [F, 3, 2]
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    area_uv = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    r = float(binding.resolution)
    f = np.asarray(binding.face)
    texels = np.asarray(binding.texels_per_face, np.float64)[f]
    return np.sqrt(texels / np.maximum(area_uv[f] * r * r, 1e-3)).clip(1e-2, 1e2).astype(np.float32)


def dense_uv(binding, values, fill: float = 0.0) -> np.ndarray:
    """Scatters per-texel values [M, k] into a dense UV map [R, R, k] (`fill` where no texel is bound)."""
    values = np.asarray(values, np.float32)
    r = binding.resolution
    out = np.full((r, r, values.shape[-1]), fill, np.float32)
    rows, cols = np.asarray(binding.texel_index).T
    out[rows, cols] = values
    return out


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


UV_CHANNELS = {"offset": 3, "scale": 3, "rotation": 4, "opacity": 1, "sh0": 3}   # + "feature": F


def init_identity_params(network_params: dict, static: "AvatarStatic", num_frames: int, shape,
                         uv_delta: dict | None = None) -> dict:
    """Avatar parameters for one identity: the prior networks plus the UV refinement at R (`uv_delta`:
    zeros unless given, see `initial_uv_delta`) and head parameters: `shape` [S] (from tracking) and zero
    per-frame corrections for `num_frames` frames."""
    r = static.uv_resolution
    channels = {**UV_CHANNELS, "feature": static.config.models.generator.feature_dim}
    params = dict(network_params)
    params["uv_delta"] = {k: jnp.zeros((r, r, c)) for k, c in channels.items()} if uv_delta is None else \
        {k: jnp.asarray(uv_delta[k], jnp.float32).reshape(r, r, c) for k, c in channels.items()}
    params["head"] = {"shape": jnp.asarray(shape, jnp.float32),
                      "expr_delta": jnp.zeros((num_frames, EXPR_DIM)),
                      "pose_delta": jnp.zeros((num_frames, 6))}
    return params


# ----------------------------------------------------------------------------------------------------
# From a reference image to UV Gaussian maps
# ----------------------------------------------------------------------------------------------------
def texel_points(static: AvatarStatic, vertices, binding=None):
    """Surface points of the bound texels on a mesh: vertices [..., V, 3] -> [..., M, 3] (binding: the
    avatar's at R unless given)."""
    binding = static.binding if binding is None else binding
    faces = jnp.asarray(static.head_model.faces)[jnp.asarray(binding.face)]        # [M, 3]
    corners = vertices[..., faces, :]                                                # [..., M, 3, 3]
    return jnp.einsum("...mkc,mk->...mc", corners, jnp.asarray(binding.bary, vertices.dtype))


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


def unwrap_texels(static: AvatarStatic, image, vertices, K, binding=None):
    """One frame's colours at the bound texels: image [H, W, 3] in [0, 1], vertices [V, 3] (its posed mesh,
    head space), K [3, 3] -> (colour [M, 3], facing [M]: the cosine between the texel's surface normal and
    the direction to the camera, 0 where the texel faces away or projects outside the frame). No occlusion
    test: a texel hidden behind another part of the face still reads the occluder's colour."""
    binding = static.binding if binding is None else binding
    h, w = image.shape[:2]
    points = texel_points(static, vertices, binding)
    xy, z = head_space_to_pixels(points, K)
    tri = vertices[jnp.asarray(static.head_model.faces)[jnp.asarray(binding.face)]]
    normal = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    to_camera = -points
    cos = jnp.sum(normal * to_camera, axis=-1) / (
        jnp.linalg.norm(normal, axis=-1) * jnp.linalg.norm(to_camera, axis=-1) + 1e-20)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h) & (z > 0)
    facing = jnp.where(inside, jnp.maximum(cos, 0.0), 0.0)
    colour = bilinear_sample(jnp.asarray(image, jnp.float32), xy) * (facing > 0)[:, None]
    return colour, facing


def reference_uv_input(static: AvatarStatic, image, vertices, K):
    """The generator's input from one reference frame, at the generator's resolution Rp: [Rp, Rp, 7] =
    reference RGB unwrapped into UV with the tracked mesh (zero where the texel faces away from the
    camera or falls outside the frame) | canonical (template) surface position per texel, scaled to about
    [-1, 1] | UV valid mask.

    image [H, W, 3] in [0, 1]; vertices [V, 3] posed reference mesh in head space; K [3, 3].
    """
    binding = static.prior_binding
    r = binding.resolution
    colour, _ = unwrap_texels(static, image, vertices, K, binding)
    canon = texel_points(static, jnp.asarray(static.head_model.v_template, jnp.float32), binding)
    centre = jnp.mean(canon, axis=0)
    canon = (canon - centre) / (jnp.max(jnp.abs(canon - centre)) + 1e-8)
    rows, cols = np.asarray(binding.texel_index).T
    out = jnp.zeros((r, r, 7), jnp.float32)
    out = out.at[rows, cols, 0:3].set(colour)
    out = out.at[rows, cols, 3:6].set(canon)
    return out.at[rows, cols, 6].set(1.0)


def identity_uv_input(static: AvatarStatic, shape, reference_frame, reference_params: dict, K):
    """The generator's input for an identity: its reference frame [H, W, 3] unwrapped with the mesh posed
    by `reference_params` (one frame's dict, see `posed_vertices`, without the batch dim) -> [Rp, Rp, 7]."""
    frame = {k: jnp.asarray(v)[None] for k, v in reference_params.items()}
    vertices = posed_vertices(static, jnp.asarray(shape), frame)[0]
    return reference_uv_input(static, jnp.asarray(reference_frame, jnp.float32), vertices, jnp.asarray(K))


def subject_uv_input(static: AvatarStatic, subject):
    """The generator's input of a prepared subject (a `data.dataset.SubjectView`): its reference frame."""
    ref = subject.reference_index
    params = {k: v[0] for k, v in subject.frame_params([ref]).items()}
    return identity_uv_input(static, subject.tracking["shape"], subject.frame(ref), params, subject.K)


def generate_uv_maps(params: dict, static: AvatarStatic, uv_input, train: bool = False):
    """Generator (at its resolution Rp), resampled to the avatar's R, plus the identity's UV refinement:
    uv_input [Rp, Rp, Cin] (or a batch [B, Rp, Rp, Cin]) -> dict of [R, R, k] (or [B, R, R, k]) maps
    (offset, scale, rotation, opacity, sh0, feature).

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
    maps = apply_uv_delta(resample_uv_maps(static, maps), params.get("uv_delta"))
    return (maps, updates["batch_stats"]) if train else maps


def _resize_uv(x, r: int, valid):
    """Bilinear resize of UV maps [..., Rp, Rp, k] -> [..., r, r, k], texels outside the layout (valid
    [Rp, Rp, 1] == 0) left out of the average where a valid neighbour exists."""
    shape = x.shape[:-3] + (r, r, x.shape[-1])
    num = jax.image.resize(x * valid, shape, "linear")
    den = jax.image.resize(jnp.broadcast_to(valid, x.shape[:-1] + (1,)), shape[:-1] + (1,), "linear")
    return jnp.where(den > 1e-3, num / jnp.maximum(den, 1e-3), jax.image.resize(x, shape, "linear"))


def resample_uv_maps(static: AvatarStatic, maps: dict) -> dict:
    """The generator's maps at Rp -> the avatar's R (identity when R == Rp): [..., Rp, Rp, k] -> [..., R, R, k].

    Sizes are carried relative to the texel spacing (`texel_spacing`), so each Gaussian keeps the share of
    its texel the prior gave it; the offset along the surface normal keeps its metric length (the surface
    stays where the prior put it); the offsets within the triangle plane and the rotations are relative to
    each triangle's own frame, which a resampled texel does not share, so the in-plane offset starts at 0.
    Colours, opacities and features are interpolated bilinearly.
    """
    r, rp = static.uv_resolution, static.prior_uv_resolution
    if r == rp:
        return maps
    valid = jnp.asarray(static.prior_binding.mask, jnp.float32)[..., None]
    sp, sr = jnp.asarray(static.prior_spacing), jnp.asarray(static.spacing)
    normal = _resize_uv(maps["offset"][..., 2:3] / sp, r, valid) * sr * (r / rp)
    offset = jnp.concatenate([jnp.zeros(normal.shape[:-1] + (2,), normal.dtype), normal], axis=-1)
    log_scale = _resize_uv(jnp.log(maps["scale"] / sp), r, valid)
    rot = _resize_uv(maps["rotation"], r, valid)
    out = {"offset": offset, "scale": jnp.exp(log_scale) * sr,
           "rotation": rot / jnp.linalg.norm(rot, axis=-1, keepdims=True).clip(1e-8),
           "opacity": jnp.clip(_resize_uv(maps["opacity"], r, valid), 1e-4, 1 - 1e-4)}
    out.update({k: _resize_uv(maps[k], r, valid) for k in ("sh0", "feature")})
    return out


def offset_in_prior_texels(static: AvatarStatic, offset):
    """Offsets of maps at R [..., 3] in texel units of the prior's resolution (what the offset
    regulariser bounds, whatever R)."""
    return offset * (static.prior_uv_resolution / static.uv_resolution)


def unwrap_texture(static: AvatarStatic, frames, vertices, K, min_facing: float = 0.25):
    """A texture at R from frames of the identity: frames [N, H, W, 3] in [0, 1] with their posed meshes
    vertices [N, V, 3] -> (rgb [R, R, 3], weight [R, R, 1]): per texel the facing-weighted mean colour
    (weights facing^2, texels seen at grazing angles below `min_facing` left out), weight its total (0:
    never seen)."""
    colour, facing = jax.vmap(lambda f, v: unwrap_texels(static, f, v, K))(frames, vertices)   # [N, M, 3], [N, M]
    w = jnp.where(facing >= min_facing, facing ** 2, 0.0)
    total = jnp.sum(w, axis=0)
    rgb = jnp.sum(colour * w[..., None], axis=0) / jnp.maximum(total, 1e-8)[:, None]
    rows, cols = np.asarray(static.binding.texel_index).T
    r = static.uv_resolution
    dense_rgb = jnp.zeros((r, r, 3)).at[rows, cols].set(rgb)
    dense_w = jnp.zeros((r, r, 1)).at[rows, cols, 0].set(total)
    return dense_rgb, dense_w


@dataclasses.dataclass(frozen=True)
class UVInit:
    """How adaptation initialises the identity's UV refinement (`initial_uv_delta`).

    scale: each Gaussian's in-plane size, in texel spacings on the mesh (0.6: neighbours overlap enough
      for the first render to cover the surface without holes); thickness: its size along the normal,
      in texel spacings; the disc lies in its triangle's plane. None keeps the prior's sizes and rotations.
    min_opacity: opacities below are raised to it.
    texture: colours of texels seen in the identity's frames start at the frames' colours (the generator
      at a coarse Rp cannot carry that detail).
    """
    scale: float | None = 0.6
    thickness: float = 0.3
    min_opacity: float = 0.9
    texture: bool = True


def initial_uv_delta(static: AvatarStatic, maps: dict, texture=None, init: UVInit = UVInit(),
                     colour_residual=None) -> dict:
    """The UV refinement at R that makes the generated (and resampled) `maps` (dict of [R, R, k], without
    refinement) start from the UV layout: sizes `init.scale` / `init.thickness` texel spacings, opacity at
    least `init.min_opacity`, and with `texture` = (rgb [R, R, 3], weight [R, R, 1]) from `unwrap_texture`
    the colours of the seen texels (less `colour_residual` [R, R, 3], the colour MLP's share, see
    `colour_residual_map`). Returns a dict of [R, R, k] arrays (numpy)."""
    delta = {k: np.zeros(np.shape(v), np.float32) for k, v in maps.items()}
    if init.scale is not None:
        target = np.asarray(static.spacing) * np.array([init.scale, init.scale, init.thickness], np.float32)
        delta["scale"] = np.log(target / np.asarray(maps["scale"])).astype(np.float32)
        # ... with the disc's thin axis along the surface normal (rotation = identity in the triangle's frame)
        delta["rotation"] = (np.array([1.0, 0.0, 0.0, 0.0], np.float32) - np.asarray(maps["rotation"])).astype(np.float32)
    opacity = np.clip(np.asarray(maps["opacity"], np.float64), 1e-6, 1 - 1e-6)
    raised = np.maximum(opacity, init.min_opacity)
    logit = lambda p: np.log(p) - np.log1p(-p)
    delta["opacity"] = (logit(np.clip(raised, 1e-6, 1 - 1e-6)) - logit(opacity)).astype(np.float32)
    if texture is not None and init.texture:
        rgb, weight = (np.asarray(t, np.float32) for t in texture)
        seen = weight > 0
        if colour_residual is not None:
            rgb = rgb - np.asarray(colour_residual, np.float32)
        target_sh0 = np.asarray(models.rgb_to_sh0(rgb))
        delta["sh0"] = np.where(seen, target_sh0 - np.asarray(maps["sh0"]), 0.0).astype(np.float32)
    return delta


def colour_residual_map(params: dict, static: AvatarStatic, maps: dict, expression53):
    """The colour MLP's RGB residual [R, R, 3] of UV maps (dict of [R, R, k]) at one expression [53] (0
    where no texel is bound): what the rendered colour adds to the SH0 colour."""
    g = uv_lib.uv_maps_to_gaussians(static.binding, maps)
    _, _, cmlp, _ = networks(static.config)
    residual = cmlp.apply({"params": params["color_mlp"]}, g["feature"], jnp.asarray(expression53),
                          jnp.asarray(static.texel_uv) if static.config.models.color_mlp.num_uv_freqs else None)
    rows, cols = np.asarray(static.binding.texel_index).T
    r = static.uv_resolution
    return jnp.zeros((r, r, 3)).at[rows, cols].set(residual)


def apply_uv_delta(maps: dict, delta: dict | None) -> dict:
    """Refines UV maps in each quantity's natural space (log for scale, logit for opacity), keeping every
    value valid. delta: dict of [R, R, k] (zeros = no change) or None."""
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


def landmark_pixels(static: AvatarStatic, vertices, K):
    """The head model's landmarks projected into the frame: vertices [B, V, 3], K [3, 3] -> [B, L, 2]
    pixels (pixel centres at +0.5); landmark l is MediaPipe point `static.head_model.lmk_mediapipe_index[l]`."""
    model = static.head_model
    tri = vertices[:, jnp.asarray(model.faces)[jnp.asarray(model.lmk_faces)]]             # [B, L, 3, 3]
    points = jnp.einsum("blkc,lk->blc", tri, jnp.asarray(model.lmk_bary, vertices.dtype))
    return head_space_to_pixels(points, K)[0]


def corrected_pose(head_params: dict, frame: dict, index) -> dict:
    """`frame` (per-frame head parameters, leading dim B) with the pose corrections the identity learned
    for frames `index` [B] added: what rendering a frame the avatar was adapted on must use."""
    delta = head_params["pose_delta"][index]
    return {**frame, "global_rot": frame["global_rot"] + delta[..., :3],
            "translation": frame["translation"] + delta[..., 3:]}


def dilate_mask(mask, pixels: int):
    """Binary dilation of masks [B, H, W, 1] by a square of half-width `pixels` (a separable max-pool)."""
    if pixels <= 0:
        return mask
    k = 2 * pixels + 1
    rows = jax.lax.reduce_window(mask, -jnp.inf, jax.lax.max, (1, k, 1, 1), (1, 1, 1, 1), "SAME")
    return jax.lax.reduce_window(rows, -jnp.inf, jax.lax.max, (1, 1, k, 1), (1, 1, 1, 1), "SAME")


def box_blur(mask, radius: int):
    """Mean over a (2 radius + 1)^2 square of masks [B, H, W, 1] (zero outside the frame; separable)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    rows = jax.lax.reduce_window(mask, 0.0, jax.lax.add, (1, k, 1, 1), (1, 1, 1, 1), "SAME")
    return jax.lax.reduce_window(rows, 0.0, jax.lax.add, (1, 1, k, 1), (1, 1, 1, 1), "SAME") / (k * k)


def inpaint_region(head_masks, head_alpha, dilation: int, reach: int):
    """Where the avatar owns the frame: the head mask [B, H, W, 1] united with the rendered head
    (alpha > 0.05) within `reach` pixels of the mask (an opening jaw, a turned head; not the neck far
    below the chin, which the head model continues into the body), dilated by `dilation` pixels.
    Returns (region [B, H, W, 1] in {0, 1}: the inpainter's input is masked there and only there may the
    output differ from the source frame; blend [B, H, W, 1] in [0, 1]: the weight of the inpainter's
    output, 1 on the head, falling smoothly to exactly 0 at the region's border)."""
    near = dilate_mask(head_masks, reach)
    core = jnp.maximum(head_masks, (head_alpha > 0.05).astype(head_alpha.dtype) * near)
    region = dilate_mask(core, dilation)
    half = dilation // 2
    blend = box_blur(dilate_mask(core, half), dilation - half) * region
    return region, blend


def render_heads(params: dict, static: AvatarStatic, uv_maps: dict, frame: dict, K, shape=None,
                 per_frame_maps: bool = False, vertices=None) -> dict:
    """Rasterizes the head Gaussians of a batch of frames (no inpainting).

    frame: per-frame head parameters (see `posed_vertices`), leading dim B. shape [S] (or [B, S]): the
    head's shape coefficients (default: the identity's own, params["head"]["shape"]). uv_maps: dict of
    [R, R, k] maps shared by the batch, or with `per_frame_maps` [B, R, R, k] (one identity per frame).
    K [3, 3] (or [B, 3, 3] with per-frame maps): intrinsics. vertices [B, V, 3]: the posed meshes when
    already computed (`posed_vertices` of `frame`). Returns `head_rgb` [B, H, W, 3] (render over black),
    `head_alpha` [B, H, W, 1], `head_features` [B, H, W, Fr].
    """
    cfg = static.config
    s = cfg.image_size
    if vertices is None:
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

    frames [B, H, W, 3] in [0, 1]: the original frames; head_masks [B, H, W, 1]. The inpainter sees the
    frame with the avatar's region (`inpaint_region`: head mask + rendered head, dilated) masked out and
    the render. Inside that region the avatar is the render over the inpainter's output by the render's
    alpha (`AvatarConfig.composite` "render_over_inpainter"; "inpainter": the inpainter's output alone),
    feathered towards the region's border; outside it the result is the original frame exactly
    (GGTalker's inpainter blends at the head boundary; body and background stay the video's). Returns
    `heads` plus `image` [B, H, W, 3], `inpaint_mask` [B, H, W, 1] (the region) and `inpaint_blend`
    [B, H, W, 1]; with train=True (prior training: BatchNorm on batch
    statistics) also `inpainter_stats`, the updated statistics.
    """
    cfg = static.config
    alphas, head_rgb, head_feat = heads["head_alpha"], heads["head_rgb"], heads["head_features"]
    mask, blend = inpaint_region(head_masks, alphas, cfg.mask_dilation, cfg.head_reach)
    _, _, _, inp = networks(cfg)
    fr = cfg.models.inpainter.render_feature_dim
    variables = {"params": params["inpainter"], "batch_stats": params["inpainter_stats"]}
    b, s = frames.shape[0], frames.shape[1]
    n = cfg.inpainter_resolution

    def to_inpainter(x):        # the inpainter at its own size (antialiased downsampling), or as is
        return x if n == s else jax.image.resize(x, (b, n, n, x.shape[-1]), "linear", antialias=True)

    low_mask = mask if n == s else (to_inpainter(mask) > 0).astype(frames.dtype)   # where any region falls
    args = (jnp.clip(to_inpainter(head_rgb), 0.0, 1.0), to_inpainter(alphas),
            to_inpainter(head_feat) if fr else None, to_inpainter(frames) * (1.0 - low_mask), low_mask)
    out = {**heads, "inpaint_mask": mask, "inpaint_blend": blend}
    if train:
        inpainted, updates = inp.apply(variables, *args, train=True, mutable=["batch_stats"])
        out["inpainter_stats"] = updates["batch_stats"]
    else:
        inpainted = inp.apply(variables, *args, train=False)
    if n != s:
        inpainted = jax.image.resize(inpainted, (b, s, s, 3), "linear")
    if cfg.composite == "render_over_inpainter":       # head_rgb is premultiplied (rendered over black)
        inpainted = head_rgb + (1.0 - alphas) * inpainted
    out["image"] = jnp.where(mask > 0, blend * inpainted + (1.0 - blend) * frames, frames)
    return out


def render_frames(params: dict, static: AvatarStatic, uv_maps: dict, frame: dict, K, frames, head_masks,
                  train: bool = False, shape=None, vertices=None) -> dict:
    """Renders a batch of frames of one identity: `render_heads` then `inpaint_frames` (see both).

    Returns dict: `image` [B, H, W, 3] (the original frame outside the avatar's region), `head_rgb`
    [B, H, W, 3] (render over black), `head_alpha` [B, H, W, 1], `head_features` [B, H, W, Fr],
    `inpaint_mask` / `inpaint_blend` [B, H, W, 1], and with train=True `inpainter_stats`.
    """
    heads = render_heads(params, static, uv_maps, frame, K, shape=shape, vertices=vertices)
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

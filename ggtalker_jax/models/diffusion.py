"""Diffusion utilities for the A2E prior: noise schedule, forward noising, training targets,
deterministic DDIM sampling with classifier-free guidance, and long-clip sampling window by window.

The model predicts the clean sample x0 (not the noise). An ``apply_fn`` here is any function

    apply_fn(params, noisy_expr [B,T,53], timestep [B], audio [B,T,Da], prev_expr [B,Tp,53] | None,
             style_id [B] | None, cond_mask [B] bool) -> x0 [B,T,53]

``make_a2e_apply_fn(model)`` builds one from an ``A2ETransformer`` (eval mode; ``params`` is the full
variables dict).

Steps vs quality (DDIM, eta=0): the sampler is deterministic given the seed and can skip steps of the
training schedule. With an x0-predicting model, 25-50 steps are usually indistinguishable from the
full 1000 for low-dimensional motion such as 53 expression numbers; 10 steps give slightly smoother /
damped mouth motion; fewer than ~5 tends to collapse towards the mean expression. Cost is linear in
``num_steps`` (x2 with classifier-free guidance, which batches the conditional and unconditional pass).
Guidance 1.0 = plain conditional sampling; 1.5-3 sharpens lip articulation at some cost in diversity.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class NoiseSchedule:
    """betas [N], alphas_cumprod [N] (float32); a pytree, so it can be passed through jit."""

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_train_steps(self) -> int:
        return self.betas.shape[0]


@flax.struct.dataclass
class ExpressionNorm:
    """Per-dimension normalisation of expressions: the A2E generates ``z = (x - mean) / std``, so every
    dimension has unit variance against the diffusion noise (the jaw's natural spread is a few hundredths
    of a radian: smaller than the last sampling step's noise without it). mean, std [D] float32."""

    mean: jax.Array
    std: jax.Array

    @staticmethod
    def create(mean, std) -> "ExpressionNorm":
        return ExpressionNorm(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))

    @staticmethod
    def identity(dim: int) -> "ExpressionNorm":
        return ExpressionNorm(jnp.zeros((dim,), jnp.float32), jnp.ones((dim,), jnp.float32))

    @staticmethod
    def fit(expressions, min_std: float = 1e-3, relative_min_std: float = 0.05) -> "ExpressionNorm":
        """Statistics of training expressions [N, D]. A dimension's std is floored at
        ``max(min_std, relative_min_std * the largest std)``, so a component the data barely moves is not
        blown up to unit variance from its noise."""
        x = np.asarray(expressions, np.float64).reshape(-1, np.shape(expressions)[-1])
        if x.shape[0] < 2 or not np.all(np.isfinite(x)):
            raise ValueError(f"ExpressionNorm.fit: need >= 2 finite rows, got {x.shape}")
        std = x.std(axis=0)
        std = np.maximum(std, max(min_std, relative_min_std * float(std.max())))
        return ExpressionNorm.create(x.mean(axis=0), std)

    def normalize(self, x):
        """x [..., D] -> z [..., D]."""
        return (x - self.mean) / self.std

    def denormalize(self, z):
        """z [..., D] -> x [..., D]."""
        return z * self.std + self.mean


def cosine_schedule(num_train_steps: int = 1000, s: float = 0.008,
                    max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal 2021 cosine schedule: alpha_bar(t) = cos(((t/N + s)/(1 + s)) pi/2)^2."""
    if num_train_steps < 1:
        raise ValueError(f"cosine_schedule: num_train_steps must be >= 1, got {num_train_steps}")
    steps = np.arange(num_train_steps + 1, dtype=np.float64) / num_train_steps
    alpha_bar = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)
    return _from_betas(betas)


def linear_schedule(num_train_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> NoiseSchedule:
    """DDPM linear beta schedule (scaled to ``num_train_steps`` like Ho et al. for N=1000)."""
    if num_train_steps < 1:
        raise ValueError(f"linear_schedule: num_train_steps must be >= 1, got {num_train_steps}")
    scale = 1000.0 / num_train_steps
    betas = np.linspace(beta_start * scale, beta_end * scale, num_train_steps, dtype=np.float64)
    return _from_betas(np.clip(betas, 0.0, 0.999))


def _from_betas(betas: np.ndarray) -> NoiseSchedule:
    alphas_cumprod = np.cumprod(1.0 - betas)
    return NoiseSchedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas_cumprod, jnp.float32))


def _expand(values, x):
    return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def q_sample(schedule: NoiseSchedule, x0, t, noise):
    """Forward process: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise.
    x0, noise [B,...]; t [B] int in [0, N) -> x_t [B,...]."""
    ab = _expand(schedule.alphas_cumprod[t], x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def training_targets(schedule: NoiseSchedule, x0, rng, cond_drop_prob: float = 0.1) -> dict:
    """Sample what one training step needs. x0 [B,T,D] -> dict with
    ``timestep`` [B] int32, ``noise`` [B,T,D], ``noisy`` [B,T,D] (= q_sample), ``cond_mask`` [B] bool
    (False with probability ``cond_drop_prob``: classifier-free guidance dropout). The regression
    target of an x0-predicting model is ``x0`` itself."""
    k_t, k_noise, k_drop = jax.random.split(rng, 3)
    b = x0.shape[0]
    t = jax.random.randint(k_t, (b,), 0, schedule.num_train_steps)
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
    cond_mask = jax.random.uniform(k_drop, (b,)) >= cond_drop_prob
    return {"timestep": t, "noise": noise, "noisy": q_sample(schedule, x0, t, noise),
            "cond_mask": cond_mask}


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """Decreasing int timesteps visited by DDIM: num_steps values from N-1 down to 0 (evenly spaced).
    num_steps == N gives every step N-1, ..., 0."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"ddim: num_steps={num_steps} must be in [1, {num_train_steps}]")
    ts = np.round(np.linspace(num_train_steps - 1, 0, num_steps)).astype(np.int32)
    return ts


def make_a2e_apply_fn(model) -> Callable:
    """Wrap an ``A2ETransformer`` as an eval-mode ``apply_fn`` (params = its variables dict)."""
    def apply_fn(params, noisy, t, audio, prev_expr, style_id, cond_mask):
        return model.apply(params, noisy, t, audio, prev_expr, style_id, cond_mask, train=False)
    return apply_fn


def _guided_x0(apply_fn, params, x_t, t, audio, prev_expr, style_id, guidance, use_cfg):
    b = x_t.shape[0]
    tb = jnp.full((b,), t)
    if not use_cfg:
        return apply_fn(params, x_t, tb, audio, prev_expr, style_id, jnp.ones((b,), bool))
    double = lambda v: None if v is None else jnp.concatenate([v, v], axis=0)
    cond_mask = jnp.concatenate([jnp.ones((b,), bool), jnp.zeros((b,), bool)])
    x0 = apply_fn(params, double(x_t), double(tb), double(audio), double(prev_expr),
                  double(style_id), cond_mask)
    x0_cond, x0_uncond = x0[:b], x0[b:]
    return x0_uncond + guidance * (x0_cond - x0_uncond)


def ddim_sample(apply_fn: Callable, params, audio, rng, num_steps: int, guidance=1.0,
                prev_expr=None, style_id=None, shape=None, *, schedule: NoiseSchedule,
                expr_dim: int = 53):
    """Deterministic DDIM (eta = 0) with x0 prediction and classifier-free guidance.

    audio [B,T,Da]; prev_expr [B,Tp,53] or None; style_id [B] int or None; shape defaults to
    (B, T, expr_dim). guidance: x0 = x0_uncond + guidance (x0_cond - x0_uncond); a Python 1.0 skips
    the unconditional pass. Returns x0 [B,T,53]. The only randomness is the initial x_T ~ N(0, I)
    drawn from ``rng``, so a fixed seed gives the same sample. A ``lax.scan`` runs the steps, so the
    whole call jits (``num_steps``, ``apply_fn`` and ``shape`` static). See the module docstring for
    steps vs quality.
    """
    if audio.ndim != 3:
        raise ValueError(f"ddim_sample audio: expected [B,T,Da], got {audio.shape}")
    if shape is None:
        shape = (audio.shape[0], audio.shape[1], expr_dim)
    if tuple(shape[:2]) != tuple(audio.shape[:2]):
        raise ValueError(f"ddim_sample: shape {shape} does not match audio [B,T]={audio.shape[:2]}")
    use_cfg = not (isinstance(guidance, (int, float)) and guidance == 1.0)
    ts = ddim_timesteps(schedule.num_train_steps, num_steps)
    ab = schedule.alphas_cumprod
    ab_t = ab[ts]
    ab_prev = jnp.concatenate([ab[ts[1:]], jnp.ones((1,), jnp.float32)])  # after t=...: alpha_bar=1

    def step(x_t, inputs):
        t, a_t, a_prev = inputs
        x0 = _guided_x0(apply_fn, params, x_t, t, audio, prev_expr, style_id, guidance, use_cfg)
        x0 = x0.astype(jnp.float32)
        eps = (x_t - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
        x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps
        return x_prev, None

    x_init = jax.random.normal(rng, tuple(shape), jnp.float32)
    x, _ = jax.lax.scan(step, x_init, (jnp.asarray(ts), ab_t, ab_prev))
    return x


def sample_long(apply_fn: Callable, params, audio, rng, window: int, overlap: int, *,
                schedule: NoiseSchedule, num_steps: int = 25, guidance=1.0, style_id=None,
                expr_dim: int = 53):
    """Generate a long clip window by window. audio [T_total,Da] -> expression [T_total,53].

    The clip is cut into consecutive, non-overlapping windows of ``window`` frames (the last one
    padded by repeating the final audio frame and cropped afterwards). The first window is sampled
    without context; every later one is conditioned (``prev_expr``) on the last ``overlap`` generated
    frames just before it, which keeps motion continuous across window borders. ``overlap`` = 0
    samples the windows independently. Each window uses its own key folded from ``rng``. Later
    windows run in a ``lax.scan``, so the call jits and compiles at most two window samplers.
    """
    if audio.ndim != 2:
        raise ValueError(f"sample_long audio: expected [T_total,Da], got {audio.shape}")
    if window < 1 or not 0 <= overlap <= window:
        raise ValueError(f"sample_long: need window >= 1 and 0 <= overlap <= window, got "
                         f"window={window}, overlap={overlap}")
    total = audio.shape[0]
    if total < 1:
        raise ValueError("sample_long audio: empty clip (T_total = 0)")
    num_windows = -(-total // window)
    padded = jnp.concatenate(
        [audio, jnp.repeat(audio[-1:], num_windows * window - total, axis=0)], axis=0)
    windows = padded.reshape(num_windows, 1, window, audio.shape[1])  # [W,1,T,Da]
    style = None if style_id is None else jnp.reshape(jnp.asarray(style_id, jnp.int32), (1,))
    keys = jax.random.split(rng, num_windows)
    kw = dict(schedule=schedule, expr_dim=expr_dim)

    first = ddim_sample(apply_fn, params, windows[0], keys[0], num_steps, guidance, None, style,
                        **kw)
    if num_windows == 1:
        return first[0, :total]

    def next_window(prev_out, inputs):
        key, audio_win = inputs
        prev = prev_out[:, window - overlap:] if overlap else None
        out = ddim_sample(apply_fn, params, audio_win, key, num_steps, guidance, prev, style, **kw)
        return out, out

    _, rest = jax.lax.scan(next_window, first, (keys[1:], windows[1:]))  # [W-1,1,T,53]
    frames = jnp.concatenate([first, rest.reshape(1, -1, expr_dim)], axis=1)
    return frames[0, :total]


def predict_expressions(config, params, audio_features, rng, *, window: int, context: int, num_steps: int = 25,
                        style_id: int = 0, guidance=1.0, norm: ExpressionNorm | None = None):
    """The A2E at inference: audio features [T, Da] -> expressions [T, 53] (50 expression + 3 jaw pose),
    generated `window` frames at a time (DDIM, `sample_long`), each window after the first conditioned on
    the last `context` frames before it: the windowing a prior is trained with (`avatar.PriorConfig`).
    The A2E works on normalised expressions (`norm`, the prior's; None: identity); the result is in
    expression units.

    config: the `A2EConfig`; params: the A2ETransformer "params" collection (a prior's "a2e" entry; numpy
    or jnp leaves). `num_steps` is capped at the model's training steps. guidance: classifier-free guidance
    scale (1.0: the conditional model alone). Deterministic for a given `rng`.
    """
    audio_features = jnp.asarray(audio_features, jnp.float32)
    if audio_features.ndim != 2 or audio_features.shape[1] != config.audio_dim:
        raise ValueError(f"predict_expressions audio_features: expected [T,{config.audio_dim}], got "
                         f"{audio_features.shape}")
    if not 0 <= style_id < config.num_styles:
        raise ValueError(f"predict_expressions style_id: {style_id} not in [0, {config.num_styles})")
    # jnp leaves: A2ETransformer indexes a param table with traced ints, which numpy leaves cannot do.
    params = jax.tree.map(jnp.asarray, params)
    use_cfg = not (isinstance(guidance, (int, float)) and guidance == 1.0)
    z = _sample_clip(params, audio_features, rng, jnp.int32(style_id), jnp.float32(guidance), config=config,
                     window=window, context=min(context, window), num_steps=min(num_steps, config.num_train_steps),
                     use_cfg=use_cfg)
    return z if norm is None else norm.denormalize(z)


@functools.partial(jax.jit, static_argnames=("config", "window", "context", "num_steps", "use_cfg"))
def _sample_clip(params, audio, rng, style_id, guidance, *, config, window, context, num_steps, use_cfg):
    """`sample_long` with an A2ETransformer of `config`, compiled once per configuration and clip length."""
    from ggtalker_jax.models.a2e import A2ETransformer

    apply_fn = make_a2e_apply_fn(A2ETransformer(config))
    return sample_long(apply_fn, {"params": params}, audio, rng, window, context,
                       schedule=cosine_schedule(config.num_train_steps), num_steps=num_steps,
                       guidance=guidance if use_cfg else 1.0, style_id=style_id, expr_dim=config.expr_dim)


def generate_window(apply_fn: Callable, params, audio, rng, num_steps: int, prev_expr=None, style_id=None, *,
                    schedule: NoiseSchedule, expr_dim: int = 53):
    """A window generated from noise as at inference (DDIM, `num_steps` steps, conditional), with the
    gradient flowing through the last step only: the x0 prediction at the last timestep from the
    (stop-gradient) state the earlier steps reached. audio [B,T,Da] -> x0 [B,T,53]. This is how the image
    loss of adaptation stages 4-5 reaches the A2E through expressions it generated from the audio."""
    b, t = audio.shape[:2]
    ts = ddim_timesteps(schedule.num_train_steps, num_steps)
    if num_steps > 1:
        # All but the last step, without gradient: a DDIM run over ts[:-1] ends at x_{ts[-1]}.
        ab = schedule.alphas_cumprod
        ab_t, ab_prev = ab[ts[:-1]], ab[ts[1:]]
        cond = jnp.ones((b,), bool)

        def step(x_t, inputs):
            tt, a_t, a_prev = inputs
            x0 = apply_fn(params, x_t, jnp.full((b,), tt), audio, prev_expr, style_id, cond).astype(jnp.float32)
            eps = (x_t - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
            return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps, None

        x = jax.random.normal(rng, (b, t, expr_dim), jnp.float32)
        x, _ = jax.lax.scan(step, x, (jnp.asarray(ts[:-1]), ab_t, ab_prev))
        x = jax.lax.stop_gradient(x)
    else:
        x = jax.random.normal(rng, (b, t, expr_dim), jnp.float32)
    return apply_fn(params, x, jnp.full((b,), int(ts[-1])), audio, prev_expr, style_id,
                    jnp.ones((b,), bool)).astype(jnp.float32)

"""A2E: conditional diffusion transformer from audio to a window of expression frames.

Design (paper: DDPM transformer, audio projected to 512, 64-dim identity embedding, 8 layers,
classifier-free guidance):
- Motion tokens: the noisy window ``noisy_expr [B,T,53]`` and, optionally, ``prev_expr [B,Tp,53]``
  (clean last frames of the previous window) are projected by the same Dense to ``model_dim``, tagged
  with a learned "previous"/"current" type embedding and a sinusoidal position (the window's frames are
  at 0..T-1 and the previous frames at -Tp..-1, so a window's positions do not depend on its context),
  and summed with the condition vector (timestep MLP + projected style embedding). ``prev_mask [B]``
  hides the previous frames of some rows from the attention: such a row computes exactly what it
  computes without ``prev_expr`` (per-row context dropout in training; the first window at inference).
- Audio: ``audio [B,T,Da]`` (frame-aligned) -> Dense(audio_proj_dim) -> Dense(model_dim) + position.
  Where ``cond_mask`` is False the projected audio is replaced by a learned null embedding
  (classifier-free guidance; train with condition dropout ~0.1).
- ``num_layers`` pre-LayerNorm decoder blocks: bidirectional self-attention over prev + current
  tokens, cross-attention from the current tokens to the audio with a band mask (frame i sees audio
  frames i-w..i+w, w = ``audio_window``: keeps lip sync aligned and makes the model length-agnostic),
  then a GELU MLP. Cross-attention was chosen over plain concatenation so that a frame can use a few
  frames of audio context (co-articulation) without a fixed receptive field in the input layer.
- Output: LayerNorm -> Dense(53) on the current tokens: the predicted clean window x0 (float32).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ggtalker_jax.models.configs import A2EConfig
from ggtalker_jax.models.layers import check_array


def sinusoidal_embedding(positions, dim: int, max_period: float = 10000.0):
    """positions [...] (int or float) -> [..., dim] sin/cos embedding (dim must be even)."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class _DecoderBlock(nn.Module):
    config: A2EConfig

    @nn.compact
    def __call__(self, tokens, audio_tokens, num_prev: int, cross_mask, self_mask, deterministic: bool):
        cfg = self.config
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        drop = nn.Dropout(cfg.dropout, deterministic=deterministic)

        h = nn.LayerNorm(**kw, name="ln_self")(tokens)
        h = nn.MultiHeadDotProductAttention(num_heads=cfg.num_heads, **kw, name="self_attn")(h, h, mask=self_mask)
        tokens = tokens + drop(h)

        prev, cur = tokens[:, :num_prev], tokens[:, num_prev:]
        h = nn.LayerNorm(**kw, name="ln_cross")(cur)
        h = nn.MultiHeadDotProductAttention(num_heads=cfg.num_heads, **kw, name="cross_attn")(
            h, audio_tokens, mask=cross_mask)
        tokens = jnp.concatenate([prev, cur + drop(h)], axis=1)

        h = nn.LayerNorm(**kw, name="ln_mlp")(tokens)
        h = nn.Dense(cfg.mlp_dim, **kw, name="mlp_in")(h)
        h = nn.Dense(cfg.model_dim, **kw, name="mlp_out")(nn.gelu(h))
        return tokens + drop(h)


class A2ETransformer(nn.Module):
    """``__call__(noisy_expr [B,T,53], timestep [B], audio [B,T,Da], prev_expr [B,Tp,53] | None,
    style_id [B] int | None, cond_mask [B] bool | None, train=False, prev_mask [B] bool | None)
    -> x0 [B,T,53]`` (float32).

    ``timestep`` may be int or float (0..num_train_steps-1). ``style_id`` None means style 0
    (generic). ``cond_mask`` None means all conditioned; False rows drop the audio (CFG).
    ``prev_mask`` None means every row sees its ``prev_expr``; False rows ignore it.
    ``train=True`` enables dropout (pass ``rngs={"dropout": key}``).
    """

    config: A2EConfig

    @nn.compact
    def __call__(self, noisy_expr, timestep, audio, prev_expr=None, style_id=None, cond_mask=None,
                 train: bool = False, prev_mask=None):
        cfg = self.config
        check_array(noisy_expr, "A2ETransformer noisy_expr", 3, cfg.expr_dim)
        b, t, _ = noisy_expr.shape
        check_array(audio, "A2ETransformer audio", 3, cfg.audio_dim)
        if audio.shape[:2] != (b, t):
            raise ValueError(f"A2ETransformer audio: expected [B,T]=[{b},{t}] leading dims matching "
                             f"noisy_expr, got {audio.shape}")
        timestep = jnp.broadcast_to(jnp.asarray(timestep), (b,))
        style_id = jnp.zeros((b,), jnp.int32) if style_id is None else jnp.asarray(style_id)
        if style_id.shape != (b,):
            raise ValueError(f"A2ETransformer style_id: expected shape [{b}], got {style_id.shape}")
        cond_mask = jnp.ones((b,), bool) if cond_mask is None else jnp.asarray(cond_mask, bool)
        if cond_mask.shape != (b,):
            raise ValueError(f"A2ETransformer cond_mask: expected shape [{b}], got {cond_mask.shape}")
        num_prev = 0
        if prev_expr is not None:
            check_array(prev_expr, "A2ETransformer prev_expr", 3, cfg.expr_dim)
            if prev_expr.shape[0] != b:
                raise ValueError(f"A2ETransformer prev_expr: batch {prev_expr.shape[0]} != {b}")
            num_prev = prev_expr.shape[1]
        self_mask = None
        if prev_mask is not None and num_prev:
            prev_mask = jnp.asarray(prev_mask, bool)
            if prev_mask.shape != (b,):
                raise ValueError(f"A2ETransformer prev_mask: expected shape [{b}], got {prev_mask.shape}")
            keys = jnp.concatenate([jnp.broadcast_to(prev_mask[:, None], (b, num_prev)), jnp.ones((b, t), bool)], 1)
            self_mask = keys[:, None, None, :]                                   # [B,1,1,Tp+T]

        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        d = cfg.model_dim

        # Condition vector: diffusion timestep + identity style.
        temb = sinusoidal_embedding(timestep, d)
        temb = nn.Dense(d, **kw, name="time_mlp_out")(
            nn.silu(nn.Dense(d, **kw, name="time_mlp_in")(temb)))
        style = nn.Embed(cfg.num_styles, cfg.style_dim, param_dtype=cfg.param_dtype,
                         name="style_table")(style_id)
        cond = temb + nn.Dense(d, **kw, name="style_proj")(style)  # [B,D]

        # Motion tokens: previous (clean) frames then the current noisy window.
        expr_proj = nn.Dense(d, **kw, name="expr_proj")
        type_table = self.param("token_type", nn.initializers.normal(0.02), (2, d), cfg.param_dtype)
        frames = noisy_expr if prev_expr is None else jnp.concatenate([prev_expr, noisy_expr], 1)
        tokens = expr_proj(frames.astype(cfg.dtype))
        types = jnp.concatenate([jnp.zeros((num_prev,), jnp.int32), jnp.ones((t,), jnp.int32)])
        positions = jnp.arange(-num_prev, t)
        tokens = (tokens + jnp.asarray(type_table)[types][None] + sinusoidal_embedding(positions, d)
                  + cond[:, None, :])
        tokens = tokens.astype(cfg.dtype)

        # Audio tokens, with the learned null condition where cond_mask is False.
        a = nn.Dense(cfg.audio_proj_dim, **kw, name="audio_proj")(audio.astype(cfg.dtype))
        null_audio = self.param("null_audio", nn.initializers.normal(0.02), (cfg.audio_proj_dim,),
                                cfg.param_dtype)
        a = jnp.where(cond_mask[:, None, None], a, null_audio.astype(a.dtype))
        a = nn.Dense(d, **kw, name="audio_in")(a)
        a = (a + sinusoidal_embedding(jnp.arange(t), d)).astype(cfg.dtype)

        offsets = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]
        cross_mask = (jnp.abs(offsets) <= cfg.audio_window)[None, None]  # [1,1,T,T]

        for i in range(cfg.num_layers):
            tokens = _DecoderBlock(cfg, name=f"block{i}")(tokens, a, num_prev, cross_mask, self_mask,
                                                           deterministic=not train)
        out = nn.LayerNorm(**kw, name="ln_out")(tokens[:, num_prev:])
        return nn.Dense(cfg.expr_dim, **kw, name="out")(out).astype(jnp.float32)

"""The loss terms of ggtalker-jax: pure functions, batched over leading dimensions, returning scalar means
unless noted. How they are combined and weighted for each training run lives next door in
`ggtalker_jax.train.objectives`.

Image terms (Expression-Visual prior, adaptation):
  `photometric_loss` = L1 + 0.2 D-SSIM (TalkingGaussian's recipe; GGTalker: L1 + SSIM + perceptual),
  optionally weighted towards the mouth and per sample, plus `offset_regularizer` / `scale_regularizer`
  on the Gaussians and `landmark_loss` (projected head-model landmarks vs MediaPipe's).
Expression terms (Audio-Expression prior, adaptation stages 3-5):
  `a2e_loss` = diffusion x0 L2 + velocity L2 (adjacent-frame differences) + lip-vertex L2, all on the
  predicted clean sequence.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from ggtalker_jax.image_metrics import dssim_loss, ssim


def l1_loss(pred, target, weight=None):
    """Mean absolute error of images [..., H, W, C]; `weight` [..., H, W, 1] (or broadcastable) optional."""
    err = jnp.abs(pred - target)
    if weight is None:
        return jnp.mean(err)
    weight = jnp.broadcast_to(weight, err.shape)
    return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1e-8)


def photometric_loss(pred, target, mouth_mask=None, mouth_weight: float = 2.0, lambda_dssim: float = 0.2,
                     valid_mask=None, sample_weight=None):
    """L1 + lambda * D-SSIM of images [B, H, W, 3] in [0, 1].

    mouth_mask: [B, H, W, 1] in {0, 1}; pixels inside count `mouth_weight` times in the L1 term.
    valid_mask: [B, H, W, 1]; pixels outside it are ignored by the L1 term (e.g. outside the head).
    sample_weight: [B] (e.g. 0 for frames whose face MediaPipe lost): scales each image's share of both
      terms; a weight-0 image contributes nothing.
    Returns (loss, {"l1": ..., "dssim": ...}).
    """
    weight = jnp.ones(pred.shape[:-1] + (1,), pred.dtype)
    if mouth_mask is not None:
        weight = weight + (mouth_weight - 1.0) * mouth_mask
    if valid_mask is not None:
        weight = weight * valid_mask
    if sample_weight is None:
        l1 = l1_loss(pred, target, weight)
        ds = dssim_loss(pred, target)
    else:
        sw = jnp.asarray(sample_weight, pred.dtype)
        l1 = l1_loss(pred, target, weight * sw.reshape(sw.shape + (1, 1, 1)))
        per_image = (1.0 - ssim(pred, target, max_val=1.0)) / 2.0             # [B]
        ds = jnp.sum(per_image * sw) / jnp.maximum(jnp.sum(sw), 1e-8)
    return l1 + lambda_dssim * ds, {"l1": l1, "dssim": ds}


def landmark_loss(pred_xy, target_xy, weight=None, scale: float = 1.0):
    """Mean squared distance of projected landmarks [B, L, 2] to the detected ones [B, L, 2], in units
    of `scale` pixels (e.g. 1% of the image size); `weight` [B] or [B, L] (0 = ignore)."""
    d2 = jnp.sum(jnp.square((pred_xy - target_xy) / scale), axis=-1)      # [B, L]
    if weight is None:
        return jnp.mean(d2)
    w = jnp.broadcast_to(weight if weight.ndim == 2 else weight[:, None], d2.shape)
    return jnp.sum(d2 * w) / jnp.maximum(jnp.sum(w), 1e-8)


def offset_regularizer(offsets, max_norm: float = 0.0):
    """Mean squared norm beyond `max_norm` of Gaussian position offsets [..., 3] (local-frame units)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(offsets), axis=-1) + 1e-12)   # smooth at zero (no NaN gradient)
    return jnp.mean(jnp.square(jnp.maximum(norm - max_norm, 0.0)))


def scale_regularizer(scales, max_scale: float):
    """Penalises Gaussians larger than `max_scale` (same units as `scales` [..., 3]): no needle or blob."""
    return jnp.mean(jnp.square(jnp.maximum(scales - max_scale, 0.0)))


def velocity(x):
    """Differences of adjacent frames of a sequence [..., T, D] -> [..., T-1, D]."""
    return x[..., 1:, :] - x[..., :-1, :]


def a2e_loss(pred_x0, target_x0, lip_vertices_fn: Callable | None = None, w_expr: float = 1.0,
             w_vel: float = 1.0, w_lip: float = 1.0, frame_mask=None):
    """Audio-Expression loss on the predicted clean sequence.

    pred_x0, target_x0: [B, T, 53] expressions (50 expression + 3 jaw pose).
    lip_vertices_fn: maps [B, T, 53] -> lip vertices [B, T, K, 3] (metres) with the head model, so errors
      are weighted by how much they move the lips; None skips the term.
    frame_mask: [B, T] (1 = real frame, 0 = padding).
    Returns (loss, {"expr": ..., "vel": ..., "lip": ...}).
    """
    if frame_mask is None:
        frame_mask = jnp.ones(pred_x0.shape[:2], pred_x0.dtype)
    m = frame_mask[..., None]
    denom = jnp.maximum(jnp.sum(m) * pred_x0.shape[-1], 1.0)
    expr = jnp.sum(jnp.square(pred_x0 - target_x0) * m) / denom
    mv = m[:, 1:] * m[:, :-1]
    vel = jnp.sum(jnp.square(velocity(pred_x0) - velocity(target_x0)) * mv) / jnp.maximum(
        jnp.sum(mv) * pred_x0.shape[-1], 1.0)
    parts = {"expr": expr, "vel": vel}
    loss = w_expr * expr + w_vel * vel
    if lip_vertices_fn is not None:
        diff = lip_vertices_fn(pred_x0) - lip_vertices_fn(target_x0)  # [B, T, K, 3]
        # metres -> millimetres so the term is O(1) like the others.
        lip = jnp.sum(jnp.mean(jnp.square(1e3 * diff), axis=(-1, -2)) * frame_mask) / jnp.maximum(
            jnp.sum(frame_mask), 1.0)
        parts["lip"] = lip
        loss = loss + w_lip * lip
    return loss, parts

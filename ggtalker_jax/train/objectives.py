"""What each training run optimises: the loss compositions, one pure function per objective, built from
the terms in `ggtalker_jax.train.losses` and weighted by config. Each builder returns a
``loss_fn(params, batch, rng, batch_stats=None) -> (loss, aux)`` for `ggtalker_jax.train.trainer`.

- `a2e_objective`: the Audio-Expression prior: `a2e_denoising_loss`, the diffusion x0 objective on
  normalised expression windows (expression L2 + velocity L2 + lip-vertex L2 through the head model), with
  classifier-free condition dropout, previous-frame context dropout and style dropout; adaptation stages
  3-5 use the same loss.
- `ev_prior_objective`: the Expression-Visual prior: each sample's reference frame -> generator (BatchNorm
  on batch statistics) -> Gaussians bound to the tracked mesh of another frame of the same identity ->
  rasterize -> inpaint into that frame; photometric loss on the final frame and on the head render inside
  the head mask (mouth-weighted, lost-face frames excluded) + offset and scale regularisers.
- `adaptation_objective`: one identity's adaptation stages: the same image terms (generator in eval mode,
  per-identity UV refinement and head parameters), the A2E's diffusion objective on the identity's
  windows (with their previous frames as context), and in stages 4-5 frames rendered from expressions the
  A2E generates from the audio, so image gradients reach the A2E.

Batches are the grain loader's (`ggtalker_jax.data.loader`, keys documented there); the A2E prior's are
``{"audio" [B, W, Da], "expr" [B, W, 53], "prev_expr" [B, P, 53], "style_id" [B]}``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax import head as head_lib
from ggtalker_jax.constants import MEDIAPIPE_LIPS
from ggtalker_jax.image_metrics import psnr
from ggtalker_jax.models import A2EConfig, A2ETransformer, diffusion
from ggtalker_jax.train import losses


@dataclasses.dataclass(frozen=True)
class A2EWeights:
    """Weights of the A2E objective. cond_drop_prob: classifier-free guidance dropout (per window);
    no_prev_prob: fraction of windows trained without their previous-frame context (the first window at
    inference has none); style_drop_prob: fraction of windows trained with the generic style 0 instead of
    their identity's (so style 0 drives voices the prior never saw)."""
    w_expr: float = 1.0
    w_vel: float = 1.0
    w_lip: float = 1.0
    cond_drop_prob: float = 0.1
    no_prev_prob: float = 0.2
    style_drop_prob: float = 0.0


@dataclasses.dataclass(frozen=True)
class ImageWeights:
    """Weights of the image objectives.

    lambda_dssim: D-SSIM next to L1; mouth_weight: L1 weight of mouth pixels (1 = no emphasis);
    w_head_render: the head render composited over the true frame, scored inside the avatar's region (head
      mask and rendered head, dilated: `avatar.inpaint_region`);
    w_offset (max_offset) / w_scale (max_scale): Gaussian offset and size regularisers (generator units;
    offsets of maps at another UV resolution than the prior's are measured in the prior's texels);
    exclude_lost_faces: frames where MediaPipe lost the face are no photometric targets;
    w_landmark: the head model's projected landmarks against MediaPipe's (adaptation stages that train the
    head parameters), distances in units of `landmark_scale` x the image size, lost faces excluded.
    """
    lambda_dssim: float = 0.2
    mouth_weight: float = 2.0
    w_head_render: float = 1.0
    w_offset: float = 0.1
    max_offset: float = 0.2
    w_scale: float = 0.0
    max_scale: float = 2.0
    exclude_lost_faces: bool = True
    w_landmark: float = 0.01
    landmark_scale: float = 0.01


def lip_vertices_fn(model) -> Callable:
    """[..., 53] expressions -> [..., K, 3] lip landmarks (metres) of the head model at rest shape and
    pose: what the A2E's lip term compares. None when the model places no MediaPipe lip point."""
    from ggtalker_jax.data.track import landmark_submodel

    index = {int(m): i for i, m in enumerate(jnp.asarray(model.lmk_mediapipe_index).tolist())}
    rows = [index[m] for m in MEDIAPIPE_LIPS if m in index]
    if not rows:
        return None
    rows = jnp.asarray(rows)
    small = landmark_submodel(model)      # skins only the vertices the landmarks use

    def fn(expr53):
        e, jaw = head_lib.split_expression53(expr53)
        return head_lib.forward(small, expression=e, jaw_pose=jaw).landmarks[..., rows, :]

    return fn


def a2e_denoising_loss(module: A2ETransformer, a2e_params, norm: diffusion.ExpressionNorm, schedule, expr53,
                       audio, style_id, rng, weights: A2EWeights, prev53=None, prev_ok=None,
                       lip_fn: Callable | None = None, train: bool = True):
    """The A2E's diffusion x0 objective on windows, in the prior's normalised expression space (what
    inference samples): expr53 [B, W, 53] targets, audio [B, W, Da], style_id [B], prev53 [B, P, 53] the
    clean frames before each window (None: no context) with prev_ok [B] (False where a window has none).
    Each window keeps its context with probability 1 - no_prev_prob, its audio with 1 - cond_drop_prob and
    its style with 1 - style_drop_prob. Returns (loss, {"expr", "vel"[, "lip"]})."""
    k_diff, k_prev, k_style, k_drop = jax.random.split(rng, 4)
    b = expr53.shape[0]
    x0 = norm.normalize(expr53)
    tgt = diffusion.training_targets(schedule, x0, k_diff, weights.cond_drop_prob)
    prev, prev_mask = None, None
    if prev53 is not None and prev53.shape[1] > 0:
        prev = norm.normalize(prev53)
        prev_mask = jax.random.uniform(k_prev, (b,)) >= weights.no_prev_prob
        if prev_ok is not None:
            prev_mask = prev_mask & prev_ok
    if weights.style_drop_prob > 0:
        style_id = jnp.where(jax.random.uniform(k_style, (b,)) < weights.style_drop_prob, 0, style_id)
    pred = module.apply({"params": a2e_params}, tgt["noisy"], tgt["timestep"], audio, prev, style_id,
                        tgt["cond_mask"], train=train, prev_mask=prev_mask, rngs={"dropout": k_drop} if train else None)
    lip = None if lip_fn is None else (lambda z: lip_fn(norm.denormalize(z)))
    return losses.a2e_loss(pred, x0, lip, weights.w_expr, weights.w_vel, weights.w_lip)


def a2e_objective(model_config: A2EConfig, weights: A2EWeights = A2EWeights(),
                  norm: diffusion.ExpressionNorm | None = None, lip_fn: Callable | None = None):
    """The A2E prior's objective (`a2e_denoising_loss`) over windows ``{"audio" [B, W, Da], "expr" [B, W, 53],
    "prev_expr" [B, P, 53], "style_id" [B]}`` (P = 0: no context); ``params`` is the A2ETransformer
    "params" collection; `norm`: the prior's expression normalisation (None: identity)."""
    model = A2ETransformer(model_config)
    schedule = diffusion.cosine_schedule(model_config.num_train_steps)
    norm = diffusion.ExpressionNorm.identity(model_config.expr_dim) if norm is None else norm

    def loss_fn(params, batch, rng, batch_stats=None):
        return a2e_denoising_loss(model, params, norm, schedule, batch["expr"], batch["audio"], batch["style_id"],
                                  rng, weights, prev53=batch.get("prev_expr"), lip_fn=lip_fn)

    return loss_fn


def _image_terms(out: dict, batch: dict, uv_maps: dict, weights: ImageWeights,
                 static: avatar_lib.AvatarStatic) -> tuple[jax.Array, dict]:
    """Photometric + head-render + regulariser terms of rendered frames against the batch's frames."""
    gt = batch["frame"]
    head_masks = batch["mask"][..., :1]
    found = batch["found"].astype(gt.dtype) if weights.exclude_lost_faces else None
    mouth = batch.get("mouth_mask")
    l_img, parts = losses.photometric_loss(out["image"], gt, mouth_mask=mouth, mouth_weight=weights.mouth_weight,
                                           lambda_dssim=weights.lambda_dssim, sample_weight=found)
    # The head render over black on the head, over the true frame around it, scored over the avatar's whole
    # region: the head must cover the head mask, and Gaussians drawn beyond it (a mesh larger than the
    # person's silhouette) pay for hiding the true background.
    head_comp = out["head_rgb"] + (1.0 - out["head_alpha"]) * gt * (1.0 - head_masks)
    l_head, _ = losses.photometric_loss(head_comp, gt, mouth_mask=mouth, mouth_weight=weights.mouth_weight,
                                        lambda_dssim=weights.lambda_dssim, valid_mask=out["inpaint_mask"],
                                        sample_weight=found)
    total = l_img + weights.w_head_render * l_head
    if weights.w_offset:
        offset = avatar_lib.offset_in_prior_texels(static, uv_maps["offset"])
        total = total + weights.w_offset * losses.offset_regularizer(offset, weights.max_offset)
    if weights.w_scale:
        total = total + weights.w_scale * losses.scale_regularizer(uv_maps["scale"], weights.max_scale)
    metrics = {"l1": parts["l1"], "dssim": parts["dssim"], "head": l_head,
               "psnr": jnp.mean(psnr(jnp.clip(out["image"], 0.0, 1.0), gt))}
    return total, metrics


def _landmark_term(static: avatar_lib.AvatarStatic, vertices, batch: dict, weights: ImageWeights):
    """Projected head-model landmarks of posed meshes [B, V, 3] against the batch's MediaPipe landmarks
    (frames where the face was lost weigh 0)."""
    pred = avatar_lib.landmark_pixels(static, vertices, batch["K"][0])
    target = batch["landmarks"][:, jnp.asarray(static.head_model.lmk_mediapipe_index), :2]
    found = batch["found"].astype(pred.dtype)
    return losses.landmark_loss(pred, target, found, scale=weights.landmark_scale * static.config.image_size)


def _frame_params(batch: dict, prefix: str = "") -> dict:
    return {k: batch[prefix + k] for k in ("expression53", "global_rot", "translation", "neck_pose", "eye_pose")}


def ev_prior_objective(static: avatar_lib.AvatarStatic, weights: ImageWeights = ImageWeights(w_scale=0.1)):
    """The Expression-Visual prior objective over loader batches with tracking and references.
    ``params``: {"generator", "color_mlp", "inpainter", ...}; ``batch_stats``: {"generator_stats",
    "inpainter_stats"} (updated: returned as ``aux["batch_stats"]``)."""

    def loss_fn(params, batch, rng, batch_stats=None):
        full = {**params, **(batch_stats or {})}
        uv_input = jax.vmap(lambda s, f, p, k: avatar_lib.identity_uv_input(static, s, f, p, k))(
            batch["shape"], batch["reference_frame"], _frame_params(batch, "reference_"), batch["K"])
        uv_maps, gen_stats = avatar_lib.generate_uv_maps(full, static, uv_input, train=True)
        heads = avatar_lib.render_heads(full, static, uv_maps, _frame_params(batch), batch["K"],
                                        shape=batch["shape"], per_frame_maps=True)
        out = avatar_lib.inpaint_frames(full, static, heads, batch["frame"], batch["mask"][..., :1], train=True)
        total, metrics = _image_terms(out, batch, uv_maps, weights, static)
        metrics["batch_stats"] = {"generator_stats": gen_stats, "inpainter_stats": out["inpainter_stats"]}
        return total, metrics

    return loss_fn


@dataclasses.dataclass(frozen=True)
class AdaptationTerms:
    """Which terms one adaptation stage optimises (static: each stage compiles its own step).

    photometric: render frames and score them (stages that train visual groups); a2e: the A2E's diffusion
    objective on the identity's windows (with their previous-frame context, as at inference); a2e_render:
    stages 4-5: half the rendered frames (the even rows of the batch; with a batch of one, every other step
    at random) show expressions the A2E generates from the window's audio, from noise in
    `render_diffusion_steps` DDIM steps with the gradient through the last one, so the image loss shapes
    the A2E (the head parameters get no gradient from those rows); the other frames show the tracked
    expressions plus the per-frame corrections, which so keep learning; landmarks: the landmark term on
    the tracked (corrected) head (stages that train the head).
    """
    photometric: bool = True
    a2e: bool = False
    a2e_render: bool = False
    render_diffusion_steps: int = 4
    landmarks: bool = False


def adaptation_objective(static: avatar_lib.AvatarStatic, uv_input, style_id: int, terms: AdaptationTerms,
                         image_weights: ImageWeights = ImageWeights(), a2e_weights: A2EWeights = A2EWeights(),
                         w_a2e: float = 1.0):
    """One identity's adaptation objective over loader batches with tracking and A2E windows (with context:
    ``window_prev_index`` / ``window_prev_expression53`` / ``window_has_prev``).
    ``params``: the avatar's groups {"uv_delta", "generator", "head", "a2e", "color_mlp", "inpainter"};
    ``batch_stats``: the prior's BatchNorm statistics (eval mode: not updated). uv_input [Rp, Rp, 7]: the
    identity's reference unwrapped at the generator's resolution (`avatar.identity_uv_input`)."""
    a2e_module = avatar_lib.networks(static.config)[0]
    a2e_config = static.config.models.a2e
    schedule = diffusion.cosine_schedule(a2e_config.num_train_steps)
    norm = static.config.prior.expression_norm
    render_steps = max(1, min(terms.render_diffusion_steps, a2e_config.num_train_steps))

    def loss_fn(params, batch, rng, batch_stats=None):
        full = {**params, **(batch_stats or {})}
        head = params["head"]
        k_a2e, k_gen, k_prev, k_row = jax.random.split(rng, 4)
        b, w = batch["window_index"].shape
        style = jnp.full((b,), style_id, jnp.int32)
        delta = jax.lax.stop_gradient(head["expr_delta"])
        target = batch["window_expression53"] + delta[batch["window_index"]]
        prev = batch["window_prev_expression53"] + delta[batch["window_prev_index"]]
        prev = prev if prev.shape[1] else None                 # a prior without context
        has_prev = batch["window_has_prev"]
        total, metrics = jnp.float32(0.0), {}
        if terms.a2e:
            l_a2e, a2e_parts = a2e_denoising_loss(a2e_module, params["a2e"], norm, schedule, target,
                                                  batch["window_audio"], style, k_a2e, a2e_weights, prev, has_prev,
                                                  train=False)
            total = total + w_a2e * l_a2e
            metrics.update({f"a2e_{k}": v for k, v in a2e_parts.items()})
        if terms.photometric:
            rows = jnp.arange(b)
            idx = batch["index"]
            expr = batch["expression53"] + head["expr_delta"][idx]
            tracked = avatar_lib.corrected_pose(head, {
                "expression53": expr, "global_rot": batch["global_rot"], "translation": batch["translation"],
                "eye_pose": batch["eye_pose"], "neck_pose": batch["neck_pose"]}, idx)
            tracked_vertices = avatar_lib.posed_vertices(static, head["shape"], tracked)
            frame, vertices = tracked, tracked_vertices
            if terms.a2e_render:
                # Expressions the A2E generates from the window's audio (context kept as in training).
                keep = has_prev & (jax.random.uniform(k_prev, (b,)) >= a2e_weights.no_prev_prob)
                apply_fn = lambda p, x, t, a, pr, s, c: a2e_module.apply(  # noqa: E731
                    {"params": p}, x, t, a, pr, s, c, prev_mask=keep)
                z = diffusion.generate_window(apply_fn, params["a2e"], batch["window_audio"], k_gen, render_steps,
                                              None if prev is None else norm.normalize(prev), style, schedule=schedule,
                                              expr_dim=a2e_config.expr_dim)
                generated = norm.denormalize(z)[rows, batch["render_pos"]]
                gen_rows = rows % 2 == 0 if b > 1 else jax.random.bernoulli(k_row, 0.5, (b,))
                # The generated rows teach the A2E only: the head (shape, pose corrections) they are posed
                # with is held fixed there, or the image loss would bend the head to fit a wrong mouth.
                posed = {**jax.lax.stop_gradient(tracked), "expression53": generated}
                generated_vertices = avatar_lib.posed_vertices(static, jax.lax.stop_gradient(head["shape"]), posed)
                frame = {k: jnp.where(gen_rows.reshape((b,) + (1,) * (v.ndim - 1)), posed[k], v)
                         for k, v in tracked.items()}
                vertices = jnp.where(gen_rows[:, None, None], generated_vertices, tracked_vertices)
                metrics["a2e_render_expr_err"] = jnp.mean(jnp.square(generated - batch["expression53"]))
            uv_maps = avatar_lib.generate_uv_maps(full, static, uv_input)
            out = avatar_lib.render_frames(full, static, uv_maps, frame, batch["K"][0], batch["frame"],
                                           batch["mask"][..., :1], vertices=vertices)
            l_photo, image_metrics = _image_terms(out, batch, uv_maps, image_weights, static)
            total = total + l_photo
            metrics.update(image_metrics)
            if terms.landmarks and image_weights.w_landmark:
                l_lmk = _landmark_term(static, tracked_vertices, batch, image_weights)
                total = total + image_weights.w_landmark * l_lmk
                metrics["landmark"] = l_lmk
        return total, metrics

    return loss_fn

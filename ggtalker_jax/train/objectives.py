"""What each training run optimises: the loss compositions, one pure function per objective, built from
the terms in `ggtalker_jax.train.losses` and weighted by config. Each builder returns a
``loss_fn(params, batch, rng, batch_stats=None) -> (loss, aux)`` for `ggtalker_jax.train.trainer`.

- `a2e_objective`: the Audio-Expression prior (and adaptation stage 3): diffusion x0 objective on
  expression windows (expression L2 + velocity L2 + lip-vertex L2 through the head model), with
  classifier-free condition dropout and previous-frame context dropout.
- `ev_prior_objective`: the Expression-Visual prior: each sample's reference frame -> generator (BatchNorm
  on batch statistics) -> Gaussians bound to the tracked mesh of another frame of the same identity ->
  rasterize -> inpaint into that frame; photometric loss on the final frame and on the head render inside
  the head mask (mouth-weighted, lost-face frames excluded) + offset and scale regularisers.
- `adaptation_objective`: one identity's adaptation stages: the same image terms (generator in eval mode,
  per-identity UV refinement and head parameters), the A2E's diffusion objective on the identity's
  windows, and optionally frames rendered from the A2E's expressions so image gradients reach the A2E.

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
    """Weights of the A2E objective. cond_drop_prob: classifier-free guidance dropout; no_prev_prob:
    fraction of steps trained without the previous-frame context (the first window at inference has none)."""
    w_expr: float = 1.0
    w_vel: float = 1.0
    w_lip: float = 1.0
    cond_drop_prob: float = 0.1
    no_prev_prob: float = 0.2


@dataclasses.dataclass(frozen=True)
class ImageWeights:
    """Weights of the image objectives.

    lambda_dssim: D-SSIM next to L1; mouth_weight: L1 weight of mouth pixels (1 = no emphasis);
    w_head_render: the head render composited over the true frame, scored inside the head mask;
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


def a2e_objective(model_config: A2EConfig, weights: A2EWeights = A2EWeights(), context: int = 0,
                  lip_fn: Callable | None = None):
    """The A2E diffusion objective over windows ``{"audio", "expr", "prev_expr", "style_id"}``;
    ``params`` is the A2ETransformer "params" collection. With `context` > 0 a step conditions on
    ``prev_expr`` except with probability ``no_prev_prob``."""
    model = A2ETransformer(model_config)
    schedule = diffusion.cosine_schedule(model_config.num_train_steps)

    def loss_fn(params, batch, rng, batch_stats=None):
        k_diff, k_drop, k_prev = jax.random.split(rng, 3)
        x0 = batch["expr"]
        tgt = diffusion.training_targets(schedule, x0, k_diff, weights.cond_drop_prob)

        def predict(prev_expr):
            return model.apply({"params": params}, tgt["noisy"], tgt["timestep"], batch["audio"],
                               prev_expr, batch["style_id"], tgt["cond_mask"], train=True,
                               rngs={"dropout": k_drop})

        if context > 0:
            use_prev = jax.random.uniform(k_prev) >= weights.no_prev_prob
            pred = jax.lax.cond(use_prev, lambda: predict(batch["prev_expr"]), lambda: predict(None))
        else:
            pred = predict(None)
        return losses.a2e_loss(pred, x0, lip_fn, weights.w_expr, weights.w_vel, weights.w_lip)

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
    head_comp = out["head_rgb"] + (1.0 - out["head_alpha"]) * gt * (1.0 - head_masks)
    l_head, _ = losses.photometric_loss(head_comp, gt, mouth_mask=mouth, mouth_weight=weights.mouth_weight,
                                        lambda_dssim=weights.lambda_dssim, valid_mask=head_masks,
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
    objective on the identity's windows; a2e_render: render from the A2E's expressions instead of the
    tracked ones (stages 4-5); a2e_render_timestep: the diffusion timestep whose one-step x0 prediction is
    rendered; landmarks: the landmark term on the tracked (corrected) head (stages that train the head).
    """
    photometric: bool = True
    a2e: bool = False
    a2e_render: bool = False
    a2e_render_timestep: int = 0
    landmarks: bool = False


def adaptation_objective(static: avatar_lib.AvatarStatic, uv_input, style_id: int, terms: AdaptationTerms,
                         image_weights: ImageWeights = ImageWeights(), a2e_weights: A2EWeights = A2EWeights(),
                         w_a2e: float = 1.0):
    """One identity's adaptation objective over loader batches with tracking and A2E windows.
    ``params``: the avatar's groups {"uv_delta", "generator", "head", "a2e", "color_mlp", "inpainter"};
    ``batch_stats``: the prior's BatchNorm statistics (eval mode: not updated). uv_input [Rp, Rp, 7]: the
    identity's reference unwrapped at the generator's resolution (`avatar.identity_uv_input`)."""
    a2e_module = avatar_lib.networks(static.config)[0]
    schedule = diffusion.cosine_schedule(static.config.models.a2e.num_train_steps)

    def loss_fn(params, batch, rng, batch_stats=None):
        full = {**params, **(batch_stats or {})}
        head = params["head"]
        k_diff, k_noise = jax.random.split(rng)
        b, w = batch["window_index"].shape
        style = jnp.full((b,), style_id, jnp.int32)
        target = batch["window_expression53"] + jax.lax.stop_gradient(head["expr_delta"][batch["window_index"]])
        total, metrics = jnp.float32(0.0), {}
        if terms.a2e:
            tgt = diffusion.training_targets(schedule, target, k_diff, a2e_weights.cond_drop_prob)
            x0 = a2e_module.apply({"params": params["a2e"]}, tgt["noisy"], tgt["timestep"], batch["window_audio"],
                                  None, style, tgt["cond_mask"])
            l_a2e, a2e_parts = losses.a2e_loss(x0, target, None, a2e_weights.w_expr, a2e_weights.w_vel)
            total = total + w_a2e * l_a2e
            metrics.update({f"a2e_{k}": v for k, v in a2e_parts.items()})
        if terms.photometric:
            rows = jnp.arange(b)
            idx = batch["index"]
            tracked = avatar_lib.corrected_pose(head, {
                "expression53": batch["expression53"] + head["expr_delta"][idx], "global_rot": batch["global_rot"],
                "translation": batch["translation"], "eye_pose": batch["eye_pose"],
                "neck_pose": batch["neck_pose"]}, idx)
            tracked_vertices = avatar_lib.posed_vertices(static, head["shape"], tracked)
            frame, vertices = tracked, tracked_vertices
            if terms.a2e_render:
                # The A2E's one-step prediction from the noised target, so image gradients reach the A2E.
                t = jnp.full((b,), terms.a2e_render_timestep)
                noisy = diffusion.q_sample(schedule, target, t, jax.random.normal(k_noise, target.shape))
                x0 = a2e_module.apply({"params": params["a2e"]}, noisy, t, batch["window_audio"], None, style, None)
                frame = {**tracked, "expression53": x0[rows, batch["render_pos"]]}
                vertices = avatar_lib.posed_vertices(static, head["shape"], frame)
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

"""The field's evaluation protocols on an adapted subject, written as a table researchers can compare.

- self-reconstruction: the held-out test split (last 1/11 of the video), driven by its own audio through
  the A2E, with the video's head pose; PSNR, SSIM, LPIPS (user weights only), LMD, lip sync, AUE;
- cross-identity: driven by other speakers' audio (no ground truth: lip sync only);
- cross-language: driven by speech in other languages (lip sync only);
- speed: per-stage timings (A2E, Gaussian generation, rasterization, inpainting) and frames per second.

Lip sync needs no downloaded model: the correlation and best offset between the audio energy envelope
and the mouth opening (`metrics.sync_score`). Mouth opening and LMD come from MediaPipe landmarks of the
frames; when MediaPipe finds no face (tiny renders), the head model's own projected lip landmarks of the
driving expressions are used and the report says so.

`ggtalker eval --workdir ADAPTED_DIR --out DIR [--cross_id_audio a.wav,b.wav] [--cross_language_audio ...]`
(`ggtalker_jax.cli.eval`) writes DIR/metrics.json, DIR/report.md and PNG plots.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax.data.dataset import POSE_KEYS
from ggtalker_jax.errors import DatasetError, UsageError
from ggtalker_jax.eval import metrics, plots
from ggtalker_jax.render.camera import head_space_viewmat


def _render_sequence(adapted, expr, poses, src_idx, batch_size=8):
    from ggtalker_jax.infer import render_sequence
    return np.concatenate(list(render_sequence(adapted, expr, poses, src_idx, batch_size)))


def model_mouth_opening(static, params, expr, poses=None) -> np.ndarray:
    """Mouth opening [T] from the head model's landmarks of the expressions (MediaPipe indices 13/14 over
    78/308; `avatar.mouth_opening`; the head pose does not change it)."""
    return avatar_lib.mouth_opening(static.head_model, expr, params["head"]["shape"])


MOUTH_SOURCES = ("auto", "mediapipe", "model")


def _mouth_track(frames_u8, static, params, expr, poses, source: str = "auto"):
    """Mouth opening [T] of rendered frames, the MediaPipe landmarks [T, 478, 3] (NaN where no face was
    found) and a description of where the opening came from.

    source: "mediapipe" measures the frames (frames without a face are bridged by interpolation over the
    frames with one; none found -> NaN), "model" uses the head model's projected lip landmarks of the
    driving expressions (deterministic: no detector involved), "auto" uses MediaPipe when it finds a face
    in at least 80% of the frames, else the head model.
    """
    if source not in MOUTH_SOURCES:
        raise ValueError(f"mouth source {source!r}: choose one of {MOUTH_SOURCES}")
    if source == "model":
        return (model_mouth_opening(static, params, expr, poses), np.full((len(expr), 478, 3), np.nan),
                "head-model landmarks")
    lmk = metrics.face_mesh_landmarks(frames_u8)
    found = np.isfinite(lmk).all(axis=(1, 2))
    if source == "auto" and found.mean() < 0.8:
        return model_mouth_opening(static, params, expr, poses), lmk, "head-model landmarks"
    opening = np.full(len(lmk), np.nan)
    if found.any():
        opening[found] = metrics.mouth_opening(lmk[found])
        idx = np.arange(len(opening))
        opening = np.interp(idx, idx[found], opening[found])  # bridge frames without a face
    return opening, lmk, f"mediapipe (face found in {int(found.sum())}/{len(found)} frames)"


def _sync(energy, mouth):
    """Lip sync over offsets of up to 15 frames (fewer on very short clips)."""
    return metrics.sync_score(energy, mouth, max_offset=min(15, max(0, (len(energy) - 3) // 2)))


def _mouth_correlation(mouth_pred, lmk_real) -> float:
    """Pearson correlation of the rendered mouth opening [T] with the real frames' (MediaPipe landmarks
    [T, 478, 3], NaN where no face was found: those frames are left out); NaN when under 3 frames remain
    or either track is constant."""
    found = np.isfinite(lmk_real).all(axis=(1, 2)) & np.isfinite(mouth_pred)
    if found.sum() < 3:
        return float("nan")
    real = metrics.mouth_opening(lmk_real[found])
    pred = np.asarray(mouth_pred)[found]
    if np.std(real) < 1e-9 or np.std(pred) < 1e-9:
        return float("nan")
    return float(np.corrcoef(pred, real)[0, 1])


def _drive(adapted, wav, sr, opts, audio_path: str = "<audio>"):
    """Expressions, poses and source frames for driving audio, as `ggtalker render` makes them (the prior's
    features; for external features the precomputed AUDIO.npy next to the audio file, at the rate the prior
    was trained with; the mouth rests in long pauses)."""
    import dataclasses

    from ggtalker_jax.audio import features as audio_features
    from ggtalker_jax.infer import (driving_features, driving_poses, predict_expressions, rest_expression,
                                    rest_in_pauses)
    fps = adapted.subject.fps
    num = audio_features.num_video_frames(len(wav), sr, fps)
    spec = adapted.static.config.prior.audio
    if spec.kind == "external" and not opts.features:
        opts = dataclasses.replace(opts, features=os.path.splitext(audio_path)[0] + ".npy",
                                   feature_fps=spec.feature_fps or opts.feature_fps)
        if not os.path.isfile(opts.features):
            raise UsageError(f"{audio_path}: this avatar's A2E reads {spec.describe()}; put the driving audio's "
                             f"features, computed as for training, at {opts.features}")
    feats = driving_features(adapted, wav, sr, num, opts, audio_path)
    expr = predict_expressions(adapted, feats, opts)
    if opts.rest_in_pauses:
        expr = rest_in_pauses(expr, audio_features.speech_activity(wav, sr, fps, num), rest_expression(adapted))
    poses, src = driving_poses(adapted.subject, expr.shape[0], opts, adapted.params["head"])
    return expr, poses, src


def evaluate(workdir: str, out_dir: str, cross_id_audio=(), cross_language_audio=(), lpips_weights=None,
             max_test_frames: int | None = None, mouth_source: str = "auto", data_dir: str | None = None,
             head: str | None = None, landmark_embedding: str | None = None) -> dict:
    """Writes metrics.json, report.md and plots into `out_dir`. mouth_source: see `_mouth_track`; head /
    landmark_embedding: see `ggtalker_jax.workdir.load_adapted`."""
    from ggtalker_jax.audio import io as audio_io
    from ggtalker_jax.infer import RenderOptions, predict_expressions
    from ggtalker_jax.workdir import load_adapted

    if mouth_source not in MOUTH_SOURCES:
        raise UsageError(f"--mouth_source {mouth_source!r}: choose one of {MOUTH_SOURCES}")
    adapted = load_adapted(workdir, data_dir, head, landmark_embedding)
    static, params, data = adapted.static, adapted.params, adapted.subject
    os.makedirs(out_dir, exist_ok=True)
    opts = RenderOptions()
    a, b, c = data.split
    if max_test_frames:
        c = min(c, b + max_test_frames)
    test = np.arange(b, c)
    if len(test) < 2:
        raise DatasetError(f"{data.root}: the test split has {len(test)} frames; prepare a longer video")
    result = {"subject": data.root, "workdir": os.path.abspath(workdir), "test_frames": [int(b), int(c)]}

    # Self-reconstruction: test audio -> A2E -> render with the test frames' poses and backgrounds.
    t0 = time.perf_counter()
    expr = predict_expressions(adapted, data.audio[test], opts)
    a2e_s = time.perf_counter() - t0
    # The test frames' tracked poses, with whatever correction adaptation learned for them (none: adaptation
    # only trains on the training split, so these are the tracked poses as they are).
    poses = {k: np.asarray(v) for k, v in avatar_lib.corrected_pose(
        params["head"], {k: data.tracking[k][test] for k in POSE_KEYS}, test).items()}
    t0 = time.perf_counter()
    pred = _render_sequence(adapted, expr, poses, test)
    render_s = time.perf_counter() - t0
    gt = data.frames(test)
    psnr = np.asarray(metrics.psnr(jnp.asarray(pred), jnp.asarray(gt)))
    ssim = np.asarray(metrics.ssim(jnp.asarray(pred), jnp.asarray(gt)))
    to_u8 = lambda x: (x * 255 + 0.5).astype(np.uint8)
    mouth_pred, lmk_pred, mouth_src = _mouth_track(to_u8(pred), static, params, expr, poses, mouth_source)
    lmk_gt = metrics.face_mesh_landmarks(to_u8(gt))
    ok = np.isfinite(lmk_pred[:, 0, 0]) & np.isfinite(lmk_gt[:, 0, 0])
    lmd = float(metrics.lmd(lmk_pred[ok], lmk_gt[ok])) if ok.sum() else float("nan")
    wav, sr = audio_io.load_audio(os.path.join(data.root, "audio.wav"), sr=16000)
    energy_all = metrics.audio_energy_per_frame(wav, sr, data.fps, num_frames=data.num_frames)
    energy = energy_all[test]
    sync = _sync(energy, mouth_pred)
    aue = metrics.aue(expr, data.expression53[test])
    mouth_corr = _mouth_correlation(mouth_pred, lmk_gt)
    self_recon = {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "lmd": lmd,
                  "lmd_frames": int(ok.sum()), "sync_offset_frames": int(sync.best_offset_frames),
                  "sync_confidence": float(sync.confidence), "sync_corr_at_0": float(sync.corr_at_0), "aue": aue,
                  "mouth_source": mouth_src, "mouth_corr_real": mouth_corr}
    if lpips_weights:
        from ggtalker_jax.eval import lpips
        lp = lpips.load_lpips_params(lpips_weights)
        self_recon["lpips"] = float(np.mean(np.asarray(lpips.lpips(jnp.asarray(pred), jnp.asarray(gt), lp))))
    else:
        self_recon["lpips"] = "not computed (no weights)"

    # Speed, per stage (after compilation).
    speed = _speed(adapted, expr[:8], {k: v[:8] for k, v in poses.items()}, test[:8])
    speed["a2e_clip_s"] = a2e_s
    speed["render_clip_s"] = render_s
    self_recon["fps"] = speed["fps"]
    result["self_reconstruction"] = self_recon
    result["speed"] = speed

    plots.plot_psnr_over_time(psnr, os.path.join(out_dir, "psnr_over_time.png"), fps=data.fps)
    plots.plot_mouth_vs_audio(mouth_pred, energy, os.path.join(out_dir, "mouth_vs_audio.png"),
                              offset=int(sync.best_offset_frames), fps=data.fps)
    pick = np.linspace(0, len(test) - 1, min(6, len(test))).astype(int)
    plots.frame_grid(gt[pick], pred[pick], os.path.join(out_dir, "frame_grid.png"),
                     labels=[f"frame {int(test[i])}" for i in pick])

    for name, paths in (("cross_identity", cross_id_audio), ("cross_language", cross_language_audio)):
        rows = []
        for path in paths:
            w, s = audio_io.load_audio(path, sr=16000)
            e, p, src = _drive(adapted, w, s, opts, path)
            frames = _render_sequence(adapted, e, p, src)
            mouth, _, msrc = _mouth_track(to_u8(frames), static, params, e, p, mouth_source)
            en = metrics.audio_energy_per_frame(w, s, data.fps, num_frames=len(e))
            sc = _sync(en, mouth)
            rows.append({"audio": os.path.abspath(path), "frames": int(len(e)),
                         "sync_offset_frames": int(sc.best_offset_frames), "sync_confidence": float(sc.confidence),
                         "mouth_source": msrc})
            plots.plot_mouth_vs_audio(mouth, en, os.path.join(out_dir, f"{name}_{len(rows)}_mouth_vs_audio.png"),
                                      offset=int(sc.best_offset_frames), fps=data.fps)
        result[name] = rows

    flat = {**{k: v for k, v in self_recon.items()}, "split": "self_reconstruction"}
    result["summary"] = flat
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({**flat, "details": result}, f, indent=2, default=float)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(_report(result))
    return result


def _speed(adapted, expr, poses, idx) -> dict:
    """Per-stage timings on a batch of frames (compiled once, then timed)."""
    from ggtalker_jax.render import rasterization
    static, params, data = adapted.static, adapted.params, adapted.subject
    n = expr.shape[0]
    uv_input = avatar_lib.subject_uv_input(static, data)
    uv_fn = jax.jit(lambda: avatar_lib.generate_uv_maps(params, static, uv_input))
    uv_maps = uv_fn()
    frame = {"expression53": jnp.asarray(expr), **{k: jnp.asarray(v) for k, v in poses.items()}}

    @jax.jit
    def gaussians():
        v = avatar_lib.posed_vertices(static, params["head"]["shape"], frame)
        return jax.vmap(lambda vv, e: avatar_lib.frame_gaussians(params, static, uv_maps, vv, e))(v, frame["expression53"])

    g = gaussians()
    s = static.config.image_size
    view = head_space_viewmat()[None]

    @jax.jit
    def raster(g):
        return jax.vmap(lambda m, q, sc, o, c: rasterization(m, q, sc, o, c, view, jnp.asarray(data.K)[None], s, s,
                                                             backend=static.config.backend)[0][0])(
            g["means"], g["quats"], g["scales"], g["opacities"], g["colors"])

    colors = raster(g)
    frames = jnp.asarray(data.frames(idx))
    masks = jnp.asarray(data.head_masks(idx))

    @jax.jit
    def inpaint(colors):
        heads = {"head_rgb": colors[..., :3], "head_alpha": jnp.ones(colors.shape[:-1] + (1,)) * 0.5,
                 "head_features": colors[..., 3:]}
        return avatar_lib.inpaint_frames(params, static, heads, frames, masks)["image"]

    timing = metrics.fps_breakdown({"gaussian_generation": uv_fn, "gaussian_binding": gaussians,
                                    "rasterization": lambda: raster(g), "inpainting": lambda: inpaint(colors)},
                                   warmup=1, iters=3)
    per_frame = (timing["gaussian_binding_ms"] + timing["rasterization_ms"] + timing["inpainting_ms"]) / n \
        + timing["gaussian_generation_ms"] / 100.0  # the UV maps are generated once per clip
    timing["ms_per_frame"] = per_frame
    timing["fps"] = 1000.0 / per_frame
    timing["batch"] = n
    timing["device"] = str(jax.devices()[0])
    return timing


def _report(r: dict) -> str:
    s = r["self_reconstruction"]
    lp = s["lpips"] if isinstance(s["lpips"], str) else f"{s['lpips']:.4f}"
    lines = ["# ggtalker-jax evaluation", "", f"subject: `{r['subject']}`  ", f"adapted: `{r['workdir']}`  ",
             f"test frames: {r['test_frames'][0]}-{r['test_frames'][1]} (last 1/11 of the video)", "",
             "## Self-reconstruction (held-out test split, driven by its own audio)", "",
             "| PSNR | SSIM | LPIPS | LMD | sync offset (frames) | sync confidence | AUE | FPS |",
             "|---|---|---|---|---|---|---|---|",
             f"| {s['psnr']:.2f} | {s['ssim']:.4f} | {lp} "
             f"| {s['lmd']:.3f} | {s['sync_offset_frames']} | {s['sync_confidence']:.3f} | {s['aue']:.4f} | {s['fps']:.1f} |",
             "", f"Mouth opening from {s['mouth_source']}; LMD over {s['lmd_frames']} frames where MediaPipe found "
             "faces in both (NaN: none).", "",
             "![PSNR over time](psnr_over_time.png)", "", "![mouth vs audio](mouth_vs_audio.png)", "",
             "![frames](frame_grid.png)", ""]
    for name in ("cross_identity", "cross_language"):
        rows = r.get(name, [])
        lines += [f"## {name.replace('_', '-').capitalize()}", ""]
        if not rows:
            lines += ["(no driving audio given)", ""]
            continue
        lines += ["| audio | frames | sync offset | sync confidence |", "|---|---|---|---|"]
        lines += [f"| `{os.path.basename(x['audio'])}` | {x['frames']} | {x['sync_offset_frames']} | "
                  f"{x['sync_confidence']:.3f} |" for x in rows]
        lines.append("")
    sp = r["speed"]
    lines += ["## Speed", "", f"device: {sp['device']}, batch of {sp['batch']} frames", "",
              "| stage | ms |", "|---|---|"]
    lines += [f"| {k[:-3]} | {v:.2f} |" for k, v in sp.items() if k.endswith("_ms")]
    lines += ["", f"{sp['fps']:.1f} frames per second (UV maps generated once per clip)", ""]
    return "\n".join(lines)

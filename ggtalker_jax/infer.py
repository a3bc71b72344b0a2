"""Inference: make an adapted subject say new audio, in any language.

    audio file --features--> A2E (DDIM, window by window) --> expressions [T, 53]
    head pose + eyes: from the subject's video (looped back and forth to the audio's length), static,
    or a user file; blinks optionally re-timed with --blink_rate
    render + inpaint in batches (jit) --> watermark --> H.264 mp4 with the driving audio

`ggtalker render --workdir DIR --audio speech.wav --out out.mp4 [--pose video|static|FILE.npz]
[--blink_rate PER_MIN] [--frames_dir DIR] [--no_visible_watermark]`
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax.models import diffusion

POSE_KEYS = ("global_rot", "translation", "neck_pose", "eye_pose")
# The invisible watermark is measured robust from about 256 px up (experiments/bench_watermark.py); smaller
# renders are upscaled to this before marking, so every video carries a detectable mark.
MIN_OUTPUT_SIZE = 256


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    pose: str = "video"                 # "video" | "static" | path to an .npz with [T, 3] global_rot/translation
    blink_rate: float | None = None     # blinks per minute; None keeps the video's eye motion
    num_diffusion_steps: int = 10
    guidance: float = 1.0
    batch_size: int = 8
    seed: int = 0
    visible_watermark: bool = True
    output_size: int | None = None      # mp4 frame size (None: the avatar's; at least MIN_OUTPUT_SIZE)


def pingpong_indices(num: int, start: int, stop: int) -> np.ndarray:
    """`num` frame indices walking [start, stop) forward then backward (no jump at the loop point)."""
    n = stop - start
    if n <= 1:
        return np.full(num, start)
    period = 2 * (n - 1)
    k = np.arange(num) % period
    return start + np.where(k < n, k, period - k)


def predict_expressions(static, params, audio_features, style_id: int, opts: RenderOptions, window: int = 32,
                        overlap: int = 4):
    """A2E: audio features [T, Da] -> expressions [T, 53] (DDIM, seeded)."""
    a2e = avatar_lib.networks(static.config)[0]
    schedule = diffusion.cosine_schedule(static.config.models.a2e.num_train_steps)
    apply_fn = diffusion.make_a2e_apply_fn(a2e)
    steps = min(opts.num_diffusion_steps, schedule.num_train_steps)
    fn = jax.jit(lambda p, a, k: diffusion.sample_long(apply_fn, {"params": p}, a, k, window, overlap,
                                                       schedule=schedule, num_steps=steps,
                                                       guidance=opts.guidance, style_id=style_id))
    return np.array(fn(params["a2e"], jnp.asarray(audio_features), jax.random.PRNGKey(opts.seed)))


def driving_poses(data, num: int, opts: RenderOptions) -> tuple[dict, np.ndarray]:
    """Per-frame pose arrays for `num` output frames and the subject frame index each one borrows its
    background/body from."""
    a, b, _ = data.split
    idx = pingpong_indices(num, a, b)
    t = data.tracking
    poses = {k: t[k][idx] for k in POSE_KEYS}
    if opts.pose == "static":
        mid = idx[0]
        poses = {k: np.repeat(t[k][mid:mid + 1], num, 0) for k in POSE_KEYS}
        idx = np.full(num, mid)
    elif opts.pose != "video":
        if not os.path.exists(opts.pose):
            raise FileNotFoundError(f"--pose {opts.pose}: no such file; use video, static or an .npz with "
                                    "global_rot [T,3] and translation [T,3]")
        with np.load(opts.pose) as z:
            for k in ("global_rot", "translation"):
                if k not in z:
                    raise ValueError(f"--pose {opts.pose}: missing array {k!r} [T, 3]")
                poses[k] = np.asarray(z[k], np.float32)[pingpong_indices(num, 0, z[k].shape[0])]
    return poses, idx


def apply_blinks(expression53: np.ndarray, blink_dims: list[int], rate_per_min: float, fps: float,
                 seed: int = 0) -> np.ndarray:
    """Replaces the blink components with blinks at `rate_per_min` (150 ms close-open each)."""
    out = expression53.copy()
    if not blink_dims:
        return out
    t = out.shape[0]
    rng = np.random.default_rng(seed)
    curve = np.zeros(t, np.float32)
    if rate_per_min > 0:
        mean_gap = 60.0 * fps / rate_per_min
        pos = rng.exponential(mean_gap) / 2
        width = max(2, int(round(0.15 * fps)))
        while pos < t:
            c = int(pos)
            for d in range(-width, width + 1):
                if 0 <= c + d < t:
                    curve[c + d] = max(curve[c + d], 1.0 - abs(d) / (width + 1))
            pos += max(width * 3, rng.exponential(mean_gap))
    for d in blink_dims:
        out[:, d] = curve
    return out


def render_video(workdir: str, audio_path: str, out_path: str, opts: RenderOptions = RenderOptions(),
                 frames_dir: str | None = None, progress: bool = True) -> dict:
    """Renders `out_path` (H.264 mp4 with the audio) for an adapted subject. Returns a summary."""
    from ggtalker_jax import watermark
    from ggtalker_jax.audio import features as audio_features
    from ggtalker_jax.audio import io as audio_io
    from ggtalker_jax import media
    from ggtalker_jax.head import blink_dimensions
    from ggtalker_jax.train.adapt import load_adapted

    timings = {}
    t0 = time.perf_counter()
    static, params, data, info = load_adapted(workdir)
    wav, sr = audio_io.load_audio(audio_path, sr=16000)
    audio_io.check_not_silent(wav, audio_path)
    feats = audio_features.log_mel_per_frame(wav, sr=sr, fps=data.fps)
    num = feats.shape[0]
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    expr = predict_expressions(static, params, feats, int(info["style_id"]), opts)
    timings["a2e_s"] = time.perf_counter() - t0
    poses, src_idx = driving_poses(data, num, opts)
    blink_dims = blink_dimensions(static.head_model)
    if opts.blink_rate is not None:
        expr = apply_blinks(expr, blink_dims, opts.blink_rate, data.fps, opts.seed)
    elif blink_dims and opts.pose == "video":  # eyes follow the video by default
        expr[:, blink_dims] = data.expression53[src_idx][:, blink_dims]

    t0 = time.perf_counter()
    uv_maps = avatar_lib.generate_uv_maps(params, static, data.uv_input)

    @jax.jit
    def render(frame, frames, masks):
        return avatar_lib.render_frames(params, static, uv_maps, frame, data.K, frames, masks)["image"]

    out_frames = []
    bs = opts.batch_size
    for s in tqdm(range(0, num, bs), desc="render", disable=not progress, unit="batch"):
        e = min(s + bs, num)
        pad = bs - (e - s)
        sel = np.concatenate([np.arange(s, e), np.full(pad, e - 1)])
        frame = {"expression53": jnp.asarray(expr[sel]), **{k: jnp.asarray(v[sel]) for k, v in poses.items()}}
        imgs = render(frame, jnp.asarray(data.frames[src_idx[sel]]), jnp.asarray(data.head_masks[src_idx[sel]]))
        out_frames.append(np.asarray(imgs)[: e - s])
    frames = (np.clip(np.concatenate(out_frames), 0, 1) * 255 + 0.5).astype(np.uint8)
    timings["render_s"] = time.perf_counter() - t0
    timings["render_fps"] = num / max(timings["render_s"], 1e-9)

    size = max(opts.output_size or frames.shape[1], MIN_OUTPUT_SIZE)
    if size != frames.shape[1]:
        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in frames])
    key = watermark.load_key(create=True)
    payload = watermark.Payload.create(os.path.abspath(workdir), audio_path, visible_mark=opts.visible_watermark)
    frames, record = watermark.mark_frames(frames, payload, key, visible=opts.visible_watermark)
    if frames_dir:
        os.makedirs(frames_dir, exist_ok=True)
        for i, f in enumerate(frames):
            cv2.imwrite(os.path.join(frames_dir, f"{i:06d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    media.write_mp4(out_path, frames, fps=data.fps, audio=(wav, sr), comment=record.to_metadata())
    return {"out": os.path.abspath(out_path), "frames": int(num), "seconds": num / data.fps, **timings}


def main(argv) -> int:
    from absl import flags

    from ggtalker_jax.cli import parse_flags
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "adapted subject (from `ggtalker adapt` or `ggtalker demo`)", flag_values=fv)
    flags.DEFINE_string("audio", None, "driving speech: wav/mp3/m4a/..., any sample rate, mono or stereo",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "output mp4", flag_values=fv)
    flags.DEFINE_string("pose", "video", "head pose: video | static | FILE.npz (global_rot, translation [T,3])",
                        flag_values=fv)
    flags.DEFINE_float("blink_rate", None, "blinks per minute (default: eye motion from the video)", flag_values=fv)
    flags.DEFINE_integer("steps", 10, "DDIM steps of the A2E sampler", flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "frames rendered per batch", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "sampler seed", flag_values=fv)
    flags.DEFINE_integer("output_size", None, "resize the output frames to this size", flag_values=fv)
    flags.DEFINE_string("frames_dir", None, "also write the frames as PNG here", flag_values=fv)
    flags.DEFINE_bool("visible_watermark", True, "draw the visible 'AI-generated' mark (turning it off is "
                      "recorded in the invisible watermark)", flag_values=fv)
    parse_flags(fv, argv)
    missing = [n for n in ("workdir", "audio", "out") if not getattr(fv, n)]
    if missing:
        print(f"ggtalker render: missing --{', --'.join(missing)}", file=sys.stderr)
        return 2
    opts = RenderOptions(pose=fv.pose, blink_rate=fv.blink_rate, num_diffusion_steps=fv.steps,
                         batch_size=fv.batch_size, seed=fv.seed, output_size=fv.output_size,
                         visible_watermark=fv.visible_watermark)
    summary = render_video(fv.workdir, fv.audio, fv.out, opts, fv.frames_dir)
    print(f"rendered {summary['frames']} frames ({summary['seconds']:.2f} s) at {summary['render_fps']:.1f} fps "
          f"(A2E {summary['a2e_s']:.1f} s)")
    print(f"video: {summary['out']}")
    return 0

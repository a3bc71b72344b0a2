"""Inference: make an adapted subject say new audio, in any language.

    audio file --features (the prior's kind, or a precomputed file)--> A2E (DDIM, window by window, the
    prior's windowing, classifier-free guidance) --> expressions [T, 53] --> in long pauses the mouth
    rests (`rest_in_pauses`)
    head pose: from the subject's video (looped back and forth to the audio's length), static, or a file
    eyes (every head model): blinks from the video or at --blink_rate, gaze from the video, into the
    camera or from a file (--gaze)
    render + inpaint in batches (jit) --> watermark --> H.264 mp4 with the driving audio

Frames are rendered, watermarked and encoded batch by batch, so memory stays bounded whatever the length
of the audio. `ggtalker render` (`ggtalker_jax.cli.render`) is the command line.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Iterator

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax.data.dataset import POSE_KEYS
from ggtalker_jax.errors import MediaError, UsageError
from ggtalker_jax.models import diffusion
from ggtalker_jax.workdir import Adapted

# The invisible watermark survives H.264 CRF 28 and a 0.5x rescale + CRF 28 on every sample clip from 512 px
# up, but not at 256 px (experiments/bench_watermark.py); smaller renders are upscaled to this before marking,
# so every video the product writes carries a mark that survives those re-encodes.
MIN_OUTPUT_SIZE = 512
MAX_BLINK_RATE = 120.0      # blinks per minute; people blink 10-30 times a minute
MAX_GAZE_RADIANS = 0.8      # an eye turns up to about 45 degrees from straight ahead


# Sampler defaults: 10 DDIM steps, no guidance (the conditional model alone). experiments/bench_lipsync.py
# --sweep measures the held-out mouth correlation of a prior over DDIM steps x guidance, to revisit them.
DEFAULT_DIFFUSION_STEPS = 10
DEFAULT_GUIDANCE = 1.0
# `RenderOptions.pose` values that take each output frame's pose from the subject frame it borrows (or one
# such frame): the borrowed head masks then match the pose. Anything else is a user's pose file.
RECORDED_POSES = ("video", "static")


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    pose: str = "video"                 # "video" | "static" | path to an .npz with [T, 3] global_rot/translation
    blink_rate: float | None = None     # blinks per minute; None keeps the video's eye motion
    gaze: str = "video"                 # "video" | "camera" | path to an eye_pose file (see `eye_motion`)
    num_diffusion_steps: int = DEFAULT_DIFFUSION_STEPS
    guidance: float = DEFAULT_GUIDANCE  # classifier-free guidance (1 = the conditional model alone)
    batch_size: int = 8
    seed: int = 0
    visible_watermark: bool = True
    output_size: int | None = None      # mp4 frame size (None: the avatar's; at least MIN_OUTPUT_SIZE)
    features: str | None = None         # precomputed features of the driving audio (.npy [S, D]), for avatars
                                        # whose A2E reads external features
    feature_fps: float = 50.0           # rate of `features` rows (Hz)
    rest_in_pauses: bool = True         # long pauses (and silent audio) show a closed, resting mouth

    def __post_init__(self):
        if self.blink_rate is not None and not (math.isfinite(self.blink_rate)
                                                and 0 <= self.blink_rate <= MAX_BLINK_RATE):
            raise UsageError(f"--blink_rate {self.blink_rate}: must be a number of blinks per minute in "
                             f"[0, {MAX_BLINK_RATE:g}] (people blink 10-30 times a minute)")
        if not isinstance(self.gaze, str) or not self.gaze:
            raise UsageError(f"--gaze {self.gaze!r}: use video, camera or the path of an eye_pose .npz/.npy")
        if self.num_diffusion_steps < 1:
            raise UsageError(f"--diffusion_steps {self.num_diffusion_steps}: the A2E sampler needs at least 1 DDIM step")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise UsageError(f"--guidance {self.guidance}: must be a finite number >= 0 (1 = no guidance)")
        if self.batch_size < 1:
            raise UsageError(f"--batch_size {self.batch_size}: must be >= 1")
        if self.output_size is not None and not 16 <= self.output_size <= 4096:
            raise UsageError(f"--output_size {self.output_size}: must be in [16, 4096] pixels")
        if not (math.isfinite(self.feature_fps) and self.feature_fps > 0):
            raise UsageError(f"--feature_fps {self.feature_fps}: must be a rate in Hz > 0")


def pingpong_indices(num: int, start: int, stop: int) -> np.ndarray:
    """`num` frame indices walking [start, stop) forward then backward (no jump at the loop point)."""
    n = stop - start
    if n <= 1:
        return np.full(num, start)
    period = 2 * (n - 1)
    k = np.arange(num) % period
    return start + np.where(k < n, k, period - k)


def predict_expressions(adapted: Adapted, audio_features, opts: RenderOptions) -> np.ndarray:
    """The adapted A2E: audio features [T, Da] -> expressions [T, 53] (DDIM, seeded, the prior's windowing
    and expression normalisation)."""
    prior = adapted.static.config.prior
    return np.array(diffusion.predict_expressions(
        adapted.static.config.models.a2e, adapted.params["a2e"], audio_features, jax.random.PRNGKey(opts.seed),
        window=prior.a2e_window, context=prior.a2e_context, num_steps=opts.num_diffusion_steps,
        style_id=adapted.style_id, guidance=opts.guidance, norm=prior.expression_norm))


def driving_features(adapted: Adapted, wav: np.ndarray, sr: int, num_frames: int, opts: RenderOptions,
                     audio_path: str = "<audio>") -> np.ndarray:
    """The features the avatar's A2E reads, for the driving audio: [num_frames, Da]. Log-mel priors compute
    them from `wav`; priors trained on external features need them precomputed the same way
    (`opts.features`, a .npy [S, D] at `opts.feature_fps` Hz); anything else is refused with the fix."""
    from ggtalker_jax.audio import features as audio_features

    spec = adapted.static.config.prior.audio
    fps = adapted.subject.fps
    if spec.kind != "external":
        if opts.features:
            raise UsageError(f"--features {opts.features}: this avatar's A2E reads {spec.describe()}, which is "
                             f"computed from {audio_path}; leave --features out")
        return spec.compute(wav, sr, fps, num_frames)
    if not opts.features:
        raise UsageError(f"this avatar's A2E reads {spec.describe()}, which cannot be computed from {audio_path} "
                         f"here; compute them for the driving audio as for training and pass --features FILE.npy "
                         f"--feature_fps RATE (rows per second, e.g. 50 for HuBERT / wav2vec2)")
    feats = audio_features.load_external_features(opts.features, num_frames, opts.feature_fps, fps)
    if feats.shape[1] != spec.dim:
        raise UsageError(f"--features {opts.features}: {feats.shape[1]} values per row, but this avatar's A2E "
                         f"reads {spec.describe()}; compute the features with the same model as for training")
    return feats


def rest_expression(adapted: Adapted) -> np.ndarray:
    """The subject's resting mouth [53]: the mean tracked expression over its training frames whose mouth
    (head-model lip landmarks) is among the 10% most closed, with both eyes open (blink amount 0)."""
    from ggtalker_jax.head import eyes

    subject = adapted.subject
    a, b, _ = subject.split
    expr = subject.expression53[a:b]
    opening = avatar_lib.mouth_opening(adapted.static.head_model, expr, adapted.params["head"]["shape"])
    if not np.all(np.isfinite(opening)):
        rest = np.median(expr, axis=0)
    else:
        closed = opening <= np.quantile(opening, 0.1)
        rest = expr[closed].mean(axis=0)
    basis = eyes.blink_basis(adapted.static.head_model)
    return eyes.set_blinks(basis, rest.astype(np.float32)[None], np.zeros(1, np.float32))[0]


def rest_in_pauses(expr: np.ndarray, activity: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Blends expressions [T, 53] towards the resting mouth `rest` [53] where `activity` [T] (1 speech, 0
    pause; `audio.features.speech_activity`) is below 1: exactly `rest` deep inside long pauses."""
    w = np.asarray(activity, np.float32)[:, None]
    return (w * expr + (1.0 - w) * rest[None]).astype(np.float32)


def load_pose_file(path: str) -> dict[str, np.ndarray]:
    """A user head-pose file: .npz with `global_rot` [T, 3] and `translation` [T, 3] (float, finite)."""
    if not os.path.isfile(path):
        raise UsageError(f"--pose {path}: no such file; use video, static or an .npz with global_rot [T, 3] and "
                         "translation [T, 3]")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:  # noqa: BLE001  (not a zip, truncated, pickled objects ...)
        raise MediaError(f"--pose {path}: not a readable .npz of arrays ({type(e).__name__}); write it with "
                         "numpy.savez(path, global_rot=R, translation=T)") from None
    out = {}
    for k in ("global_rot", "translation"):
        if k not in arrays:
            raise MediaError(f"--pose {path}: missing array {k!r} [T, 3] (has {sorted(arrays)})")
        a = arrays[k]
        if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 1 or not np.issubdtype(a.dtype, np.number):
            raise MediaError(f"--pose {path}: {k} must be a numeric [T, 3] array with T >= 1, got {a.dtype} "
                             f"{a.shape}")
        if not np.all(np.isfinite(a)):
            raise MediaError(f"--pose {path}: {k} contains NaN/inf values")
        out[k] = a.astype(np.float32)
    if len(out["global_rot"]) != len(out["translation"]):
        raise MediaError(f"--pose {path}: global_rot has {len(out['global_rot'])} rows but translation "
                         f"{len(out['translation'])}")
    return out


def driving_poses(subject, num: int, opts: RenderOptions, head_params: dict | None = None) -> tuple[dict, np.ndarray]:
    """Per-frame pose arrays for `num` output frames and the subject frame index each one borrows its
    background/body from. With the avatar's `head_params`, the pose corrections adaptation learned for the
    borrowed frames are applied (`avatar.corrected_pose`), so the head sits where it was fitted on them;
    a user pose file replaces rotation and translation as given."""
    a, b, _ = subject.split
    idx = pingpong_indices(num, a, b)
    t = subject.tracking
    poses = {k: t[k][idx] for k in POSE_KEYS}
    if opts.pose == "static":
        mid = idx[0]
        poses = {k: np.repeat(t[k][mid:mid + 1], num, 0) for k in POSE_KEYS}
        idx = np.full(num, mid)
    if head_params is not None and opts.pose in RECORDED_POSES:
        poses = {k: np.asarray(v) for k, v in avatar_lib.corrected_pose(head_params, poses, idx).items()}
    if opts.pose not in RECORDED_POSES:
        user = load_pose_file(opts.pose)
        rows = pingpong_indices(num, 0, len(user["global_rot"]))
        poses.update({k: v[rows] for k, v in user.items()})
    return poses, idx


def load_gaze(path: str, num_frames: int) -> np.ndarray:
    """eye_pose [num_frames, 6] from a `--gaze` FILE (`ggtalker_jax.head.eyes.load_gaze_file`: an .npz with
    eye_pose [T, 6] or [T, 3], or such an .npy), checked: a missing file is a `UsageError`, a malformed one
    or rotations beyond MAX_GAZE_RADIANS a `MediaError`, each naming the file."""
    from ggtalker_jax.head import eyes
    try:
        arr = eyes.load_gaze_file(path, num_frames)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise MediaError(str(e)) from None
    angle = np.linalg.norm(arr.reshape(-1, 2, 3), axis=-1)
    if angle.size and angle.max() > MAX_GAZE_RADIANS:
        raise MediaError(f"--gaze {path}: an eye turns {angle.max():.2f} rad; eyes turn at most "
                         f"{MAX_GAZE_RADIANS:g} rad (about 45 degrees) from straight ahead (axis-angle in radians, "
                         "not degrees)")
    return arr


def eye_motion(adapted: Adapted, expr: np.ndarray, poses: dict, src_idx: np.ndarray,
               opts: RenderOptions) -> tuple[np.ndarray, dict]:
    """Blinks and gaze of the output frames, for every head model (`ggtalker_jax.head.eyes`): expr [T, 53],
    poses {key: [T, k]} (from `driving_poses`), src_idx [T] -> (expr, poses) with

      blinks  --blink_rate R: random blinks at R per minute along the model's blink directions (named
              components, or derived from its lids for FLAME); else with --pose video the blink amounts
              of the video frames each output frame borrows; else the A2E's expressions as they are
      gaze    "video": the tracked eye_pose of those frames; "camera": looking into the camera for the
              driving head poses; FILE: eye_pose [T, 6] from the file (`load_gaze`)."""
    from ggtalker_jax.head import eyes
    model, subject = adapted.static.head_model, adapted.subject
    num = expr.shape[0]
    basis = eyes.blink_basis(model)
    if opts.blink_rate is not None:
        expr = eyes.set_blinks(basis, expr, eyes.blink_curve(num, subject.fps, opts.blink_rate, opts.seed))
    elif opts.pose == "video":                      # the eyes follow the video by default
        expr = eyes.set_blinks(basis, expr, eyes.blink_amount(basis, subject.expression53[src_idx]))
    poses = dict(poses)
    if opts.gaze == "camera":
        poses["eye_pose"] = eyes.gaze_eye_pose(
            "camera", model, num, global_rot=poses["global_rot"], translation=poses["translation"],
            neck_pose=poses["neck_pose"], shape=np.asarray(adapted.params["head"]["shape"]), expression53=expr)
    elif opts.gaze != "video":
        poses["eye_pose"] = load_gaze(opts.gaze, num)
    return np.asarray(expr, np.float32), poses


def with_head_reach(adapted: Adapted, reach: int) -> Adapted:
    """`adapted` whose rendered head may claim `reach` pixels beyond the borrowed frames' head masks."""
    config = dataclasses.replace(adapted.static.config, head_reach=reach)
    return dataclasses.replace(adapted, static=dataclasses.replace(adapted.static, config=config))


def render_sequence(adapted: Adapted, expr: np.ndarray, poses: dict, src_idx: np.ndarray,
                    batch_size: int = 8, progress: bool = False) -> Iterator[np.ndarray]:
    """Renders frames in batches: expr [T, 53], poses {key: [T, k]}, src_idx [T] (the subject frame whose
    body/background each output frame uses). Yields float32 [b, S, S, 3] batches in [0, 1] (b <= batch_size;
    the last batch is padded to a full one for the compiled function, then cut)."""
    static, params, subject = adapted.static, adapted.params, adapted.subject
    uv_maps = avatar_lib.generate_uv_maps(params, static, avatar_lib.subject_uv_input(static, subject))

    @jax.jit
    def render(frame, frames, masks):
        return avatar_lib.render_frames(params, static, uv_maps, frame, subject.K, frames, masks)["image"]

    num = expr.shape[0]
    for s in tqdm(range(0, num, batch_size), desc="render", disable=not progress, unit="batch"):
        e = min(s + batch_size, num)
        sel = np.concatenate([np.arange(s, e), np.full(batch_size - (e - s), e - 1)])
        frame = {"expression53": jnp.asarray(expr[sel]), **{k: jnp.asarray(v[sel]) for k, v in poses.items()}}
        images = render(frame, jnp.asarray(subject.frames(src_idx[sel])), jnp.asarray(subject.head_masks(src_idx[sel])))
        yield np.clip(np.asarray(images)[: e - s], 0.0, 1.0)


def render_video(workdir: str, audio_path: str, out_path: str, opts: RenderOptions = RenderOptions(),
                 frames_dir: str | None = None, progress: bool = True, data_dir: str | None = None,
                 head: str | None = None, landmark_embedding: str | None = None) -> dict:
    """Renders `out_path` (H.264 mp4 with the audio) for an adapted subject. Returns a summary. head /
    landmark_embedding: new paths of the head model's files (`ggtalker_jax.workdir.load_adapted`)."""
    from ggtalker_jax import watermark
    from ggtalker_jax.audio import features as audio_features
    from ggtalker_jax.audio import io as audio_io
    from ggtalker_jax import media
    from ggtalker_jax.workdir import load_adapted

    timings = {}
    t0 = time.perf_counter()
    wav, sr = audio_io.load_audio(audio_path, sr=16000)
    adapted = load_adapted(workdir, data_dir, head, landmark_embedding)
    if opts.pose not in RECORDED_POSES:          # poses the frames' head masks were not recorded with
        adapted = with_head_reach(adapted, adapted.static.config.posed_head_reach())
    subject = adapted.subject
    num = audio_features.num_video_frames(wav.size, sr, subject.fps)
    if num < 1:
        raise MediaError(f"{audio_path}: {wav.size / sr * 1000:.0f} ms of audio is shorter than one video frame at "
                         f"{subject.fps:g} fps; use a longer clip")
    activity = audio_features.speech_activity(wav, sr, subject.fps, num)
    notes = []
    if not activity.any():
        notes.append(f"no speech found in {audio_path} (RMS {audio_io.rms_dbfs(wav):.1f} dBFS): the mouth rests")
    feats = driving_features(adapted, wav, sr, num, opts, audio_path)
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    expr = predict_expressions(adapted, feats, opts)
    timings["a2e_s"] = time.perf_counter() - t0
    if opts.rest_in_pauses:
        expr = rest_in_pauses(expr, activity, rest_expression(adapted))
    poses, src_idx = driving_poses(subject, num, opts, adapted.params["head"])
    expr, poses = eye_motion(adapted, expr, poses, src_idx, opts)

    size = max(opts.output_size or adapted.static.config.image_size, MIN_OUTPUT_SIZE)
    key = watermark.load_key(create=True)
    payload = watermark.Payload.create(os.path.abspath(workdir), audio_path, visible_mark=opts.visible_watermark)
    marker = watermark.StreamMarker(payload, key, visible=opts.visible_watermark)
    if frames_dir:
        os.makedirs(frames_dir, exist_ok=True)
    t0 = time.perf_counter()

    def marked_frames() -> Iterator[np.ndarray]:
        written = 0

        def emit(marked):
            nonlocal written
            for f in marked:
                if frames_dir:
                    cv2.imwrite(os.path.join(frames_dir, f"{written:06d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
                written += 1
                yield f

        for batch in render_sequence(adapted, expr, poses, src_idx, opts.batch_size, progress):
            u8 = (batch * 255 + 0.5).astype(np.uint8)
            if size != u8.shape[1]:
                u8 = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in u8])
            yield from emit(marker.feed(u8))
        yield from emit(marker.finish())

    # The signed record (it holds the frames' content hash) goes into the comment tag once every frame is out.
    media.write_mp4(out_path, marked_frames(), fps=subject.fps, audio=(wav, sr),
                    comment=lambda: marker.record.to_metadata())
    timings["render_s"] = time.perf_counter() - t0
    timings["render_fps"] = num / max(timings["render_s"], 1e-9)
    return {"out": os.path.abspath(out_path), "frames": int(num), "seconds": num / subject.fps, "notes": notes,
            "expression53": expr, "poses": poses, **timings}

"""The built-in default subject: a procedural speaker made by the package itself (no download).

Speech-like audio (`ggtalker_jax.audio.synth`) whose syllables drive the jaw and lips of the open head
model, so there is a real audio-to-mouth relation to learn; rendered with UV-bound Gaussians through
`ggtalker_jax.render.rasterization` with a procedural face texture, a smoothly moving head, random blinks,
shoulders and a textured background. Deterministic from the seed. Written in exactly the prepared-dataset
format of `ggtalker_jax.data.dataset`, plus `tracking.npz` holding the ground-truth parameters and
`source.mp4` (video + audio) so the real ingest path can be exercised on it too.
"""
from __future__ import annotations

import json
import pathlib

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax import head as head_lib
from ggtalker_jax.audio import features as audio_features
from ggtalker_jax.audio import io as audio_io
from ggtalker_jax.audio import synth
from ggtalker_jax.data import dataset as ds
from ggtalker_jax.head import open_head
from ggtalker_jax.head import uv as uv_lib
from ggtalker_jax.render import head_space_viewmat, intrinsics_from_fov, rasterization
from ggtalker_jax.render.camera import head_space_to_pixels

FPS = 25.0
FOV_DEGREES = 18.0
DISTANCE = 0.92
SAMPLE_RATE = 16000


def expression_index(name: str) -> int:
    return open_head.EXPRESSION_NAMES.index(name)


def mouth_track_from_syllables(syllables, num_frames: int, fps: float = FPS) -> np.ndarray:
    """[T, 53] open-head expressions: jaw from vowel openness x loudness, spread for i/e, rounding for o/u,
    lips pressed for p/b/m."""
    tgt = synth.mouth_targets(syllables, num_frames, fps)
    e = np.zeros((num_frames, 53), np.float32)
    e[:, expression_index("lips_spread")] = 1.2 * tgt["spread"]
    e[:, expression_index("lips_pucker")] = 1.1 * tgt["round"]
    e[:, expression_index("lips_funnel")] = 0.6 * tgt["round"] * tgt["open"]
    e[:, expression_index("lips_press")] = 1.5 * tgt["press"]
    e[:, expression_index("lower_lip_depress")] = 0.5 * tgt["open"]
    e[:, 50] = 0.20 * tgt["open"] * (1.0 - tgt["press"])                   # jaw pitch (opens the mouth)
    return e


def _smooth_noise(rng, num: int, scale: float, freqs=(0.11, 0.23, 0.41)) -> np.ndarray:
    t = np.arange(num) / FPS
    return scale * sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) / (k + 1) for k, f in enumerate(freqs))


def _blinks(rng, num: int) -> np.ndarray:
    curve = np.zeros(num, np.float32)
    t = rng.uniform(0.5, 2.0)
    while t * FPS < num:
        c = int(t * FPS)
        for d, v in zip(range(-2, 3), (0.35, 0.8, 1.0, 0.8, 0.35)):
            if 0 <= c + d < num:
                curve[c + d] = max(curve[c + d], v)
        t += rng.uniform(2.0, 4.5)
    return curve


def texel_colours(model, binding: uv_lib.UVBinding, seed: int) -> np.ndarray:
    """Procedural albedo [M, 3] of the bound texels from where each lies on the canonical head."""
    # Painted where the features are on the procedural surface the open head's fields are laid out on.
    procedural = open_head.procedural_head_arrays()["v_template"]
    v = procedural if len(procedural) == model.num_vertices else np.asarray(model.v_template)
    f = np.asarray(model.faces)[binding.face]
    p = np.einsum("mkc,mk->mc", v[f], binding.bary)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    rng = np.random.default_rng(seed)
    skin = np.array([0.86, 0.66, 0.55]) * rng.uniform(0.85, 1.05)
    col = np.tile(skin, (len(p), 1))
    col *= (1.0 + 0.05 * np.sin(40 * x + 3) * np.cos(35 * y))[:, None]            # low-frequency variation
    ax = np.abs(x)
    # Hair: crown and back of the head.
    hair = (y > 0.072 + 0.02 * np.clip(z / 0.1, 0, 1)) | ((z < -0.04) & (y > -0.06))
    col[hair] = np.array([0.22, 0.14, 0.09])
    # Lips and mouth.
    my, mw = open_head.MOUTH_Y, open_head.MOUTH_HALF_WIDTH
    lips = (z > 0.03) & (ax < mw * (1 - ((y - my) / 0.012) ** 2).clip(0) ** 0.5) & (np.abs(y - my) < 0.012)
    col[lips] = np.array([0.72, 0.33, 0.33])
    mouth = (z > 0.03) & (np.abs(y - my) < 0.0008) & (ax < 0.84 * mw)
    col[mouth] = np.array([0.22, 0.04, 0.05])
    # Eyes: white, iris, pupil; brows.
    for sign in (-1, 1):
        ex = sign * open_head.EYE_X
        d = np.hypot(x - ex, (y - open_head.EYE_Y) * open_head.EYE_HALF_WIDTH / open_head.EYE_HALF_HEIGHT)
        eye = (z > 0.03) & (d < open_head.EYE_HALF_WIDTH * 0.95)
        col[eye] = np.array([0.93, 0.92, 0.9])
        r = np.hypot(x - ex, y - open_head.EYE_Y)
        col[eye & (r < open_head.IRIS_RADIUS)] = np.array([0.25, 0.35, 0.5])
        col[eye & (r < 0.45 * open_head.IRIS_RADIUS)] = np.array([0.05, 0.05, 0.05])
        brow = (z > 0.03) & (np.abs(x - ex) < 0.021) & (np.abs(y - open_head.BROW_Y - 0.005) < 0.0035)
        col[brow] = np.array([0.2, 0.13, 0.08])
    return np.clip(col, 0, 1).astype(np.float32)


def _background(size: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.35 + 0.25 * yy, 0.42 + 0.1 * xx, 0.55 - 0.15 * yy], -1)
    pattern = 0.04 * np.sin(18 * xx + rng.uniform(0, 6)) * np.sin(14 * yy + rng.uniform(0, 6))
    return np.clip(base + pattern[..., None], 0, 1).astype(np.float32)


def _torso(size: int, offset_x: float) -> np.ndarray:
    """Soft shoulder mask [H, W] below the head."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx = 0.5 + offset_x
    shoulders = ((xx - cx) / 0.55) ** 2 + ((yy - 1.18) / 0.42) ** 2 < 1.0
    return shoulders.astype(np.float32)


def make_default_subject(out_dir: str, seconds: float = 8.0, size: int = 128, seed: int = 0,
                         uv_resolution: int = 48, write_video: bool = True, features: str = "logmel",
                         feature_fps: float = 50.0) -> dict:
    """Writes the default subject as a prepared dataset in `out_dir`; returns a summary dict. features:
    "logmel" or a precomputed .npy [S, D] at `feature_fps` Hz for its speech (`speech_wav` writes the
    speech first, so such features can be made), stored as `prepare` stores them."""
    out = pathlib.Path(out_dir)
    (out / ds.FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    (out / ds.MASKS_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num = int(round(seconds * FPS))
    wav, syllables = synth.synth_speech(num / FPS, sr=SAMPLE_RATE, seed=seed, voice="subject")
    expr = mouth_track_from_syllables(syllables, num)
    blink = _blinks(rng, num)
    expr[:, expression_index("blink_left")] = blink
    expr[:, expression_index("blink_right")] = blink
    expr[:, expression_index("brow_up_left")] = expr[:, expression_index("brow_up_right")] = np.clip(
        _smooth_noise(rng, num, 0.4), 0, None)
    model = head_lib.load("open")
    shape = (0.6 * rng.standard_normal(model.num_shape)).astype(np.float32)
    shape[open_head.NUM_GLOBAL_SHAPE:] = 0.0                              # global proportions only
    rot = np.stack([_smooth_noise(rng, num, 0.06), _smooth_noise(rng, num, 0.10), _smooth_noise(rng, num, 0.04)],
                   -1).astype(np.float32)
    trans = np.stack([_smooth_noise(rng, num, 0.004), -0.012 + _smooth_noise(rng, num, 0.003),
                      -DISTANCE + _smooth_noise(rng, num, 0.01)], -1).astype(np.float32)
    eye_pose = np.zeros((num, 6), np.float32)
    neck_pose = np.zeros((num, 3), np.float32)
    K = np.asarray(intrinsics_from_fov(FOV_DEGREES, size, size))

    binding = uv_lib.build_uv_binding(model, uv_resolution)
    colours = jnp.asarray(texel_colours(model, binding, seed))
    m = binding.num_gaussians
    local_rot = jnp.tile(jnp.array([1.0, 0, 0, 0]), (m, 1))
    local_scale = jnp.array([1.3, 1.3, 0.3]) * jnp.ones((m, 3))
    view = head_space_viewmat()[None]

    @jax.jit
    def render(e53, r, t):
        e, jaw = head_lib.split_expression53(e53)
        o = head_lib.forward(model, shape=shape, expression=e, jaw_pose=jaw, global_rot=r, translation=t)
        means, quats, scales = uv_lib.bind_gaussians(binding, o.vertices, model.faces, jnp.zeros((m, 3)),
                                                     local_rot, local_scale)
        img, alpha, _ = rasterization(means, quats, scales, jnp.full((m,), 0.98), colours, view,
                                      jnp.asarray(K)[None], size, size)
        xy, depth = head_space_to_pixels(o.landmarks, K)
        return img[0], alpha[0], xy, depth

    background = _background(size, rng)
    mp_index = np.asarray(model.lmk_mediapipe_index)
    landmarks = np.full((num, ds.NUM_LANDMARKS, 3), np.nan, np.float32)
    frames = []
    for i in range(num):
        img, alpha, lmk_xy, lmk_z = (np.asarray(a) for a in render(jnp.asarray(expr[i]), jnp.asarray(rot[i]),
                                                                    jnp.asarray(trans[i])))
        torso = _torso(size, float(trans[i, 0]) * 2.0)[..., None]
        shirt = np.array([0.25, 0.3, 0.38], np.float32)
        scene = background * (1 - torso) + shirt * torso
        frame = img + (1.0 - alpha) * scene                              # head colour is premultiplied
        head = alpha[..., 0] > 0.5
        person = np.maximum(alpha[..., 0], torso[..., 0])
        rgb = (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)
        frames.append(rgb)
        ds.write_image(out / ds.frame_name(i), rgb)
        cv2.imwrite(str(out / ds.mask_name(i)), cv2.cvtColor(ds.encode_mask(head, person), cv2.COLOR_RGB2BGR))
        landmarks[i, mp_index, :2] = lmk_xy
        landmarks[i, mp_index, 2] = (lmk_z - lmk_z.mean()) * K[0, 0] / DISTANCE
    # MediaPipe points the open model does not place: fill them with the nearest placed one, so the array is
    # complete; `landmarks_found` stays True (all frames have a face) and trackers use model.lmk_mediapipe_index.
    missing = np.setdiff1d(np.arange(ds.NUM_LANDMARKS), mp_index)
    landmarks[:, missing] = landmarks[:, mp_index[0]][:, None]
    np.save(out / ds.LANDMARKS, landmarks)
    np.save(out / ds.LANDMARKS_FOUND, np.ones(num, bool))
    np.save(out / ds.CROP_BOXES, np.tile(np.array([0, 0, size], np.int64), (num, 1)))
    audio_io.write_wav(str(out / ds.AUDIO), wav, SAMPLE_RATE)
    feats, spec = audio_features.features_for(wav, SAMPLE_RATE, FPS, num, features, feature_fps)
    np.save(out / ds.AUDIO_FEATURES, feats.astype(np.float32))
    np.savez(out / ds.TRACKING, shape=shape, expression=expr[:, :50], jaw_pose=expr[:, 50:], neck_pose=neck_pose,
             eye_pose=eye_pose, global_rot=rot, translation=trans, K=K, landmark_error_px=np.zeros(num, np.float32),
             blink=np.stack([blink, blink], -1), head_model=np.array("open"),
             head_model_record=np.array(json.dumps(head_lib.head_model_record(model))))
    meta = {"version": ds.FORMAT_VERSION, "fps": FPS, "size": size, "num_frames": num,
            "source": "ggtalker_jax.data.default_subject", "seed": seed, "audio_sample_rate": SAMPLE_RATE,
            "split": ds.split_ranges(num), "features": spec.to_dict(),
            "stats": {"found_ratio": 1.0, "lost_ranges": []}, "ground_truth_tracking": True,
            "syllables": len(syllables)}
    with open(out / ds.META, "w") as f:
        json.dump(meta, f, indent=2)
    if write_video:
        from ggtalker_jax import media
        media.write_mp4(str(out / "source.mp4"), frames, fps=FPS, audio=(wav, SAMPLE_RATE))
    return {"dir": str(out), "frames": num, "size": size, "gaussians": m}


def speech_wav(seconds: float = 8.0, seed: int = 0) -> tuple[np.ndarray, int]:
    """The speech `make_default_subject` gives the subject of this seed and length: (wav [S], sample_rate)."""
    num = int(round(seconds * FPS))
    wav, _ = synth.synth_speech(num / FPS, sr=SAMPLE_RATE, seed=seed, voice="subject")
    return wav, SAMPLE_RATE


def default_driving_audio(seconds: float = 6.0, seed: int = 1, voice: str = "other_speaker"):
    """Speech the default subject never said (another voice): (wav [S], sample_rate)."""
    wav, _ = synth.synth_speech(seconds, sr=SAMPLE_RATE, seed=seed + 1000, voice=voice)
    return wav, SAMPLE_RATE

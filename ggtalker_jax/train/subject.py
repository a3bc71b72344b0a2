"""One prepared subject held in memory at the avatar's image size, for adaptation and evaluation.

Reads the prepared-dataset format (`ggtalker_jax.data.dataset`): frames, head masks, `tracking.npz`,
`audio_features.npy`, `meta.json`. Frames are resized to `AvatarConfig.image_size` (the intrinsics are
scaled to match). The reference frame for the Identity-Gaussian Generator is the first training frame.
"""
from __future__ import annotations

import dataclasses
import json
import os

import cv2
import jax.numpy as jnp
import numpy as np

from ggtalker_jax import avatar as avatar_lib

TRACK_KEYS = ("expression", "jaw_pose", "neck_pose", "eye_pose", "global_rot", "translation")


@dataclasses.dataclass
class SubjectData:
    """frames [T, S, S, 3] float32 in [0, 1]; head_masks [T, S, S, 1]; tracking dict of [T, ...] arrays
    (+ shape [S_shape]); expression53 [T, 53]; audio [T, Da]; K [3, 3] at image size S; split (a, b, c):
    train frames [a, b), test frames [b, c); uv_input [R, R, 7] from the reference frame."""
    root: str
    frames: np.ndarray
    head_masks: np.ndarray
    tracking: dict
    expression53: np.ndarray
    audio: np.ndarray
    K: np.ndarray
    split: tuple[int, int, int]
    fps: float
    uv_input: jnp.ndarray

    @staticmethod
    def load(root: str, static: avatar_lib.AvatarStatic, max_frames: int | None = None) -> "SubjectData":
        meta_path = os.path.join(root, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{root}: no meta.json - not a prepared dataset; run "
                                    "`ggtalker prepare --video VIDEO --out DIR` first")
        with open(meta_path) as f:
            meta = json.load(f)
        track_path = os.path.join(root, "tracking.npz")
        if not os.path.exists(track_path):
            raise FileNotFoundError(f"{root}: no tracking.npz - the subject was prepared without head "
                                    "tracking; rerun `ggtalker prepare` (tracking is on by default)")
        with np.load(track_path) as z:
            tracking = {k: np.asarray(z[k], np.float32) for k in (*TRACK_KEYS, "shape", "K")}
        n = int(tracking["expression"].shape[0])
        if max_frames:
            n = min(n, max_frames)
        size = static.config.image_size
        src = int(meta["size"])
        frames = np.stack([_read(os.path.join(root, "frames", f"{i:06d}.jpg"), size) for i in range(n)])
        masks = np.stack([_read(os.path.join(root, "masks", f"{i:06d}.png"), size)[..., :1] for i in range(n)])
        masks = (masks > 0.5).astype(np.float32)
        audio = np.load(os.path.join(root, "audio_features.npy")).astype(np.float32)[:n]
        if audio.shape[0] < n:
            audio = np.concatenate([audio, np.repeat(audio[-1:], n - audio.shape[0], 0)])
        K = tracking["K"].copy()
        K[:2] *= size / src
        tracking = {k: (v[:n] if k in TRACK_KEYS else v) for k, v in tracking.items()}
        expression53 = np.concatenate([tracking["expression"], tracking["jaw_pose"]], axis=-1)
        a, b = meta["split"]["train"]
        _, c = meta["split"]["test"]
        split = (int(a), min(int(b), n), min(int(c), n))
        ref = split[0]
        vertices = avatar_lib.posed_vertices(static, jnp.asarray(tracking["shape"]), {
            "expression53": jnp.asarray(expression53[ref:ref + 1]),
            **{k: jnp.asarray(tracking[k][ref:ref + 1]) for k in ("global_rot", "translation", "neck_pose",
                                                                    "eye_pose")}})[0]
        uv_input = avatar_lib.reference_uv_input(static, jnp.asarray(frames[ref]), vertices, jnp.asarray(K))
        return SubjectData(root, frames, masks, tracking, expression53.astype(np.float32), audio, K, split,
                           float(meta.get("fps", 25.0)), uv_input)

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    def window_batch(self, start: int, window: int, render_pick) -> dict:
        idx = np.arange(start, start + window)
        pick = np.asarray(render_pick, np.int32)
        t = self.tracking
        return {"window_index": idx.astype(np.int32), "expression53": self.expression53[idx],
                "audio": self.audio[idx], "global_rot": t["global_rot"][idx], "translation": t["translation"][idx],
                "eye_pose": t["eye_pose"][idx], "neck_pose": t["neck_pose"][idx], "render_pick": pick,
                "frames": self.frames[idx[pick]], "head_masks": self.head_masks[idx[pick]]}

    def sample_batch(self, rng: np.random.Generator, window: int, batch_size: int) -> dict:
        """A random training window of `window` frames and `batch_size` frames in it to render."""
        a, b, _ = self.split
        window = min(window, b - a)
        start = int(rng.integers(a, b - window + 1))
        return self.window_batch(start, window, rng.integers(0, window, size=batch_size))


def _read(path: str, size: int) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read {path}: missing or corrupt; re-run `ggtalker prepare`")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) / 255.0

"""FLAME as a `HeadModel`, from the user's own licensed files (never shipped, never downloaded).

    head.load("generic_model.pkl", num_shape=100, landmark_embedding="mediapipe_landmark_embedding.npz")

The pickle is read by `flame_io.load_flame_arrays` (a restricted unpickler: chumpy / scipy objects become
plain arrays, anything else is refused). FLAME's UV layout lives in its texture file
(`FLAME_texture.npz` with `vt` [Vt, 2] and `ft` [F, 3]); give it as `uv_path` or put it beside the model.
"""
from __future__ import annotations

import os

import numpy as np

from ggtalker_jax.head.model import HeadModel, from_arrays


def load_flame(path: str, num_shape: int = 100, landmark_embedding: str | None = None,
               uv_path: str | None = None) -> HeadModel:
    from ggtalker_jax.head.flame_io import load_flame_arrays, load_landmark_embedding

    arrays = load_flame_arrays(path, num_shape=num_shape, num_expression=100)
    out = {k: arrays[k] for k in ("v_template", "faces", "shapedirs", "posedirs", "J_regressor", "lbs_weights")}
    out["exprdirs"] = np.asarray(arrays["exprdirs"])[..., :50]          # GGTalker uses FLAME's first 50
    parents = tuple(int(p) for p in np.asarray(arrays["parents"]))
    uv_path = uv_path or os.path.join(os.path.dirname(os.path.abspath(path)), "FLAME_texture.npz")
    if os.path.exists(uv_path):
        with np.load(uv_path, allow_pickle=False) as z:
            vt, ft = np.asarray(z["vt"], np.float32), np.asarray(z["ft"], np.int32)
        vt = vt.copy()
        vt[:, 1] = 1.0 - vt[:, 1]                                         # OpenGL v-up -> image rows
        out["uvs"], out["uv_faces"] = vt, ft
    if landmark_embedding:
        emb = load_landmark_embedding(landmark_embedding)
        out["lmk_faces"] = np.asarray(emb["lmk_face_idx"], np.int32)
        out["lmk_bary"] = np.asarray(emb["lmk_b_coords"], np.float32)
        out["lmk_mediapipe_index"] = np.asarray(emb["landmark_indices"], np.int32)
    return from_arrays(out, "flame", (), parents)

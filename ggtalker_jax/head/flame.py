"""FLAME as a `HeadModel`, from the user's own licensed files (never shipped, never downloaded).

    head.load("generic_model.pkl", num_shape=100, landmark_embedding="mediapipe_landmark_embedding.npz")

The pickle is read by `flame_io.load_flame_arrays` (a restricted unpickler: chumpy / scipy objects become
plain arrays, anything else is refused). The landmark embedding (`ggtalker_jax.head.landmark_embedding`
lists the accepted keys) says where MediaPipe's face-mesh points lie on the mesh; MediaPipe's iris points
are added on FLAME's eyeballs when it lacks them (`eyes.with_iris_landmarks`). FLAME's UV layout lives in
its texture file (`FLAME_texture.npz` with `vt` [Vt, 2] and `ft` [F, 3]); give it as `uv_path` or put it
beside the model. Every file used is recorded with its sha256 in `HeadModel.source`
(`ggtalker_jax.head.record`).
"""
from __future__ import annotations

import os

import numpy as np

from ggtalker_jax.head.model import HeadModel, from_arrays


def load_flame(path: str, num_shape: int = 100, landmark_embedding: str | None = None,
               uv_path: str | None = None) -> HeadModel:
    from ggtalker_jax.head.eyes import with_iris_landmarks
    from ggtalker_jax.head.flame_io import load_flame_arrays
    from ggtalker_jax.head.landmark_embedding import load_landmark_embedding
    from ggtalker_jax.head.record import file_sha256

    arrays = load_flame_arrays(path, num_shape=num_shape, num_expression=100)
    out = {k: arrays[k] for k in ("v_template", "faces", "shapedirs", "posedirs", "J_regressor", "lbs_weights")}
    out["exprdirs"] = np.asarray(arrays["exprdirs"])[..., :50]          # GGTalker uses FLAME's first 50
    parents = tuple(int(p) for p in np.asarray(arrays["parents"]))
    source = [("model", os.path.abspath(path), file_sha256(path))]
    uv_path = uv_path or os.path.join(os.path.dirname(os.path.abspath(path)), "FLAME_texture.npz")
    if os.path.exists(uv_path):
        with np.load(uv_path, allow_pickle=False) as z:
            vt, ft = np.asarray(z["vt"], np.float32), np.asarray(z["ft"], np.int32)
        vt = vt.copy()
        vt[:, 1] = 1.0 - vt[:, 1]                                         # OpenGL v-up -> image rows
        out["uvs"], out["uv_faces"] = vt, ft
        source.append(("uv", os.path.abspath(uv_path), file_sha256(uv_path)))
    if landmark_embedding:
        out.update(load_landmark_embedding(landmark_embedding, num_faces=len(out["faces"])))
        source.append(("landmark_embedding", os.path.abspath(landmark_embedding), file_sha256(landmark_embedding)))
    model = from_arrays(out, "flame", (), parents, source=source)
    return with_iris_landmarks(model) if landmark_embedding else model

"""A FLAME-shaped head model for tests, built from the open head (no restricted file).

`write_flame_shaped(dir)` writes ``generic_model.pkl`` (a protocol-4 pickle of plain arrays with FLAME's
keys: 300 shape + 100 expression components in ``shapedirs``, ``posedirs`` [V, 3, 36], ``kintree_table``,
...) whose 50 expression components are the open head's mixed by a random rotation (so, like FLAME's,
none of them is a named blink), and ``mediapipe_landmark_embedding.npz`` (FLAME 2023's keys) holding the
open head's landmarks without the irises (FLAME's embedding has none).
"""
import pickle

import numpy as np

from ggtalker_jax.head import mediapipe_points as mp
from ggtalker_jax.head.open_head import build_open_head_arrays


def write_flame_shaped(directory, seed: int = 0, posedirs_scale: float = 0.0):
    """-> (model path, embedding path, mixing matrix [50, 50])."""
    a = build_open_head_arrays()
    rng = np.random.default_rng(seed)
    v = a["v_template"]
    nv = len(v)
    mix, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    shapedirs = np.zeros((nv, 3, 400))
    shapedirs[:, :, :a["shapedirs"].shape[-1]] = a["shapedirs"]
    shapedirs[:, :, 300:350] = np.einsum("vce,ef->vcf", a["exprdirs"], mix)
    model = {"v_template": v.astype(np.float64), "f": a["faces"].astype(np.uint32), "shapedirs": shapedirs,
             "posedirs": posedirs_scale * rng.normal(size=(nv, 3, 36)), "J_regressor": a["J_regressor"].astype(np.float64),
             "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
             "weights": a["lbs_weights"].astype(np.float64)}
    model_path = directory / "generic_model.pkl"
    with open(model_path, "wb") as f:
        pickle.dump(model, f, protocol=4)
    idx = a["lmk_mediapipe_index"]
    keep = ~np.isin(idx, list(mp.IRIS_POINTS))
    emb_path = directory / "mediapipe_landmark_embedding.npz"
    np.savez(emb_path, lmk_face_idx=a["lmk_faces"][keep], lmk_b_coords=a["lmk_bary"][keep], landmark_indices=idx[keep])
    return model_path, emb_path, mix

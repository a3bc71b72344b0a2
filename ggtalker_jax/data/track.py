"""Head tracking: fit the head model to MediaPipe landmarks over a whole clip, in JAX.

Per frame: global rotation, translation, 50 expression coefficients, jaw pose (and eyes stay at rest);
shared over the clip: shape and one focal length. Loss (all frames at once, jit-compiled, optax Adam):
robust (Huber) reprojection error of the model landmarks that correspond to MediaPipe points, weighted
per region (lips and eyes count most, the face contour least), + L2 priors on the coefficients,
+ temporal smoothness (velocity and acceleration) of pose and expression. Frames where no face was found
get zero landmark weight and are bridged by the smoothness terms. Stage 1 fits the rigid pose and focal
length, stage 2 everything.

Only the vertices the landmarks and joints need are skinned (`landmark_submodel`), so a step over a
whole clip costs little.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ggtalker_jax import head as head_lib
from ggtalker_jax.head.model import HeadModel

LIP_POINTS = {61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375,
              78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 95, 88, 178, 87, 14, 317, 402, 318, 324}


@dataclasses.dataclass(frozen=True)
class TrackConfig:
    rigid_steps: int = 250
    full_steps: int = 400
    learning_rate: float = 0.01
    fov_init_degrees: float = 20.0
    huber_delta: float = 1.0          # in percent of the image size
    w_expression: float = 0.02
    w_jaw: float = 0.5
    w_shape: float = 0.01
    w_focal: float = 0.1
    w_velocity: float = 0.5
    w_acceleration: float = 0.5
    w_contour: float = 0.3
    w_lips: float = 2.0


def landmark_submodel(model: HeadModel) -> HeadModel:
    """The head model restricted to the vertices the landmarks and joints use (same landmarks/joints)."""
    faces = np.asarray(model.faces)
    lmk_faces = np.asarray(model.lmk_faces)
    J = np.asarray(model.J_regressor)
    keep = np.unique(np.concatenate([faces[lmk_faces].ravel(), np.flatnonzero(np.abs(J).sum(0) > 0)]))
    remap = -np.ones(model.num_vertices, np.int64)
    remap[keep] = np.arange(len(keep))
    new_faces = remap[faces[lmk_faces]].astype(np.int32)                      # one face per landmark
    posedirs = np.asarray(model.posedirs).reshape(-1, model.num_vertices, 3)[:, keep].reshape(
        np.asarray(model.posedirs).shape[0], -1)
    return HeadModel(
        v_template=jnp.asarray(np.asarray(model.v_template)[keep]), faces=jnp.asarray(new_faces),
        shapedirs=jnp.asarray(np.asarray(model.shapedirs)[keep]), exprdirs=jnp.asarray(np.asarray(model.exprdirs)[keep]),
        posedirs=jnp.asarray(posedirs), J_regressor=jnp.asarray(J[:, keep]),
        lbs_weights=jnp.asarray(np.asarray(model.lbs_weights)[keep]), uvs=model.uvs, uv_faces=model.uv_faces,
        lmk_faces=jnp.arange(len(lmk_faces), dtype=jnp.int32), lmk_bary=model.lmk_bary,
        lmk_mediapipe_index=model.lmk_mediapipe_index, lip_vertices=jnp.zeros((0,), jnp.int32),
        name=model.name, parents=model.parents, expression_names=model.expression_names)


def project(points, focal, size: int):
    """Head-space points [..., 3] -> pixels [..., 2] with the principal point at the image centre."""
    z = jnp.maximum(-points[..., 2], 1e-3)
    return jnp.stack([focal * points[..., 0] / z + size / 2, -focal * points[..., 1] / z + size / 2], -1)


def _weights(model: HeadModel, config: TrackConfig) -> np.ndarray:
    from ggtalker_jax.head.open_head import FACE_OVAL
    idx = np.asarray(model.lmk_mediapipe_index)
    w = np.ones(len(idx), np.float32)
    w[np.isin(idx, list(FACE_OVAL))] = config.w_contour
    w[np.isin(idx, list(LIP_POINTS))] = config.w_lips
    return w


def track_landmarks(model: HeadModel, landmarks, found, image_size: int, config: TrackConfig = TrackConfig(),
                    progress: bool = False) -> dict:
    """Fits the head model to MediaPipe landmarks.

    landmarks [T, 478, >=2] in pixels of the (square) image of `image_size`; found [T] bool.
    Returns dict of numpy arrays: shape [S], expression [T, 50], jaw_pose [T, 3], neck_pose [T, 3],
    eye_pose [T, 6], global_rot [T, 3], translation [T, 3], K [3, 3], landmark_error_px [T], plus
    `seconds`.
    """
    landmarks = np.asarray(landmarks, np.float32)
    found = np.asarray(found, bool)
    if landmarks.ndim != 3 or landmarks.shape[1] != 478:
        raise ValueError(f"track_landmarks: landmarks must be [T, 478, 2|3], got {landmarks.shape}")
    if not found.any():
        raise ValueError("track_landmarks: no frame has a face; nothing to track")
    idx = np.asarray(model.lmk_mediapipe_index)
    if len(idx) == 0:
        raise ValueError(f"head model {model.name!r} has no MediaPipe landmark embedding; pass one (FLAME: "
                         "mediapipe_landmark_embedding.npz)")
    num = landmarks.shape[0]
    target = jnp.asarray(np.nan_to_num(landmarks[:, idx, :2]) / image_size * 100.0)   # percent of the image
    frame_w = jnp.asarray(found.astype(np.float32))
    point_w = jnp.asarray(_weights(model, config))
    sub = landmark_submodel(model)
    f0 = 0.5 * image_size / np.tan(0.5 * np.deg2rad(config.fov_init_degrees))
    # Initial distance from the landmark spread vs the template's.
    spread_px = np.nanmedian(np.nanstd(landmarks[found][:, idx, :2], axis=1).mean(-1))
    spread_m = float(np.std(np.asarray(head_lib.forward(sub).landmarks)[:, :2], axis=0).mean())
    dist = f0 * spread_m / max(spread_px, 1e-3)
    centre = np.nanmean(landmarks[found][:, idx, :2], axis=(0, 1)) - image_size / 2
    init_t = np.array([centre[0] * dist / f0, -centre[1] * dist / f0, -dist], np.float32)
    params = {"rot": jnp.zeros((num, 3)), "trans": jnp.tile(jnp.asarray(init_t), (num, 1)),
              "log_focal": jnp.asarray(np.log(f0), jnp.float32), "shape": jnp.zeros((sub.num_shape,)),
              "expr": jnp.zeros((num, 50)), "jaw": jnp.zeros((num, 3))}

    def residuals(p):
        out = head_lib.forward(sub, shape=p["shape"], expression=p["expr"], jaw_pose=p["jaw"], global_rot=p["rot"],
                               translation=p["trans"])
        pix = project(out.landmarks, jnp.exp(p["log_focal"]), image_size) / image_size * 100.0
        return pix - target                                                   # [T, L, 2]

    def smooth(x):
        vel = jnp.mean(jnp.square(x[1:] - x[:-1])) if num > 1 else 0.0
        acc = jnp.mean(jnp.square(x[2:] - 2 * x[1:-1] + x[:-2])) if num > 2 else 0.0
        return config.w_velocity * vel + config.w_acceleration * acc

    def loss_fn(p, full: bool):
        r = residuals(p)
        err = jnp.sqrt(jnp.sum(r * r, -1) + 1e-9)
        d = config.huber_delta
        hub = jnp.where(err < d, 0.5 * err ** 2, d * (err - d * 0.5))
        data = jnp.sum(hub * point_w[None] * frame_w[:, None]) / (jnp.sum(frame_w) * jnp.sum(point_w))
        reg = config.w_focal * jnp.square(p["log_focal"] - np.log(f0))
        reg += smooth(p["rot"] * 100.0) + smooth(p["trans"] * 100.0)
        if full:
            reg += (config.w_expression * jnp.mean(jnp.square(p["expr"])) + config.w_shape * jnp.mean(jnp.square(p["shape"]))
                    + config.w_jaw * jnp.mean(jnp.square(p["jaw"][:, 1:])) + smooth(p["expr"]) + smooth(p["jaw"] * 10.0))
        return data + reg

    t0 = time.perf_counter()
    for full, steps, groups in ((False, config.rigid_steps, ("rot", "trans", "log_focal")),
                                (True, config.full_steps, tuple(params))):
        tx = optax.multi_transform({"on": optax.adam(config.learning_rate), "off": optax.set_to_zero()},
                                   {k: ("on" if k in groups else "off") for k in params})
        opt = tx.init(params)

        @jax.jit
        def step(p, o, full=full, tx=tx):
            loss, g = jax.value_and_grad(loss_fn)(p, full)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, loss

        for _ in range(steps):
            params, opt, loss = step(params, opt)
    r = np.asarray(residuals(params)) / 100.0 * image_size
    err_px = np.sqrt((r ** 2).sum(-1)).mean(-1)
    focal = float(np.exp(params["log_focal"]))
    K = np.array([[focal, 0, image_size / 2], [0, focal, image_size / 2], [0, 0, 1]], np.float32)
    return {"shape": np.asarray(params["shape"]), "expression": np.asarray(params["expr"]),
            "jaw_pose": np.asarray(params["jaw"]), "neck_pose": np.zeros((num, 3), np.float32),
            "eye_pose": np.zeros((num, 6), np.float32), "global_rot": np.asarray(params["rot"]),
            "translation": np.asarray(params["trans"]), "K": K, "landmark_error_px": err_px.astype(np.float32),
            "seconds": time.perf_counter() - t0, "final_loss": float(loss)}


def track_dataset(dataset_dir: str, head: str = "open", config: TrackConfig = TrackConfig()) -> dict:
    """Tracks a prepared dataset in place: writes tracking.npz and tracking stats into meta.json."""
    from ggtalker_jax.data.dataset import PreparedDataset
    data = PreparedDataset(dataset_dir)
    model = head_lib.load(head)
    result = track_landmarks(model, data.landmarks, data.landmarks_found, data.size, config)
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    tmp = os.path.join(dataset_dir, ".tracking.tmp.npz")
    np.savez(tmp, head_model=np.array(head), **arrays)
    os.replace(tmp, os.path.join(dataset_dir, "tracking.npz"))
    meta_path = os.path.join(dataset_dir, "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    err = result["landmark_error_px"]
    meta["tracking"] = {"head_model": head, "landmark_error_px_mean": float(err.mean()),
                        "landmark_error_px_median": float(np.median(err)), "seconds": round(result["seconds"], 2),
                        "ms_per_frame": 1000 * result["seconds"] / len(err)}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return result


def draw_mesh_overlay(frame, vertices, faces, K, colour=(0, 255, 0)) -> np.ndarray:
    """Draws the mesh's front-facing edges (head-space vertices [V, 3]) over an RGB uint8 frame."""
    import cv2
    v = np.asarray(vertices)
    p = (v * np.array([1, -1, -1])) @ np.asarray(K).T
    xy = p[:, :2] / p[:, 2:]
    img = np.ascontiguousarray(frame.copy())
    tri = np.asarray(faces)
    n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    facing = np.sum(n * -v[tri].mean(1), -1) > 0
    for a, b, c in tri[facing][::3]:
        pts = xy[[a, b, c]].astype(np.int32)
        cv2.polylines(img, [pts], True, colour, 1, lineType=cv2.LINE_AA)
    return img

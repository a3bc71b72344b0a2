"""Head tracking: fit the head model to MediaPipe landmarks over a whole clip, in JAX.

Per frame: global rotation, translation, 50 expression coefficients, jaw pose, eye rotations (gaze, from
the iris landmarks 468-477), blink amounts (from the eyelid landmarks, along the model's blink directions,
`ggtalker_jax.head.eyes.blink_basis`) and the neck pose; shared over the clip: shape and one focal length.
Loss (all frames at once, jit-compiled, optax Adam): robust (Huber) reprojection error of the model
landmarks that correspond to MediaPipe points, weighted per region (lips and eyelids count most, the face
contour least; the irises only while the eye is open), + L2 priors on the coefficients (weak on blinks,
strong on eye roll and on the two eyes pointing differently), + temporal smoothness (velocity and
acceleration) of pose and expression. Frames where no face was found get zero landmark weight and are
bridged by the smoothness terms. Stage 1 fits the rigid pose and focal length, stage 2 everything.

Neck. Landmarks on the face only see the head's total rotation; how it splits between the body (global
rotation, about the root joint) and the neck is a prior: the body rotation is the head rotation smoothed
over `TrackConfig.neck_split_seconds` (slow sway), the neck carries the rest (nods, turns), with the
translation corrected so every face vertex stays where it was (exact for vertices skinned to the neck and
its children; when landmarks sit on vertices partly skinned to the root, or the model has pose
correctives, everything but the body rotation is refined for a few steps afterwards).

Only the vertices the landmarks and joints need are skinned (`landmark_submodel`), so a step over a
whole clip costs little.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ggtalker_jax import head as head_lib
from ggtalker_jax.head import eyes as eyes_lib
from ggtalker_jax.head import mediapipe_points as mp
from ggtalker_jax.constants import EXPR_DIM
from ggtalker_jax.head.model import HeadModel

log = logging.getLogger(__name__)

LIP_POINTS = set(mp.LIP_POINTS)


@dataclasses.dataclass(frozen=True)
class TrackConfig:
    rigid_steps: int = 250
    full_steps: int = 400
    refine_steps: int = 100           # after the neck split (see the module docstring)
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
    w_eyelids: float = 2.0
    w_iris: float = 2.0
    w_blink: float = 0.002            # blinks are cheap: the lids may close fully
    w_blink_negative: float = 0.2     # opening wider than the template is what eye_wide components are for
    blink_smoothness: float = 0.01    # x the pose smoothness: blinks take 3-10 frames
    w_eye: float = 0.01               # gaze prior (radians^2)
    w_eye_roll: float = 10.0          # eyes do not roll about their gaze axis
    w_eye_vergence: float = 1.0       # both eyes look (nearly) the same way
    w_eye_velocity: float = 0.05
    neck_split_seconds: float = 1.0   # body rotation = head rotation smoothed over this (0: no neck pose)


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
        name=model.name, parents=model.parents, expression_names=model.expression_names, source=model.source)


def project(points, focal, size: int):
    """Head-space points [..., 3] -> pixels [..., 2] with the principal point at the image centre."""
    z = jnp.maximum(-points[..., 2], 1e-3)
    return jnp.stack([focal * points[..., 0] / z + size / 2, -focal * points[..., 1] / z + size / 2], -1)


def _weights(model: HeadModel, config: TrackConfig) -> np.ndarray:
    idx = np.asarray(model.lmk_mediapipe_index)
    w = np.ones(len(idx), np.float32)
    w[np.isin(idx, list(mp.FACE_OVAL))] = config.w_contour
    w[np.isin(idx, list(LIP_POINTS))] = config.w_lips
    w[np.isin(idx, list(mp.EYE_POINTS))] = config.w_eyelids
    w[np.isin(idx, list(mp.IRIS_POINTS))] = config.w_iris
    return w


def eye_openness(landmarks) -> np.ndarray:
    """Observed lid opening per eye [T, 2] (left, right): mean upper-to-lower lid distance over the eye's
    width, from MediaPipe landmarks [T, 478, >=2] (NaN where not found)."""
    lm = np.asarray(landmarks, np.float32)[..., :2]
    out = []
    for pairs, upper in ((mp.LEFT_LID_PAIRS, mp.LEFT_EYE_UPPER), (mp.RIGHT_LID_PAIRS, mp.RIGHT_EYE_UPPER)):
        u, lo = [a for a, _ in pairs], [b for _, b in pairs]
        gap = np.linalg.norm(lm[:, u] - lm[:, lo], axis=-1).mean(-1)
        width = np.linalg.norm(lm[:, upper[0]] - lm[:, upper[-1]], axis=-1)
        out.append(gap / np.maximum(width, 1e-6))
    return np.stack(out, -1)


def _iris_trust(landmarks, found) -> np.ndarray:
    """[T, 2] in [0, 1]: how much to trust each eye's iris landmarks (0 while the lids are nearly shut)."""
    open_ = eye_openness(landmarks)
    ref = np.nanpercentile(open_[found], 90, axis=0) if found.any() else np.ones(2)
    rel = open_ / np.maximum(ref, 1e-6)
    return np.nan_to_num(np.clip((rel - 0.3) / 0.4, 0.0, 1.0))


def _split_neck(model: HeadModel, params: dict, fps: float, seconds: float) -> dict:
    """Moves the fast part of the head rotation from the global rotation into the neck (module docstring)."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.spatial.transform import Rotation

    rot = np.asarray(params["rot"], np.float64)
    R_tot = Rotation.from_rotvec(rot) * Rotation.from_rotvec(np.asarray(params["neck"], np.float64))
    body = gaussian_filter1d(rot, sigma=max(seconds * fps, 1e-3), axis=0, mode="nearest") if len(rot) > 1 else rot
    R_body = Rotation.from_rotvec(body)
    neck = (R_body.inv() * R_tot).as_rotvec()
    rest = head_lib.forward(model, shape=params["shape"], expression=params["expr_total"],
                            jaw_pose=params["jaw_total"])
    joints = np.asarray(rest.joints, np.float64)                                       # [T, J, 3] unposed
    lever = joints[:, 1] - joints[:, 0]
    shift = R_tot.apply(lever) - R_body.apply(lever)
    out = dict(params)
    out.update(rot=jnp.asarray(body, jnp.float32), neck=jnp.asarray(neck, jnp.float32),
               trans=jnp.asarray(np.asarray(params["trans"]) + shift, jnp.float32))
    return out


def track_landmarks(model: HeadModel, landmarks, found, image_size: int, config: TrackConfig = TrackConfig(),
                    progress: bool = False, fps: float = 25.0) -> dict:
    """Fits the head model to MediaPipe landmarks.

    landmarks [T, 478, >=2] in pixels of the (square) image of `image_size`; found [T] bool; fps: the
    clip's frame rate (for the neck split).
    Returns dict of numpy arrays: shape [S], expression [T, 50] (blinks included), jaw_pose [T, 3],
    neck_pose [T, 3], eye_pose [T, 6] (left, right), blink [T, 2] (left, right; 1 = closed), global_rot
    [T, 3], translation [T, 3], K [3, 3], landmark_error_px [T], plus `seconds`, `final_loss`.
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
                         "--landmark_embedding mediapipe_landmark_embedding.npz)")
    num = landmarks.shape[0]
    target = jnp.asarray(np.nan_to_num(landmarks[:, idx, :2]) / image_size * 100.0)   # percent of the image
    frame_w = found.astype(np.float32)
    point_w = _weights(model, config)
    trust = _iris_trust(landmarks, found)                                               # [T, 2]
    w = frame_w[:, None] * point_w[None]
    for side, iris in ((0, mp.LEFT_IRIS), (1, mp.RIGHT_IRIS)):
        w[:, np.isin(idx, iris)] *= trust[:, side:side + 1]
    weights = jnp.asarray(w)
    data_norm = float(frame_w.sum() * point_w.sum())
    sub = landmark_submodel(model)
    basis = eyes_lib.blink_basis(model)
    blink_dirs = jnp.asarray(basis.directions if basis is not None else np.zeros((2, EXPR_DIM), np.float32))
    f0 = 0.5 * image_size / np.tan(0.5 * np.deg2rad(config.fov_init_degrees))
    # Initial distance from the landmark spread vs the template's.
    spread_px = np.nanmedian(np.nanstd(landmarks[found][:, idx, :2], axis=1).mean(-1))
    spread_m = float(np.std(np.asarray(head_lib.forward(sub).landmarks)[:, :2], axis=0).mean())
    dist = f0 * spread_m / max(spread_px, 1e-3)
    centre = np.nanmean(landmarks[found][:, idx, :2], axis=(0, 1)) - image_size / 2
    init_t = np.array([centre[0] * dist / f0, -centre[1] * dist / f0, -dist], np.float32)
    zeros = lambda *s: jnp.zeros(s, jnp.float32)
    params = {"rot": zeros(num, 3), "trans": jnp.tile(jnp.asarray(init_t), (num, 1)),
              "log_focal": jnp.asarray(np.log(f0), jnp.float32), "shape": zeros(sub.num_shape),
              "expr": zeros(num, 50), "jaw": zeros(num, 3), "neck": zeros(num, 3), "eyes": zeros(num, 6),
              "blink": zeros(num, 2)}

    def expression53(p):
        return jnp.concatenate([p["expr"], p["jaw"]], -1) + p["blink"] @ blink_dirs

    def residuals(p):
        e53 = expression53(p)
        out = head_lib.forward(sub, shape=p["shape"], expression=e53[:, :50], jaw_pose=e53[:, 50:],
                               neck_pose=p["neck"], eye_pose=p["eyes"], global_rot=p["rot"], translation=p["trans"])
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
        data = jnp.sum(hub * weights) / data_norm
        reg = config.w_focal * jnp.square(p["log_focal"] - np.log(f0))
        reg += smooth(p["rot"] * 100.0) + smooth(p["trans"] * 100.0) + smooth(p["neck"] * 100.0)
        if full:
            eyes, blink = p["eyes"], p["blink"]
            reg += (config.w_expression * jnp.mean(jnp.square(p["expr"])) + config.w_shape * jnp.mean(jnp.square(p["shape"]))
                    + config.w_jaw * jnp.mean(jnp.square(p["jaw"][:, 1:])) + smooth(p["expr"]) + smooth(p["jaw"] * 10.0))
            reg += (config.w_blink * jnp.mean(jnp.square(blink))
                    + config.w_blink_negative * jnp.mean(jnp.square(jnp.minimum(blink, 0.0))) + config.blink_smoothness * smooth(blink))
            reg += (config.w_eye * jnp.mean(jnp.square(eyes)) + config.w_eye_roll * jnp.mean(jnp.square(eyes[:, 2::3]))
                    + config.w_eye_vergence * jnp.mean(jnp.square(eyes[:, :3] - eyes[:, 3:]))
                    + config.w_eye_velocity * jnp.mean(jnp.square(eyes[1:] - eyes[:-1])))
        return data + reg

    def run(params, full, steps, groups):
        tx = optax.multi_transform({"on": optax.adam(config.learning_rate), "off": optax.set_to_zero()},
                                   {k: ("on" if k in groups else "off") for k in params})
        opt = tx.init(params)

        @jax.jit
        def step(p, o):
            loss, g = jax.value_and_grad(loss_fn)(p, full)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, loss

        loss = jnp.nan
        for _ in range(steps):
            params, opt, loss = step(params, opt)
        return params, loss

    t0 = time.perf_counter()
    per_frame = ("rot", "trans", "expr", "jaw", "eyes", "blink")
    params, loss = run(params, False, config.rigid_steps, ("rot", "trans", "log_focal"))
    params, loss = run(params, True, config.full_steps, (*per_frame, "log_focal", "shape"))
    if config.neck_split_seconds > 0:
        e53 = expression53(params)
        params = _split_neck(sub, {**params, "expr_total": e53[:, :50], "jaw_total": e53[:, 50:]}, fps,
                             config.neck_split_seconds)
        on_root = np.asarray(sub.lbs_weights)[np.asarray(sub.faces).ravel(), 0].max() > 1e-4
        if (on_root or np.abs(np.asarray(model.posedirs)).max() > 0) and config.refine_steps:
            params, loss = run(params, True, config.refine_steps, ("trans", "expr", "jaw", "eyes", "blink", "neck"))
    r = np.asarray(residuals(params)) / 100.0 * image_size
    err_px = np.sqrt((r ** 2).sum(-1)).mean(-1)
    focal = float(np.exp(params["log_focal"]))
    K = np.array([[focal, 0, image_size / 2], [0, focal, image_size / 2], [0, 0, 1]], np.float32)
    e53 = np.asarray(expression53(params))
    return {"shape": np.asarray(params["shape"]), "expression": e53[:, :50], "jaw_pose": e53[:, 50:],
            "neck_pose": np.asarray(params["neck"]), "eye_pose": np.asarray(params["eyes"]),
            "blink": eyes_lib.blink_amount(basis, e53), "global_rot": np.asarray(params["rot"]),
            "translation": np.asarray(params["trans"]), "K": K, "landmark_error_px": err_px.astype(np.float32),
            "seconds": time.perf_counter() - t0, "final_loss": float(loss)}


def track_dataset(dataset_dir: str, head: str | HeadModel = "open", config: TrackConfig = TrackConfig(),
                  landmark_embedding: str | None = None) -> dict:
    """Tracks a prepared dataset in place: writes tracking.npz (the parameters of `track_landmarks`, the
    head model's name as ``head_model`` and its record as ``head_model_record``, a JSON string; see
    `ggtalker_jax.head.record`) and tracking stats + the record into meta.json (``tracking``).
    `head`: "open", a FLAME model path (then `landmark_embedding` is its MediaPipe embedding .npz), or a
    loaded HeadModel."""
    from ggtalker_jax.data.dataset import PreparedDataset
    data = PreparedDataset(dataset_dir)
    if isinstance(head, HeadModel):
        model, head_name = head, head.name
    else:
        model, head_name = head_lib.load(head, landmark_embedding=landmark_embedding), str(head)
    result = track_landmarks(model, data.landmarks, data.landmarks_found, data.size, config, fps=data.fps)
    record = head_lib.head_model_record(model)
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    tmp = os.path.join(dataset_dir, ".tracking.tmp.npz")
    np.savez(tmp, head_model=np.array(head_name), head_model_record=np.array(json.dumps(record)), **arrays)
    os.replace(tmp, os.path.join(dataset_dir, "tracking.npz"))
    meta_path = os.path.join(dataset_dir, "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    err = result["landmark_error_px"]
    meta["tracking"] = {"head_model": record, "landmark_error_px_mean": float(err.mean()),
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

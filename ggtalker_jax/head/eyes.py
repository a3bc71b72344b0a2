"""Eyes for every head model: iris landmarks on the eyeballs, blinks as directions in the 53-number
expression space, and gaze (eye_pose) at render time.

Blinks. A blink is one direction per eye in the expression space (`BlinkBasis`): for a model with named
blink components (the open head's "blink_left" / "blink_right") it is that component; for a model without
names (FLAME) it is derived from the model itself: the combination of the 50 expression components whose
effect moves the upper-lid landmarks onto the lower-lid ones (closing the template's opening exactly, in
the image plane) while the eyeballs and every mesh vertex away from that eye (the other eye included)
move as little as possible (regularised least squares). The blink amount of an expression is read back
with `readout` (1 = closed, 0 = as the template; for derived directions it is measured on the lids: how
much of their opening an expression closes), and `set_blinks` replaces it:
e' = e + (b - readout e) directions.

Render-time functions (numpy, [T, ...] per output frame):
  blink_curve(T, fps, rate_per_min, seed)          -> [T] in [0, 1] (random blinks at a rate)
  set_blinks(basis, expression53, amount)          -> [T, 53] (amount [T] both eyes, or [T, 2] left/right)
  blink_amount(basis, expression53)                -> [T, 2] (e.g. of the tracked video)
  gaze_eye_pose(mode, model, T, ...)               -> eye_pose [T, 6]: "video" | "camera" | FILE
eye_pose is (left eye, right eye) axis-angle in the parent (neck) frame; the subject's left eye is the
head-space x > 0 one (joint "eye_left"); at zero rotation the eyes look along +z.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from ggtalker_jax.head import mediapipe_points as mp
from ggtalker_jax.constants import EXPR_DIM, NUM_EXPRESSION
from ggtalker_jax.head.model import JOINT_NAMES, HeadModel

log = logging.getLogger(__name__)

EYE_JOINTS = {"left": JOINT_NAMES.index("eye_left"), "right": JOINT_NAMES.index("eye_right")}
IRIS_ANGLE_RADIANS = 0.5      # iris rim seen from the eyeball centre (~12 mm eyeball, ~6 mm iris radius)


# ---------------------------------------------------------------------------------------------- landmarks
def _landmark_exprdirs(model: HeadModel) -> tuple[np.ndarray, np.ndarray]:
    """Rest landmark positions [L, 3] and their expression derivatives [L, 3, 50] (landmarks are linear
    in the expression at rest pose)."""
    faces = np.asarray(model.faces)[np.asarray(model.lmk_faces)]                     # [L, 3]
    bary = np.asarray(model.lmk_bary, np.float64)
    pos = np.einsum("lk,lkc->lc", bary, np.asarray(model.v_template, np.float64)[faces])
    dirs = np.einsum("lk,lkce->lce", bary, np.asarray(model.exprdirs, np.float64)[faces])
    return pos, dirs


def with_iris_landmarks(model: HeadModel) -> HeadModel:
    """The model with MediaPipe's iris points (468-477) embedded on its eyeballs when the landmark
    embedding lacks them (FLAME's MediaPipe embedding has no irises).

    Eyeball vertices are those skinned mostly (> 0.5) to an eye joint; the iris centre is the eyeball
    vertex whose direction from the eye joint is the most frontal (+z), the ring points the vertices
    closest to the directions IRIS_ANGLE_RADIANS off the centre towards +x, +y, -x, -y. Models without
    eyeball vertices are returned unchanged."""
    index = [int(i) for i in np.asarray(model.lmk_mediapipe_index)]
    v = np.asarray(model.v_template, np.float64)
    faces = np.asarray(model.faces)
    weights = np.asarray(model.lbs_weights)
    joints = np.asarray(model.J_regressor, np.float64) @ v
    new_faces, new_bary, new_index = [], [], []
    for side, iris in (("left", mp.LEFT_IRIS), ("right", mp.RIGHT_IRIS)):
        if all(i in index for i in iris):
            continue
        j = EYE_JOINTS[side]
        ball = np.flatnonzero(weights[:, j] > 0.5)
        if len(ball) < 5:
            continue
        d = v[ball] - joints[j]
        d /= np.linalg.norm(d, axis=-1, keepdims=True) + 1e-12
        s, c = np.sin(IRIS_ANGLE_RADIANS), np.cos(IRIS_ANGLE_RADIANS)
        targets = [(0, 0, 1), (s, 0, c), (0, s, c), (-s, 0, c), (0, -s, c)]
        picked = [int(ball[np.argmax(d @ np.asarray(t))]) for t in targets]
        if len(set(picked)) < 5:                     # too coarse an eyeball for a ring: centre only
            picked, iris = picked[:1], iris[:1]
        for vert, mp_index in zip(picked, iris):
            if mp_index in index:
                continue
            f = int(np.flatnonzero((faces == vert).any(-1))[0])
            new_faces.append(f)
            new_bary.append((faces[f] == vert).astype(np.float32))
            new_index.append(mp_index)
    if not new_index:
        return model
    import jax.numpy as jnp
    return model.replace(
                   lmk_faces=jnp.concatenate([model.lmk_faces, jnp.asarray(new_faces, jnp.int32)]),
                   lmk_bary=jnp.concatenate([model.lmk_bary, jnp.asarray(np.stack(new_bary), jnp.float32)]),
                   lmk_mediapipe_index=jnp.concatenate([model.lmk_mediapipe_index, jnp.asarray(new_index, jnp.int32)]))


# ------------------------------------------------------------------------------------------------- blinks
@dataclasses.dataclass(frozen=True)
class BlinkBasis:
    """directions [2, 53]: the expression change that closes the (left, right) eye from the template's
    opening (a zero row when that eye cannot blink); readout [2, 53] with readout @ directions.T = I on the
    eyes that can; kind "named" (the model's blink components) or "derived" (from its lid landmarks);
    closure [2]: fraction of the lid opening a unit blink closes (1 for named components, by
    construction for derived ones up to the least-squares fit)."""
    directions: np.ndarray
    readout: np.ndarray
    kind: str
    closure: np.ndarray

    @property
    def can_blink(self) -> np.ndarray:
        return np.abs(self.directions).sum(-1) > 0


def _named_basis(model: HeadModel) -> BlinkBasis | None:
    names = list(model.expression_names)
    if "blink_left" not in names or "blink_right" not in names:
        return None
    d = np.zeros((2, EXPR_DIM), np.float32)
    d[0, names.index("blink_left")] = 1.0
    d[1, names.index("blink_right")] = 1.0
    return BlinkBasis(d, d.copy(), "named", np.ones(2, np.float32))


def _derived_basis(model: HeadModel, rest_weight: float = 10.0, ridge: float = 1e-4,
                   region: float = 0.8) -> BlinkBasis | None:
    index = {int(m): i for i, m in enumerate(np.asarray(model.lmk_mediapipe_index))}
    pairs = {side: [(index[u], index[lo]) for u, lo in p if u in index and lo in index]
             for side, p in (("left", mp.LEFT_LID_PAIRS), ("right", mp.RIGHT_LID_PAIRS))}
    if not any(pairs.values()):
        return None
    pos, dirs3 = _landmark_exprdirs(model)
    dirs = dirs3[:, :2]                                                              # lids: image-plane motion
    verts = np.asarray(model.v_template, np.float64)
    vdirs = np.asarray(model.exprdirs, np.float64)                                   # [V, 3, 50]
    scale = np.sqrt(np.mean(np.sum(vdirs ** 2, axis=(0, 1)))) + 1e-12                # typical motion / coeff
    weights = np.asarray(model.lbs_weights)
    eyeball = (weights[:, EYE_JOINTS["left"]] > 0.5) | (weights[:, EYE_JOINTS["right"]] > 0.5)
    directions = np.zeros((2, EXPR_DIM))
    gap_closure = np.zeros((2, EXPR_DIM))                    # linear: expression -> fraction of the lids' opening closed
    closure = np.zeros(2)
    for row, side in enumerate(("left", "right")):
        if not pairs[side]:
            continue
        blocks, target = [], []
        for other, p in pairs.items():                       # this eye closes, the other keeps its opening
            if not p:
                continue
            u, lo = np.array([a for a, _ in p]), np.array([b for _, b in p])
            gap = pos[u, :2] - pos[lo, :2]                                           # [P, 2]
            w = 1.0 / np.sqrt(len(p))
            blocks.append(w * (dirs[u] - dirs[lo]).reshape(-1, NUM_EXPRESSION))
            target.append(w * (-gap if other == side else 0 * gap).reshape(-1))
        # Every mesh vertex away from this eye (the other eye included) and the eyeballs stay where they are.
        lids = pos[[i for pair in pairs[side] for i in pair]]
        width = np.ptp(lids[:, 0])
        far = (np.linalg.norm(verts - lids.mean(0), axis=-1) > region * max(width, 1e-6)) | eyeball
        w = rest_weight / np.sqrt(max(far.sum(), 1))
        blocks.append(w * vdirs[far].reshape(-1, NUM_EXPRESSION))
        target.append(np.zeros(3 * far.sum()))
        blocks.append(np.sqrt(ridge) * scale * np.eye(NUM_EXPRESSION))
        target.append(np.zeros(NUM_EXPRESSION))
        e = np.linalg.lstsq(np.concatenate(blocks), np.concatenate(target), rcond=None)[0]
        u, lo = np.array([a for a, _ in pairs[side]]), np.array([b for _, b in pairs[side]])
        gap = pos[u, :2] - pos[lo, :2]
        gap_closure[row, :NUM_EXPRESSION] = -np.einsum("pce,pc->e", dirs[u] - dirs[lo], gap) / max(np.sum(gap * gap), 1e-18)
        closure[row] = gap_closure[row] @ np.concatenate([e, np.zeros(EXPR_DIM - NUM_EXPRESSION)])
        directions[row, :NUM_EXPRESSION] = e
    ok = np.abs(directions).sum(-1) > 0
    # Read blinks from what the lids do (expression changes that leave the lids alone are no blink),
    # normalised so that readout @ directions.T = I.
    readout = np.zeros_like(directions)
    G = gap_closure[ok]
    readout[ok] = np.linalg.solve(G @ directions[ok].T, G)
    for side, c, k in zip(("left", "right"), closure, ok):
        if k and c < 0.7:
            log.warning("head model %r: its expression components close the %s eye only %.0f%% (blinks will "
                        "be partial)", model.name, side, 100 * c)
    return BlinkBasis(directions.astype(np.float32), readout.astype(np.float32), "derived",
                      closure.astype(np.float32))


def blink_basis(model: HeadModel) -> BlinkBasis | None:
    """The model's blink directions: its named blink components, else derived from its eyelid landmarks
    (MediaPipe's upper/lower lid points in its landmark embedding); None when neither exists."""
    return _named_basis(model) or _derived_basis(model)


def blink_amount(basis: BlinkBasis | None, expression53) -> np.ndarray:
    """Blink amount [T, 2] (left, right; 1 = closed) of expressions [T, 53]; zeros without a basis."""
    e = np.asarray(expression53, np.float32)
    if basis is None:
        return np.zeros(e.shape[:-1] + (2,), np.float32)
    return e @ basis.readout.T


def set_blinks(basis: BlinkBasis | None, expression53, amount) -> np.ndarray:
    """Expressions [T, 53] with their blink amount replaced by `amount` ([T] for both eyes or [T, 2]
    left/right); unchanged without a basis (a model that cannot blink)."""
    e = np.array(expression53, np.float32)
    if basis is None:
        return e
    a = np.asarray(amount, np.float32)
    if a.ndim == e.ndim - 1:
        a = np.stack([a, a], -1)
    if a.shape != e.shape[:-1] + (2,):
        raise ValueError(f"set_blinks: amount must be [T] or [T, 2] for expressions {e.shape}, got {a.shape}")
    a = np.where(basis.can_blink, a, 0.0)
    return e + (a - blink_amount(basis, e)) @ basis.directions


def blink_curve(num_frames: int, fps: float, rate_per_min: float, seed: int = 0,
                blink_seconds: float = 0.3) -> np.ndarray:
    """[T] blink amounts in [0, 1]: blinks at random times (exponential gaps, mean 60 / rate s, at least
    two blink durations apart), each a smooth close-open pulse of `blink_seconds` (raised cosine)."""
    if rate_per_min < 0:
        raise ValueError(f"--blink_rate must be >= 0 blinks per minute, got {rate_per_min}")
    curve = np.zeros(int(num_frames), np.float32)
    if rate_per_min == 0 or num_frames == 0:
        return curve
    rng = np.random.default_rng(seed)
    mean_gap, dur = 60.0 / rate_per_min, max(blink_seconds, 2.0 / fps)
    t_frames = np.arange(num_frames) / fps
    t = rng.uniform(0, mean_gap)
    while t < num_frames / fps:
        phase = (t_frames - t) / dur
        inside = np.abs(phase) < 0.5
        curve[inside] = np.maximum(curve[inside], 0.5 * (1 + np.cos(2 * np.pi * phase[inside])))
        t += max(2 * dur, rng.exponential(mean_gap))
    return curve


# --------------------------------------------------------------------------------------------------- gaze
def _rodrigues_np(r: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(r, axis=-1, keepdims=True)[..., None]
    k = r / np.maximum(theta[..., 0], 1e-12)
    K = np.zeros(r.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K = K - np.swapaxes(K, -1, -2)
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * (K @ K)


def look_at_eye_pose(model: HeadModel, target, global_rot, translation, neck_pose=None, jaw_pose=None,
                     shape=None, expression53=None) -> np.ndarray:
    """eye_pose [T, 6] turning each eye (shortest rotation from +z, no roll) to look at `target` ([3] or
    [T, 3], head space; the camera is at the origin) for the poses global_rot / translation / neck_pose [T, 3]."""
    from ggtalker_jax.head.model import forward
    rot = np.asarray(global_rot, np.float64)
    num = rot.shape[0]
    neck = np.zeros((num, 3)) if neck_pose is None else np.asarray(neck_pose, np.float64)
    kw = {}
    if expression53 is not None:
        e53 = np.asarray(expression53, np.float32)
        kw = {"expression": e53[:, :NUM_EXPRESSION], "jaw_pose": e53[:, NUM_EXPRESSION:]}
    elif jaw_pose is not None:
        kw = {"jaw_pose": np.asarray(jaw_pose, np.float32)}
    joints = np.asarray(forward(model, shape=shape, global_rot=rot.astype(np.float32),
                                translation=np.asarray(translation, np.float32), neck_pose=neck.astype(np.float32),
                                **kw).joints, np.float64)                                   # [T, J, 3]
    local = {0: rot, 1: neck}
    world = {}
    for j, parent in enumerate(model.parents[:2]):
        R = _rodrigues_np(local[j])
        world[j] = R if parent < 0 else world[parent] @ R
    target = np.broadcast_to(np.asarray(target, np.float64), (num, 3))
    out = np.zeros((num, 6), np.float32)
    for col, side in enumerate(("left", "right")):
        j = EYE_JOINTS[side]
        parent = model.parents[j]
        if parent not in world:
            raise ValueError(f"look_at_eye_pose: eye joint {j} of {model.name!r} hangs from joint {parent}, "
                             "not the root or the neck")
        d = target - joints[:, j]
        d /= np.linalg.norm(d, axis=-1, keepdims=True) + 1e-12
        u = np.einsum("tba,tb->ta", world[parent], d)                                  # R_parent^T d
        axis = np.stack([-u[:, 1], u[:, 0], np.zeros(num)], -1)                       # z x u
        s = np.linalg.norm(axis, axis=-1, keepdims=True)
        angle = np.arctan2(s, u[:, 2:3])
        out[:, 3 * col:3 * col + 3] = axis / np.maximum(s, 1e-12) * angle
    return out


def load_gaze_file(path: str, num_frames: int) -> np.ndarray:
    """eye_pose [num_frames, 6] from an .npz (key eye_pose) or .npy of [T, 6] (left, right axis-angle) or
    [T, 3] (both eyes), walked forward then backward to num_frames."""
    fix = "give an .npz with eye_pose [T, 6] (left, right axis-angle; [T, 3] for both eyes) or such an .npy"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--gaze {path}: no such file; use video, camera, or {fix}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as z:
                if "eye_pose" not in z.files:
                    raise ValueError(f"--gaze {path}: no array 'eye_pose' (present: {z.files}); {fix}")
                arr = np.asarray(z["eye_pose"])
        else:
            arr = np.asarray(loaded)
    except (OSError, EOFError) as err:
        raise ValueError(f"--gaze {path}: unreadable ({err}); {fix}") from None
    if arr.ndim != 2 or arr.shape[1] not in (3, 6) or arr.shape[0] == 0 or arr.dtype.kind not in "fiu":
        raise ValueError(f"--gaze {path}: eye_pose has shape {list(arr.shape)} ({arr.dtype}); {fix}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"--gaze {path}: eye_pose contains NaN/inf")
    if arr.shape[1] == 3:
        arr = np.concatenate([arr, arr], -1)
    n = arr.shape[0]
    period = max(2 * (n - 1), 1)
    k = np.arange(num_frames) % period
    return arr[np.where(k < n, k, period - k)]


def gaze_eye_pose(mode: str, model: HeadModel, num_frames: int, video_eye_pose=None, global_rot=None,
                  translation=None, neck_pose=None, shape=None, expression53=None) -> np.ndarray:
    """eye_pose [T, 6] for `ggtalker render --gaze`: "video" -> `video_eye_pose` (the tracked gaze of the
    frames the output borrows, [T, 6]); "camera" -> looking into the camera for the given poses; any other
    value -> a file (`load_gaze_file`)."""
    if mode == "video":
        if video_eye_pose is None:
            raise ValueError("--gaze video: the subject has no tracked eye_pose")
        return np.asarray(video_eye_pose, np.float32)[:num_frames]
    if mode == "camera":
        if global_rot is None or translation is None:
            raise ValueError("--gaze camera needs the head poses (global_rot, translation)")
        return look_at_eye_pose(model, np.zeros(3), global_rot, translation, neck_pose, shape=shape,
                                expression53=expression53)
    return load_gaze_file(mode, num_frames)

"""The built-in open head model: made entirely by this code (no third-party mesh, no restricted data).

What it is, and why:
- **Surface**: one closed-over-the-crown lat-long grid wrapped on a shaped ellipsoid (skull, face, ears as
  displacements) plus rings down the neck. A grid gives a proper, non-overlapping UV layout for free
  (u = around the head, seam at the back; v = crown to neck), denser over the face where Gaussians
  matter, so a UV Gaussian map of size R has most of its texels on the face.
- **MediaPipe correspondence**: the semantic face-mesh points (lip contours, eyelids, brows, irises, the
  nose line, the face oval: `LANDMARK_LAYOUT`, 150+ of the 478) are placed on the face by their role and
  embedded barycentrically, so real video is tracked by matching those MediaPipe landmarks. The point
  indices come from MediaPipe's published face-mesh connection lists (Apache-2.0); no geometry is copied.
- **Mouth and eyes on a single surface**: the lips meet along a line; jaw rotation (skinning to the jaw
  joint with a sharp weight step at the line) opens a band between them that the texture paints as the
  mouth's inside. Blinks move the upper-lid skin down over the eye the same way.
- **Expression space** (50): speech-relevant displacement fields around the semantic points with smooth
  falloff (lips spread/pucker/funnel/press/raise/depress/roll, corners up/down, cheeks puff/raise, brows,
  blinks, eye wide/squint, nose wrinkle, nostril flare, ...) plus smooth residual modes; names in
  `EXPRESSION_NAMES`. Jaw opening is the jaw pose (the last 3 of the 53 numbers), as in FLAME.
- **Shape space** (20): global proportions (width, height, depth, face length, jaw width, nose, eyes,
  lips, chin, cheeks, forehead, ears, neck) and smooth residual modes.
Units are metres; y up, z toward the viewer, x toward the subject's left. Deterministic.
"""
from __future__ import annotations

import functools

import numpy as np

from ggtalker_jax.head.mediapipe_points import (FACE_OVAL, LEFT_BROW_LOWER, LEFT_BROW_UPPER, LEFT_EYE_LOWER,  # noqa: F401
                                                LEFT_EYE_UPPER, LEFT_IRIS, LIPS_INNER_LOWER, LIPS_INNER_UPPER,
                                                LIPS_OUTER_LOWER, LIPS_OUTER_UPPER, NOSE_LINE, RIGHT_BROW_LOWER,
                                                RIGHT_BROW_UPPER, RIGHT_EYE_LOWER, RIGHT_EYE_UPPER, RIGHT_IRIS)
from ggtalker_jax.head.model import HeadModel, from_arrays

# Geometry version, recorded with every tracking (ggtalker_jax.head.record): bump it whenever the model's
# arrays change, so data tracked with an older open head is refused instead of silently misread.
OPEN_HEAD_VERSION = 1

# Face layout (metres, frontal x/y).
MOUTH_Y, MOUTH_HALF_WIDTH = -0.040, 0.025
EYE_Y, EYE_X, EYE_HALF_WIDTH, EYE_HALF_HEIGHT = 0.028, 0.032, 0.014, 0.0055
IRIS_RADIUS = 0.0055
BROW_Y = 0.045
CHIN_Y, FOREHEAD_Y, FACE_HALF_WIDTH = -0.100, 0.085, 0.068
JAW_JOINT = (0.0, -0.005, -0.045)
NECK_JOINT = (0.0, -0.085, -0.035)
ROOT_JOINT = (0.0, -0.150, -0.035)

EXPRESSION_NAMES = (
    "lips_spread", "lips_pucker", "lips_funnel", "lips_press", "upper_lip_raise", "lower_lip_depress",
    "mouth_corner_up_left", "mouth_corner_up_right", "mouth_corner_down_left", "mouth_corner_down_right",
    "mouth_left", "mouth_right", "cheek_puff_left", "cheek_puff_right", "cheek_raise_left", "cheek_raise_right",
    "brow_up_left", "brow_up_right", "brow_down_left", "brow_down_right", "brow_inner_up",
    "blink_left", "blink_right", "eye_wide_left", "eye_wide_right", "squint_left", "squint_right",
    "nose_wrinkle", "nostril_flare", "upper_lip_forward", "lower_lip_forward", "upper_lip_roll_in",
    "lower_lip_roll_in", "chin_raise", "mouth_stretch_left", "mouth_stretch_right", "dimple_left", "dimple_right",
    *(f"face_residual_{k}" for k in range(12)),
)
SHAPE_NAMES = ("width", "height", "depth", "face_length", "jaw_width", "nose_length", "nose_width", "eye_distance",
               "lip_thickness", "chin_forward", "cheek_fullness", "forehead_height", "ear_size", "neck_width",
               *(f"shape_residual_{k}" for k in range(6)))

N_LON, N_LAT_HEAD, N_LAT_NECK = 96, 80, 8
# Extra rows of the grid where the surface must stretch: the lip line (the mouth opens there) and the eyes
# (blinks): (frontal y, half-width in metres, extra density).
ROW_DENSITY = ((-0.040, 0.0016, 12.0), (0.028, 0.008, 2.5))


def _arc(points_idx, x0, x1, y_of_x):
    """Places landmark indices evenly along x from x0 to x1 with y = y_of_x(x)."""
    xs = np.linspace(x0, x1, len(points_idx))
    return {i: (x, y_of_x(x)) for i, x in zip(points_idx, xs)}


def landmark_layout() -> dict[int, tuple[float, float]]:
    """MediaPipe index -> frontal (x, y) position on the open head's face."""
    lay = {}
    w = MOUTH_HALF_WIDTH
    lip = lambda top: (lambda x: MOUTH_Y + top * (1 - (x / w) ** 2) ** 0.8)
    lay.update(_arc(LIPS_OUTER_UPPER, -w, w, lip(0.0095)))
    lay.update(_arc(LIPS_OUTER_LOWER, -w, w, lip(-0.0115)))
    wi = 0.84 * w
    inner = lambda off: (lambda x: MOUTH_Y + off * (1 - (x / wi) ** 2))
    lay.update(_arc(LIPS_INNER_UPPER, -wi, wi, inner(0.0006)))
    lay.update(_arc(LIPS_INNER_LOWER, -wi, wi, inner(-0.0006)))
    for sign, upper, lower, brow_lo, brow_up, iris in (
            (-1, RIGHT_EYE_UPPER, RIGHT_EYE_LOWER, RIGHT_BROW_LOWER, RIGHT_BROW_UPPER, RIGHT_IRIS),
            (1, LEFT_EYE_UPPER, LEFT_EYE_LOWER, LEFT_BROW_LOWER, LEFT_BROW_UPPER, LEFT_IRIS)):
        cx = sign * EYE_X
        outer, inner_x = cx + sign * EYE_HALF_WIDTH, cx - sign * EYE_HALF_WIDTH
        lid = lambda h: (lambda x, cx=cx: EYE_Y + h * np.sqrt(max(0.0, 1 - ((x - cx) / EYE_HALF_WIDTH) ** 2)))
        lay.update(_arc(upper, outer, inner_x, lid(EYE_HALF_HEIGHT)))
        lay.update(_arc(lower, outer, inner_x, lid(-0.8 * EYE_HALF_HEIGHT)))
        b_out, b_in = cx + sign * 0.020, cx - sign * 0.020
        arch = lambda off: (lambda x, cx=cx: BROW_Y + off + 0.004 * (1 - ((x - cx) / 0.022) ** 2))
        lay.update(_arc(brow_lo, b_out, b_in, arch(0.0)))
        lay.update(_arc(brow_up, b_out, b_in, arch(0.006)))
        lay[iris[0]] = (cx, EYE_Y)
        for k, ang in zip(iris[1:], (0.0, np.pi / 2, np.pi, 1.5 * np.pi)):
            lay[k] = (cx + IRIS_RADIUS * np.cos(ang), EYE_Y + IRIS_RADIUS * np.sin(ang))
    nose_y = np.linspace(0.030, -0.016, len(NOSE_LINE))
    nose_y[6:] = (-0.004, -0.008, -0.012, -0.016)
    lay.update({i: (0.0, y) for i, y in zip(NOSE_LINE, nose_y)})
    lay.update({98: (-0.013, -0.012), 327: (0.013, -0.012), 64: (-0.016, -0.009), 294: (0.016, -0.009),
                48: (-0.014, -0.003), 278: (0.014, -0.003)})
    n = len(FACE_OVAL)
    cy, ry_top, ry_bot = -0.008, FOREHEAD_Y + 0.008, -CHIN_Y - 0.008
    for k, idx in enumerate(FACE_OVAL):  # 10 at the top, going over the subject's right (x < 0) to 152
        ang = np.pi / 2 + 2 * np.pi * k / n
        x, s = FACE_HALF_WIDTH * np.cos(ang), np.sin(ang)
        lay[idx] = (0.97 * x, cy + (ry_top if s > 0 else ry_bot) * s)
    return lay


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _surface():
    """Template vertices [V, 3], faces [F, 3], UVs [Vt, 2], UV faces [F, 3], grid (row, col) of vertices."""
    u = (np.arange(N_LON) + 0.5) / N_LON
    s = 2 * u - 1
    alpha = np.pi * (s - 0.6 * np.sin(np.pi * s) / np.pi)            # azimuth, 0 = front; denser at the front
    cx, cy, cz, ax, ay, az = 0.0, 0.008, -0.022, 0.077, 0.118, 0.100
    # Polar angle from the crown per row: uniform in arc length, plus extra rows at the lip line and eyes.
    fine = np.linspace(0.0, 0.80 * np.pi, 20001)
    y_front = cy + ay * np.cos(fine)
    density = np.ones_like(fine)
    for y0, half, extra in ROW_DENSITY:
        density += extra * (np.abs(y_front - y0) < half)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(fine))])
    theta = np.interp((np.arange(N_LAT_HEAD) + 0.5) / N_LAT_HEAD * cdf[-1], cdf, fine)
    th, al = np.meshgrid(theta, alpha, indexing="ij")                   # [rows, cols]
    x = cx + ax * np.sin(th) * np.sin(al)
    y = cy + ay * np.cos(th)
    z = cz + az * np.sin(th) * np.cos(al)
    front = np.clip(np.cos(al), 0.0, 1.0) ** 1.5
    # Face plate: bring the lower face forward (a vertical face, not a receding egg) and narrow the jaw.
    lower = _smoothstep(0.03, -0.06, y) * _smoothstep(-0.16, -0.09, y)
    z = z + 0.045 * lower * front
    x = x * (1 - 0.18 * _smoothstep(-0.02, -0.10, y) * front)
    pos = np.stack([x, y, z], -1)
    # Neck rings below the head's last ring, pulled back under the skull.
    last = pos[-1]
    rings = []
    for k in range(1, N_LAT_NECK + 1):
        t = k / N_LAT_NECK
        ring_y = last[:, 1].mean() - 0.02 - 0.11 * t
        nx = 0.052 * np.sin(alpha)
        nz = -0.035 + 0.048 * np.cos(alpha)
        b = min(1.0, 0.35 + t)
        rings.append(np.stack([(1 - b) * last[:, 0] + b * nx, np.full(N_LON, ring_y), (1 - b) * last[:, 2] + b * nz], -1))
    pos = np.concatenate([pos, np.stack(rings)], 0)                     # [rows, cols, 3]
    rows = pos.shape[0]
    verts = pos.reshape(-1, 3)
    crown = np.array([[cx, cy + ay, cz]])
    verts = np.concatenate([verts, crown])
    crown_id = verts.shape[0] - 1
    vid = lambda r, c: r * N_LON + (c % N_LON)
    faces, uv_faces = [], []
    uv = []
    uv_id = lambda r, c: r * (N_LON + 1) + c                             # UV grid has a seam column
    vrow = np.concatenate([(np.arange(N_LAT_HEAD) + 0.5) / (N_LAT_HEAD + N_LAT_NECK + 0.5),
                           (N_LAT_HEAD + np.arange(N_LAT_NECK) + 0.5) / (N_LAT_HEAD + N_LAT_NECK + 0.5)])
    for r in range(rows):
        for c in range(N_LON + 1):
            uv.append((c / N_LON, vrow[r]))
    for r in range(rows - 1):
        for c in range(N_LON):
            a, b, d, e = vid(r, c), vid(r, c + 1), vid(r + 1, c), vid(r + 1, c + 1)
            ua, ub, ud, ue = uv_id(r, c), uv_id(r, c + 1), uv_id(r + 1, c), uv_id(r + 1, c + 1)
            faces += [(a, d, b), (b, d, e)]
            uv_faces += [(ua, ud, ub), (ub, ud, ue)]
    base = len(uv)
    for c in range(N_LON):                                                # crown cap: fan to one vertex
        uv.append(((c + 0.5) / N_LON, 0.0))
        faces.append((crown_id, vid(0, c), vid(0, c + 1)))
        uv_faces.append((base + c, uv_id(0, c), uv_id(0, c + 1)))
    faces = np.array(faces, np.int32)
    # Outward normals: x-right, y-up, z-front is right-handed; orient faces so normals point outward.
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centre = np.array([0.0, -0.01, -0.03])
    flip = np.sum(n * (tri.mean(1) - centre), -1) < 0
    if flip.mean() > 0.5:
        faces = faces[:, ::-1].copy()
        uv_faces = [f[::-1] for f in uv_faces]
    return verts, faces, np.array(uv, np.float32), np.array(uv_faces, np.int32), rows


def _bumps(verts, specs):
    """Sum of Gaussian displacement fields: specs of (centre [3], displacement [3], radius)."""
    out = np.zeros_like(verts)
    for centre, disp, radius in specs:
        d2 = np.sum((verts - np.asarray(centre)) ** 2, -1)
        out += np.exp(-0.5 * d2 / radius ** 2)[:, None] * np.asarray(disp)[None]
    return out


def _front_point(verts, faces, xy):
    """Face index and barycentrics of the front-most surface point at frontal position (x, y)."""
    from ggtalker_jax.head.uv import barycentric_2d
    tri = verts[faces]                                                    # [F, 3, 3]
    (l0, l1, l2), inside = barycentric_2d(tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2], np.asarray(xy)[None],
                                          min_det=1e-14)
    zs = l0 * tri[:, 0, 2] + l1 * tri[:, 1, 2] + l2 * tri[:, 2, 2]
    zs = np.where(inside, zs, -np.inf)
    f = int(np.argmax(zs))
    if not np.isfinite(zs[f]):
        raise RuntimeError(f"open head: no surface at frontal position {xy}")
    return f, np.array([l0[f], l1[f], l2[f]])


def _sculpt(verts):
    """Facial relief: nose, eye sockets, brow ridge, lips, chin, cheekbones, ears."""
    specs = [
        ((0, -0.002, 0.09), (0, 0, 0.022), 0.011), ((0, 0.015, 0.085), (0, 0, 0.010), 0.008),
        ((0, -0.010, 0.085), (0, -0.003, 0.006), 0.007),
        ((-EYE_X, EYE_Y, 0.08), (0, 0, -0.010), 0.012), ((EYE_X, EYE_Y, 0.08), (0, 0, -0.010), 0.012),
        ((-0.03, BROW_Y + 0.004, 0.08), (0, 0, 0.004), 0.012), ((0.03, BROW_Y + 0.004, 0.08), (0, 0, 0.004), 0.012),
        ((0, MOUTH_Y + 0.006, 0.085), (0, 0, 0.006), 0.009), ((0, MOUTH_Y - 0.007, 0.085), (0, 0, 0.005), 0.008),
        ((0, CHIN_Y + 0.012, 0.08), (0, 0, 0.006), 0.012),
        ((-0.045, 0.005, 0.06), (0, 0, 0.006), 0.014), ((0.045, 0.005, 0.06), (0, 0, 0.006), 0.014),
        ((-0.078, 0.010, -0.025), (-0.016, 0, 0), 0.012), ((0.078, 0.010, -0.025), (0.016, 0, 0), 0.012),
    ]
    return verts + _bumps(verts, specs)


def _lbs_weights(verts, lay):
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    nv = len(verts)
    w = np.zeros((nv, 5), np.float32)
    front = _smoothstep(-0.03, 0.02, z)
    # Jaw: below the lip line near the mouth (a sharp step, so the lips part), softer towards the ears.
    ax = np.abs(x)
    line_y = MOUTH_Y - 0.03 * _smoothstep(MOUTH_HALF_WIDTH, 0.07, ax)
    tau = 0.0003 + 0.008 * _smoothstep(MOUTH_HALF_WIDTH, 0.06, ax)
    below = 1.0 / (1.0 + np.exp(-(line_y - y) / tau))
    above_neck = _smoothstep(-0.125, -0.105, y)
    jaw = below * front * above_neck
    neck_part = 1.0 - _smoothstep(-0.16, -0.11, y)                     # lower neck follows the root
    eye = np.zeros(nv)
    for sign, col in ((1, 3), (-1, 4)):
        d = np.sqrt((x - sign * EYE_X) ** 2 + (y - EYE_Y) ** 2)
        w[:, col] = (d < IRIS_RADIUS * 1.3) & (z > 0.04)
        eye += w[:, col]
    w[:, 2] = jaw * (1 - eye)
    w[:, 0] = neck_part * (1 - w[:, 2]) * (1 - eye)
    w[:, 1] = 1.0 - w[:, 0] - w[:, 2] - w[:, 3] - w[:, 4]
    return w


def _expression_basis(verts, lay):
    """exprdirs [V, 3, 50] in metres per unit coefficient."""
    P = lambda i: np.array([lay[i][0], lay[i][1], _z_at(verts, lay[i])])
    z_mouth = _z_at(verts, (0, MOUTH_Y))
    M = np.array([0.0, MOUTH_Y, z_mouth])
    cl, cr = P(291), P(61)                                                # left (x>0) and right corners
    up_mid, lo_mid = P(0), P(17)
    r_lip = 0.010
    fields = {
        "lips_spread": [(cl, (0.006, 0.001, -0.002), r_lip), (cr, (-0.006, 0.001, -0.002), r_lip)],
        "lips_pucker": [(cl, (-0.007, 0, 0.004), r_lip), (cr, (0.007, 0, 0.004), r_lip), (M, (0, 0, 0.006), 0.012)],
        "lips_funnel": [(up_mid, (0, 0.002, 0.006), 0.008), (lo_mid, (0, -0.002, 0.006), 0.008),
                        (cl, (-0.004, 0, 0.002), r_lip), (cr, (0.004, 0, 0.002), r_lip)],
        "lips_press": [(P(13), (0, -0.0015, -0.001), 0.006), (P(14), (0, 0.0015, -0.001), 0.006),
                       (up_mid, (0, -0.001, -0.002), 0.008), (lo_mid, (0, 0.001, -0.002), 0.008)],
        "upper_lip_raise": [(up_mid, (0, 0.004, 0.001), 0.010)],
        "lower_lip_depress": [(lo_mid, (0, -0.004, 0.001), 0.010)],
        "mouth_corner_up_left": [(cl, (0.002, 0.005, 0), 0.009)],
        "mouth_corner_up_right": [(cr, (-0.002, 0.005, 0), 0.009)],
        "mouth_corner_down_left": [(cl, (0.001, -0.005, 0), 0.009)],
        "mouth_corner_down_right": [(cr, (-0.001, -0.005, 0), 0.009)],
        "mouth_left": [(M, (0.005, 0, 0), 0.016)],
        "mouth_right": [(M, (-0.005, 0, 0), 0.016)],
        "cheek_puff_left": [((0.040, -0.030, 0.05), (0.006, 0, 0.004), 0.016)],
        "cheek_puff_right": [((-0.040, -0.030, 0.05), (-0.006, 0, 0.004), 0.016)],
        "cheek_raise_left": [((0.035, 0.005, 0.07), (0, 0.004, 0.002), 0.012)],
        "cheek_raise_right": [((-0.035, 0.005, 0.07), (0, 0.004, 0.002), 0.012)],
        "brow_up_left": [(P(334), (0, 0.006, 0), 0.014)],
        "brow_up_right": [(P(105), (0, 0.006, 0), 0.014)],
        "brow_down_left": [(P(334), (0, -0.005, 0.001), 0.012)],
        "brow_down_right": [(P(105), (0, -0.005, 0.001), 0.012)],
        "brow_inner_up": [(P(336), (0, 0.005, 0), 0.008), (P(107), (0, 0.005, 0), 0.008)],
        "blink_left": [(P(386), (0, -1.9 * EYE_HALF_HEIGHT, 0.001), 0.0062)],
        "blink_right": [(P(159), (0, -1.9 * EYE_HALF_HEIGHT, 0.001), 0.0062)],
        "eye_wide_left": [(P(386), (0, 0.003, 0), 0.006)],
        "eye_wide_right": [(P(159), (0, 0.003, 0), 0.006)],
        "squint_left": [(P(374), (0, 0.003, 0), 0.006)],
        "squint_right": [(P(145), (0, 0.003, 0), 0.006)],
        "nose_wrinkle": [(P(6), (0, 0.003, 0.001), 0.010)],
        "nostril_flare": [(P(98), (-0.003, 0, 0), 0.005), (P(327), (0.003, 0, 0), 0.005)],
        "upper_lip_forward": [(up_mid, (0, 0, 0.005), 0.009)],
        "lower_lip_forward": [(lo_mid, (0, 0, 0.005), 0.009)],
        "upper_lip_roll_in": [(up_mid, (0, -0.002, -0.004), 0.007)],
        "lower_lip_roll_in": [(lo_mid, (0, 0.002, -0.004), 0.007)],
        "chin_raise": [((0, CHIN_Y + 0.02, 0.08), (0, 0.004, 0.002), 0.012)],
        "mouth_stretch_left": [(cl, (0.004, -0.003, 0), 0.012)],
        "mouth_stretch_right": [(cr, (-0.004, -0.003, 0), 0.012)],
        "dimple_left": [(cl + np.array([0.006, 0, -0.004]), (0, 0, -0.003), 0.006)],
        "dimple_right": [(cr + np.array([-0.006, 0, -0.004]), (0, 0, -0.003), 0.006)],
    }
    rng = np.random.default_rng(1234)
    face = (verts[:, 2] > 0.0) & (verts[:, 1] > CHIN_Y - 0.01)
    basis = np.zeros((len(verts), 3, 50), np.float32)
    for k, name in enumerate(EXPRESSION_NAMES):
        if name in fields:
            basis[:, :, k] = _bumps(verts, fields[name])
        else:  # smooth residual: a few random bumps over the face
            centres = verts[face][rng.integers(face.sum(), size=4)]
            specs = [(c, rng.normal(0, 0.002, 3), 0.02) for c in centres]
            basis[:, :, k] = _bumps(verts, specs)
    # Lip bumps must not pull the other lip along: split the mouth fields by the lip line for the
    # fields anchored on one lip.
    upper = verts[:, 1] >= MOUTH_Y
    for name in ("upper_lip_raise", "upper_lip_forward", "upper_lip_roll_in", "blink_left", "blink_right",
                 "eye_wide_left", "eye_wide_right"):
        k = EXPRESSION_NAMES.index(name)
        ref_y = MOUTH_Y if "lip" in name else EYE_Y - 0.7 * EYE_HALF_HEIGHT
        basis[verts[:, 1] < ref_y, :, k] = 0.0
    for name in ("lower_lip_depress", "lower_lip_forward", "lower_lip_roll_in", "squint_left", "squint_right"):
        k = EXPRESSION_NAMES.index(name)
        ref_y = MOUTH_Y if "lip" in name else EYE_Y
        basis[verts[:, 1] > ref_y, :, k] = 0.0
    del upper
    return basis


def _shape_basis(verts):
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    c = np.array([0.0, 0.0, -0.02])
    rel = verts - c
    front = _smoothstep(0.0, 0.06, z)[:, None]
    fields = [
        rel * np.array([0.06, 0, 0]), rel * np.array([0, 0.06, 0]), rel * np.array([0, 0, 0.06]),
        np.stack([0 * x, 0.06 * np.minimum(y, 0), 0 * z], -1) * front,
        np.stack([0.08 * x * _smoothstep(-0.02, -0.09, y), 0 * y, 0 * z], -1),
        _bumps(verts, [((0, -0.002, 0.09), (0, -0.002, 0.004), 0.012)]),
        _bumps(verts, [((-0.012, -0.008, 0.08), (-0.003, 0, 0), 0.008), ((0.012, -0.008, 0.08), (0.003, 0, 0), 0.008)]),
        _bumps(verts, [((-EYE_X, EYE_Y, 0.07), (-0.003, 0, 0), 0.012), ((EYE_X, EYE_Y, 0.07), (0.003, 0, 0), 0.012)]),
        _bumps(verts, [((0, MOUTH_Y, 0.085), (0, 0, 0.003), 0.010)]),
        _bumps(verts, [((0, CHIN_Y + 0.01, 0.08), (0, 0, 0.005), 0.015)]),
        _bumps(verts, [((-0.045, -0.02, 0.05), (-0.004, 0, 0.002), 0.02), ((0.045, -0.02, 0.05), (0.004, 0, 0.002), 0.02)]),
        np.stack([0 * x, 0.05 * np.maximum(y - 0.05, 0), 0 * z], -1),
        _bumps(verts, [((-0.085, 0.01, -0.025), (-0.006, 0.002, 0), 0.012), ((0.085, 0.01, -0.025), (0.006, 0.002, 0), 0.012)]),
        np.stack([0.08 * x * (y < -0.11), 0 * y, 0.08 * (z + 0.035) * (y < -0.11)], -1),
    ]
    rng = np.random.default_rng(99)
    for _ in range(6):
        centres = verts[rng.integers(len(verts), size=3)]
        fields.append(_bumps(verts, [(cc, rng.normal(0, 0.003, 3), 0.03) for cc in centres]))
    return np.stack(fields, -1).astype(np.float32)


def _z_at(verts, xy):
    """Depth of the front-most template vertex near frontal (x, y) (for placing displacement centres)."""
    d = np.hypot(verts[:, 0] - xy[0], verts[:, 1] - xy[1])
    near = d < 0.006
    cand = np.where(near, verts[:, 2], -np.inf)
    return float(np.max(cand)) if np.isfinite(np.max(cand)) else 0.08


@functools.lru_cache(maxsize=1)
def build_open_head_arrays() -> dict:
    """All arrays of the open head model (numpy). Deterministic; a second or so."""
    verts, faces, uvs, uv_faces, _ = _surface()
    verts = _sculpt(verts)
    lay = landmark_layout()
    index = np.array(sorted(lay), np.int32)
    lmk_faces, lmk_bary = zip(*(_front_point(verts, faces, lay[i]) for i in index))
    lip_idx = set(LIPS_OUTER_UPPER + LIPS_OUTER_LOWER + LIPS_INNER_UPPER + LIPS_INNER_LOWER)
    lip_vertices = np.unique(faces[[f for i, f in zip(index, lmk_faces) if i in lip_idx]].ravel())
    joints_rest = np.array([ROOT_JOINT, NECK_JOINT, JAW_JOINT, (EYE_X, EYE_Y, 0.06), (-EYE_X, EYE_Y, 0.06)])
    weights = _lbs_weights(verts, lay)
    # J_regressor: each joint is a fixed point, written as a weighted mean of its nearest vertices that
    # reproduces it exactly at rest (so shape changes move the joints with the surface around them).
    J = np.zeros((5, len(verts)), np.float32)
    for j, p in enumerate(joints_rest):
        near = np.argsort(np.sum((verts - p) ** 2, -1))[:8]
        A = np.concatenate([verts[near].T, np.ones((1, 8))], 0)             # [4, 8]
        wj = np.linalg.lstsq(A, np.concatenate([p, [1.0]]), rcond=None)[0]
        J[j, near] = wj
    return {"v_template": verts.astype(np.float32), "faces": faces, "uvs": uvs, "uv_faces": uv_faces,
            "shapedirs": _shape_basis(verts), "exprdirs": _expression_basis(verts, lay),
            "J_regressor": J, "lbs_weights": weights, "lmk_faces": np.array(lmk_faces, np.int32),
            "lmk_bary": np.array(lmk_bary, np.float32), "lmk_mediapipe_index": index,
            "lip_vertices": lip_vertices.astype(np.int32)}


def open_head() -> HeadModel:
    return from_arrays(build_open_head_arrays(), "open", EXPRESSION_NAMES)

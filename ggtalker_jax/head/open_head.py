"""The built-in open head model: a procedural head whose face is MediaPipe's face mesh (no restricted data).

What it is, and why:
- **Surface**: one closed-over-the-crown lat-long grid wrapped on a shaped ellipsoid (skull, face, ears as
  displacements) plus rings down the neck (`procedural_head_arrays`). A grid gives a proper,
  non-overlapping UV layout for free (u = around the head, seam at the back; v = crown to neck), denser
  over the face where Gaussians matter: at UV resolution R = 512, 258,304 texels are bound (98.5% of the
  map; `uv.build_uv_binding`).
- **Face from MediaPipe's face mesh** (`build_open_head_arrays`, version `OPEN_HEAD_VERSION`): the grid's
  face is conformed (smoothest bi-Laplacian displacement, in increments) so that it passes through the
  478 points of MediaPipe's face mesh (Face Mesh with irises, Apache-2.0, Google) as MediaPipe's own model
  regresses them in 3D on renders of the procedural head (`mediapipe_face_points`, made by
  experiments/build_open_face.py from the installed mediapipe package: no file of MediaPipe's is copied).
  All 478 points are embedded barycentrically on the surface (154 by their role, the rest at their
  closest surface point, upper-lip points above the lip line and lower-lip points below it), so real video
  is tracked on every MediaPipe point and the face has MediaPipe's proportions and depth.
- **Mouth and eyes on a single surface**: the lips meet along a line; jaw rotation (skinning to the jaw
  joint with a sharp weight step at the line) opens a band between them that the texture paints as the
  mouth's inside. Blinks move the upper-lid skin down over the eye the same way. Skinning weights and
  expression fields are laid out on the procedural surface (so they follow its lip line and lids) and
  carried over to the conformed one vertex by vertex.
- **Expression space** (50, `EXPRESSION_DOCS` says what each component does): speech-relevant
  displacement fields around the semantic points with smooth falloff plus 12 smooth residual modes. Jaw
  opening is the jaw pose (the last 3 of the 53 numbers), as in FLAME.
- **Shape space** (20 + 120): global proportions (width, height, depth, face length, jaw width, nose,
  eyes, lips, chin, cheeks, forehead, ears, neck), 6 smooth residual modes, then 40 local fields x 3 axes
  (3 mm Gaussian bumps of 15 mm radius at MediaPipe points spread over the face) for the identity's
  details; names in `SHAPE_NAMES`.
Units are metres; y up, z toward the viewer, x toward the subject's left. Deterministic.
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np

from ggtalker_jax.head.mediapipe_points import (FACE_OVAL, LEFT_BROW_LOWER, LEFT_BROW_UPPER, LEFT_EYE_LOWER,  # noqa: F401
                                                LEFT_EYE_UPPER, LEFT_IRIS, LIPS_INNER_LOWER, LIPS_INNER_UPPER,
                                                LIPS_OUTER_LOWER, LIPS_OUTER_UPPER, NOSE_LINE, RIGHT_BROW_LOWER,
                                                RIGHT_BROW_UPPER, RIGHT_EYE_LOWER, RIGHT_EYE_UPPER, RIGHT_IRIS)
from ggtalker_jax.head.model import HeadModel, from_arrays

# Geometry version, recorded with every tracking (ggtalker_jax.head.record): bump it whenever the model's
# arrays change, so data tracked with an older open head is refused instead of silently misread.
OPEN_HEAD_VERSION = 2           # 1: procedural face, 154 MediaPipe points; 2: MediaPipe face, all 478

# Face layout (metres, frontal x/y).
MOUTH_Y, MOUTH_HALF_WIDTH = -0.040, 0.025
EYE_Y, EYE_X, EYE_HALF_WIDTH, EYE_HALF_HEIGHT = 0.028, 0.032, 0.014, 0.0055
IRIS_RADIUS = 0.0055
EYEBALL_DEPTH = 0.011          # eye joint behind the iris centre (eyeball radius ~ 12 mm)
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
EXPRESSION_DOCS = {
    "lips_spread": "mouth corners out and back (smile width, 'ee')",
    "lips_pucker": "lips forward and together ('oo')",
    "lips_funnel": "lips forward, corners in, mouth rounded ('oh')",
    "lips_press": "lips pressed together and in ('p', 'b', 'm')",
    "upper_lip_raise": "upper lip up", "lower_lip_depress": "lower lip down",
    "mouth_corner_up_left": "left corner up", "mouth_corner_up_right": "right corner up",
    "mouth_corner_down_left": "left corner down", "mouth_corner_down_right": "right corner down",
    "mouth_left": "whole mouth to the subject's left", "mouth_right": "whole mouth to the subject's right",
    "cheek_puff_left": "left cheek out", "cheek_puff_right": "right cheek out",
    "cheek_raise_left": "left cheek up", "cheek_raise_right": "right cheek up",
    "brow_up_left": "left brow up", "brow_up_right": "right brow up",
    "brow_down_left": "left brow down", "brow_down_right": "right brow down",
    "brow_inner_up": "inner ends of both brows up",
    "blink_left": "left upper lid down over the eye (1 = closed)", "blink_right": "right upper lid down (1 = closed)",
    "eye_wide_left": "left upper lid up", "eye_wide_right": "right upper lid up",
    "squint_left": "left lower lid up", "squint_right": "right lower lid up",
    "nose_wrinkle": "nose bridge skin up", "nostril_flare": "nostrils out",
    "upper_lip_forward": "upper lip forward", "lower_lip_forward": "lower lip forward",
    "upper_lip_roll_in": "upper lip rolled in", "lower_lip_roll_in": "lower lip rolled in",
    "chin_raise": "chin skin up", "mouth_stretch_left": "left corner out and down",
    "mouth_stretch_right": "right corner out and down", "dimple_left": "skin beside the left corner in",
    "dimple_right": "skin beside the right corner in",
    **{f"face_residual_{k}": "smooth random face deformation (four 2 cm bumps), for what the named ones miss"
       for k in range(12)},
}
NUM_GLOBAL_SHAPE = 20
NUM_LOCAL_SHAPE_CENTRES, LOCAL_SHAPE_RADIUS, LOCAL_SHAPE_AMPLITUDE = 40, 0.015, 0.003
SHAPE_NAMES = ("width", "height", "depth", "face_length", "jaw_width", "nose_length", "nose_width", "eye_distance",
               "lip_thickness", "chin_forward", "cheek_fullness", "forehead_height", "ear_size", "neck_width",
               *(f"shape_residual_{k}" for k in range(6)),
               *(f"local_{k}_{axis}" for k in range(NUM_LOCAL_SHAPE_CENTRES) for axis in "xyz"))

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


def _joint_regressor(verts, joints, num_near: int = 8) -> np.ndarray:
    """J_regressor [J, V]: each joint is a fixed point, written as an affine combination of its nearest
    vertices that reproduces it exactly at rest (so shape changes move the joints with the surface around
    them)."""
    J = np.zeros((len(joints), len(verts)), np.float32)
    for j, p in enumerate(joints):
        near = np.argsort(np.sum((verts - p) ** 2, -1))[:num_near]
        A = np.concatenate([verts[near].T, np.ones((1, num_near))], 0)      # [4, n]
        J[j, near] = np.linalg.lstsq(A, np.concatenate([p, [1.0]]), rcond=None)[0]
    return J


def _local_shape_basis(verts, points) -> np.ndarray:
    """[V, 3, 3 K] Gaussian bumps (LOCAL_SHAPE_AMPLITUDE, LOCAL_SHAPE_RADIUS) along x, y, z at K points
    spread over the face by farthest-point sampling of `points` [P, 3] (from the topmost)."""
    sel = [int(np.argmax(points[:, 1]))]
    dist = np.linalg.norm(points - points[sel[0]], axis=-1)
    for _ in range(NUM_LOCAL_SHAPE_CENTRES - 1):
        sel.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(points - points[sel[-1]], axis=-1))
    fields = []
    for k in sel:
        w = LOCAL_SHAPE_AMPLITUDE * np.exp(-0.5 * np.sum((verts - points[k]) ** 2, -1) / LOCAL_SHAPE_RADIUS ** 2)
        for axis in range(3):
            f = np.zeros_like(verts)
            f[:, axis] = w
            fields.append(f)
    return np.stack(fields, -1).astype(np.float32)


def _z_at(verts, xy):
    """Depth of the front-most template vertex near frontal (x, y) (for placing displacement centres)."""
    d = np.hypot(verts[:, 0] - xy[0], verts[:, 1] - xy[1])
    near = d < 0.006
    cand = np.where(near, verts[:, 2], -np.inf)
    return float(np.max(cand)) if np.isfinite(np.max(cand)) else 0.08


@functools.lru_cache(maxsize=1)
def procedural_head_arrays() -> dict:
    """All arrays of the procedural head (numpy). Deterministic; a second or so."""
    verts, faces, uvs, uv_faces, _ = _surface()
    verts = _sculpt(verts)
    lay = landmark_layout()
    index = np.array(sorted(lay), np.int32)
    lmk_faces, lmk_bary = zip(*(_front_point(verts, faces, lay[i]) for i in index))
    lip_idx = set(LIPS_OUTER_UPPER + LIPS_OUTER_LOWER + LIPS_INNER_UPPER + LIPS_INNER_LOWER)
    lip_vertices = np.unique(faces[[f for i, f in zip(index, lmk_faces) if i in lip_idx]].ravel())
    joints_rest = np.array([ROOT_JOINT, NECK_JOINT, JAW_JOINT, (EYE_X, EYE_Y, 0.06), (-EYE_X, EYE_Y, 0.06)])
    weights = _lbs_weights(verts, lay)
    J = _joint_regressor(verts, joints_rest)
    return {"v_template": verts.astype(np.float32), "faces": faces, "uvs": uvs, "uv_faces": uv_faces,
            "shapedirs": _shape_basis(verts), "exprdirs": _expression_basis(verts, lay),
            "J_regressor": J, "lbs_weights": weights, "lmk_faces": np.array(lmk_faces, np.int32),
            "lmk_bary": np.array(lmk_bary, np.float32), "lmk_mediapipe_index": index,
            "lip_vertices": lip_vertices.astype(np.int32)}


FACE_POINTS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "open_face",
                                "mediapipe_points.npz")


def mediapipe_face_points() -> np.ndarray:
    """MediaPipe's 478 face-mesh points [478, 3] (metres, head space, neutral face) as MediaPipe's own model
    regresses them on renders of the procedural head (made by experiments/build_open_face.py)."""
    with np.load(FACE_POINTS_FILE, allow_pickle=False) as z:
        points, info = np.asarray(z["points"], np.float64), json.loads(str(z["info"]))
    made_for = info.get("procedural_template_rms")
    now = float(np.sqrt(np.mean(np.square(procedural_head_arrays()["v_template"].astype(np.float64)))))
    if made_for is None or abs(made_for - now) > 1e-6 * now:
        raise RuntimeError(f"{FACE_POINTS_FILE} was made for another procedural head (template rms {made_for} != "
                           f"{now}); re-run experiments/build_open_face.py and bump OPEN_HEAD_VERSION")
    return points


def _laplacian(verts: np.ndarray, faces: np.ndarray):
    """Graph Laplacian with physical edge weights 1 / length^2 [V, V] (sparse) and vertex areas [V] (so that
    the smoothness of a displacement is measured per metre, whatever the local mesh density)."""
    from scipy import sparse
    num = len(verts)
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    w = 1.0 / np.maximum(np.sum((verts[i] - verts[j]) ** 2, -1), 1e-12)
    W = sparse.coo_matrix((np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))),
                          shape=(num, num)).tocsr()
    W.sum_duplicates()
    W.data[:] = 1.0 / np.maximum(np.sum((verts[W.nonzero()[0]] - verts[W.nonzero()[1]]) ** 2, -1), 1e-12)
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    vertex_area = np.bincount(faces.ravel(), np.repeat(area / 3, 3), minlength=num)
    return sparse.diags(np.asarray(W.sum(1)).ravel()) - W, np.maximum(vertex_area, 1e-12)


def _deform(verts, faces, lmk_faces, lmk_bary, targets, anchor, constraint_weight=1e8, steps: int = 1):
    """Smoothest displacement (bi-Laplacian, physical weights) of `verts` [V, 3] that puts the barycentric
    points (lmk_faces [L], lmk_bary [L, 3]) at `targets` [L, 3]; vertices with `anchor` [V] >= 1 stay, the
    others are pulled back with weight `anchor`. In `steps` increments (the weights follow the shape)."""
    from scipy import sparse
    from scipy.sparse.linalg import factorized
    nv = len(verts)
    free = np.flatnonzero(anchor < 1.0)
    rows = np.repeat(np.arange(len(lmk_faces)), 3)
    C = sparse.coo_matrix((np.asarray(lmk_bary, np.float64).ravel(), (rows, faces[lmk_faces].ravel())),
                          shape=(len(lmk_faces), nv)).tocsr()
    Cf = C[:, free]
    v = verts.copy()
    for step in range(steps):
        L, area = _laplacian(v, faces)
        scale = area.mean()
        bilap = (L.T @ sparse.diags(scale / area) @ L * scale).tocsr()[free][:, free]
        A = (bilap + constraint_weight * (Cf.T @ Cf) + sparse.diags(anchor[free] + 1e-8)).tocsc()
        solve = factorized(A)
        r = (targets - C @ v) / (steps - step)
        delta = np.stack([solve(constraint_weight * (Cf.T @ r[:, k])) for k in range(3)], -1)
        v[free] += delta
    return v


def _closest_surface_point(tri, centroids, point, allowed, radius=0.03):
    """(face, barycentrics) of the surface point closest to `point` [3] on triangles `tri` [F, 3, 3]
    (centroids [F, 3]), among the `allowed` [F] ones within `radius`."""
    near = np.flatnonzero((np.linalg.norm(centroids - point, axis=-1) < radius) & allowed)
    if len(near) == 0:
        near = np.flatnonzero(allowed)
    t = tri[near]
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    ab, ac = b - a, c - a
    d00, d01, d11 = np.sum(ab * ab, -1), np.sum(ab * ac, -1), np.sum(ac * ac, -1)
    ap = point - a
    d20, d21 = np.sum(ap * ab, -1), np.sum(ap * ac, -1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-30)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    bary = np.stack([1 - v - w, v, w], -1)
    cands = [np.where(np.all(bary >= 0, -1, keepdims=True), bary, np.nan)]    # inside: the plane projection
    for i0, i1 in ((0, 1), (1, 2), (2, 0)):                                     # else the closest edge point
        p0, e = t[:, i0], t[:, i1] - t[:, i0]
        s = np.clip(np.sum((point - p0) * e, -1) / np.maximum(np.sum(e * e, -1), 1e-30), 0, 1)
        bb = np.zeros_like(bary)
        bb[:, i0], bb[:, i1] = 1 - s, s
        cands.append(bb)
    cands = np.stack(cands)                                                       # [4, n, 3]
    dist = np.linalg.norm(np.einsum("knj,njc->knc", np.nan_to_num(cands, nan=0.0), t) - point, axis=-1)
    dist = np.where(np.isnan(cands[..., 0]), np.inf, dist)
    k, i = np.unravel_index(np.argmin(dist), dist.shape)
    return int(near[i]), cands[k, i]


@functools.lru_cache(maxsize=1)
def build_open_head_arrays() -> dict:
    """The open head: the procedural head with its face conformed to MediaPipe's face mesh
    (`mediapipe_face_points`) and all 478 MediaPipe points embedded. Deterministic; a few seconds."""
    p = dict(procedural_head_arrays())
    verts, faces = p["v_template"].astype(np.float64), p["faces"]
    targets = mediapipe_face_points().copy()
    # The model's neutral mouth is closed on its lip line: inner-lip pairs meet there, upper above lower.
    for up, lo in zip(LIPS_INNER_UPPER[1:-1], LIPS_INNER_LOWER[1:-1]):
        mid = 0.5 * (targets[up] + targets[lo])
        targets[up], targets[lo] = mid + [0, 0.0003, 0], mid - [0, 0.0003, 0]
    z, y = verts[:, 2], verts[:, 1]
    anchor = (1.0 - _smoothstep(-0.03, 0.01, z)) + (1.0 - _smoothstep(-0.16, -0.12, y))
    # Pass 1: the semantic points the procedural layout places (lips, lids, brows, irises, nose, oval).
    idx = p["lmk_mediapipe_index"]
    first = _deform(verts, faces, p["lmk_faces"], p["lmk_bary"], targets[idx], anchor)
    # Pass 2: every other point attaches to its closest point of that surface; all 478 are then fitted.
    # Near the mouth, a point above the lips' meeting line attaches above the model's lip line (it moves with
    # the head, not the jaw) and one below attaches below it; none attaches inside the line's thin band.
    others = np.setdiff1d(np.arange(len(targets)), idx)
    face_y = verts[faces].mean(1)[:, 1]
    inner = np.array([targets[list(LIPS_INNER_UPPER)], targets[list(LIPS_INNER_LOWER)]]).mean(0)   # [11, 3]
    order_x = np.argsort(inner[:, 0])
    in_band = np.abs(face_y - MOUTH_Y) < 0.0015
    tri = first[faces]
    centroids = tri.mean(1)
    extra = []
    for i in others:
        allowed = ~in_band
        x = targets[i, 0]
        if inner[:, 0].min() - 0.01 < x < inner[:, 0].max() + 0.01 and abs(targets[i, 1] - inner[:, 1].mean()) < 0.03:
            line_y = np.interp(x, inner[order_x, 0], inner[order_x, 1])
            allowed = allowed & ((face_y > MOUTH_Y) if targets[i, 1] > line_y else (face_y < MOUTH_Y))
        extra.append(_closest_surface_point(tri, centroids, targets[i], allowed))
    lmk_faces = np.concatenate([p["lmk_faces"], np.array([f for f, _ in extra], np.int32)])
    lmk_bary = np.concatenate([p["lmk_bary"], np.array([b for _, b in extra], np.float32)])
    index = np.concatenate([idx, others]).astype(np.int32)
    order = np.argsort(index)
    lmk_faces, lmk_bary, index = lmk_faces[order], lmk_bary[order], index[order]
    verts = _deform(verts, faces, lmk_faces, lmk_bary, targets[index], anchor, steps=5)
    points = np.einsum("lk,lkc->lc", lmk_bary, verts[faces[lmk_faces]])
    # Eyeball centres EYEBALL_DEPTH behind the iris centres, so the rest gaze (+z) goes through the pupils.
    joints = np.asarray(p["J_regressor"], np.float64) @ np.asarray(p["v_template"], np.float64)
    for j, iris in ((3, LEFT_IRIS[0]), (4, RIGHT_IRIS[0])):
        joints[j] = points[int(np.flatnonzero(index == iris)[0])] - (0.0, 0.0, EYEBALL_DEPTH)
    p["J_regressor"] = _joint_regressor(verts, joints, num_near=32)
    lip = np.isin(index, list(LIPS_OUTER_UPPER + LIPS_OUTER_LOWER + LIPS_INNER_UPPER + LIPS_INNER_LOWER))
    p.update(v_template=verts.astype(np.float32), lmk_faces=lmk_faces, lmk_bary=lmk_bary.astype(np.float32),
             lmk_mediapipe_index=index, lip_vertices=np.unique(faces[lmk_faces[lip]].ravel()).astype(np.int32),
             shapedirs=np.concatenate([_shape_basis(verts), _local_shape_basis(verts, points[index < 468])], -1))
    return p


def open_head() -> HeadModel:
    return from_arrays(build_open_head_arrays(), "open", EXPRESSION_NAMES)

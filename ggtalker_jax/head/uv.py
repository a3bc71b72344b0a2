"""Gaussians that live in the head model's UV space (GGTalker: a UV Gaussian map of R x R texels).

`build_uv_binding` (numpy, once per model and resolution) finds, for every texel centre inside the UV
layout, its triangle and barycentric coordinates. `bind_gaussians` (JAX, per frame) places each Gaussian
on the posed surface in its triangle's local frame, as GaussianAvatars / GAGAvatar do:

    mean  = surface point + frame @ offset * unit,   quat = quat(frame) * local quat,
    scale = local scale * unit,                      unit = 3D size of one texel on that triangle

so position offsets and scales are in texel units and follow the mesh as it deforms (a stretched triangle,
e.g. the opening mouth, gets proportionally larger Gaussians and stays covered).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class UVBinding:
    """resolution R; mask [R, R] bool (texel used); texel_index [M, 2] (row, col) of used texels;
    face [M] int32; bary [M, 3] float32; texels_per_face [F] float32 (>= 1)."""
    resolution: int
    mask: np.ndarray
    texel_index: np.ndarray
    face: np.ndarray
    bary: np.ndarray
    texels_per_face: np.ndarray

    @property
    def num_gaussians(self) -> int:
        return int(self.face.shape[0])


def barycentric_2d(a, b, c, p, min_det: float):
    """Barycentric coordinates of points p in triangles (a, b, c), all [..., 2] (numpy) ->
    ((l0, l1, l2) each [...], inside [...] bool); triangles with |det| <= min_det count as outside."""
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    ok = np.abs(den) > min_det
    den = np.where(ok, den, 1.0)
    l1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
    l2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
    l0 = 1 - l1 - l2
    eps = 1e-9
    return (l0, l1, l2), ok & (l0 >= -eps) & (l1 >= -eps) & (l2 >= -eps)


def build_uv_binding(model, resolution: int) -> UVBinding:
    """Rasterises the UV layout: texel (row i, col j) has its centre at uv = ((j + .5)/R, (i + .5)/R).
    Each texel goes to the first triangle containing it (shared edges: one owner)."""
    uvs = np.asarray(model.uvs, np.float64)
    uv_faces = np.asarray(model.uv_faces)
    if uvs.size == 0:
        raise ValueError(f"head model {model.name!r} has no UV layout (uvs/uv_faces)")
    R = int(resolution)
    tri = uvs[uv_faces] * R - 0.5                                        # texel-centre coordinates [F, 3, 2]
    lo = np.clip(np.floor(tri.min(1)).astype(np.int64), 0, R - 1)
    hi = np.clip(np.ceil(tri.max(1)).astype(np.int64), 0, R - 1)
    w = hi[:, 0] - lo[:, 0] + 1
    h = hi[:, 1] - lo[:, 1] + 1
    counts = w * h
    face_of = np.repeat(np.arange(len(uv_faces)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cx = lo[face_of, 0] + local % w[face_of]
    cy = lo[face_of, 1] + local // w[face_of]
    t = tri[face_of]
    (l0, l1, l2), inside = barycentric_2d(t[:, 0], t[:, 1], t[:, 2], np.stack([cx, cy], -1), min_det=1e-12)
    flat = (cy * R + cx)[inside]
    order = np.argsort(flat, kind="stable")
    flat_sorted = flat[order]
    first = np.ones(len(flat_sorted), bool)
    first[1:] = flat_sorted[1:] != flat_sorted[:-1]
    keep = np.flatnonzero(inside)[order[first]]
    texel_rows, texel_cols = cy[keep], cx[keep]
    mask = np.zeros((R, R), bool)
    mask[texel_rows, texel_cols] = True
    face = face_of[keep].astype(np.int32)
    bary = np.stack([l0[keep], l1[keep], l2[keep]], -1).clip(0, 1)
    bary = (bary / bary.sum(-1, keepdims=True)).astype(np.float32)
    per_face = np.maximum(np.bincount(face, minlength=len(uv_faces)), 1).astype(np.float32)
    return UVBinding(R, mask, np.stack([texel_rows, texel_cols], -1).astype(np.int32), face, bary, per_face)


def _normalize(v, eps=1e-30):   # tiny eps: triangles here are millimetres, |n|^2 ~ 1e-13
    return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + eps)


def rotmat_to_quat(R):
    """Quaternions [..., 4] (wxyz) from rotation matrices [..., 3, 3] (Shepperd's method, branch-free)."""
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    tr = m00 + m11 + m22
    cands = jnp.stack([
        jnp.stack([1 + tr, R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1),
        jnp.stack([R[..., 2, 1] - R[..., 1, 2], 1 + m00 - m11 - m22, R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0]], -1),
        jnp.stack([R[..., 0, 2] - R[..., 2, 0], R[..., 0, 1] + R[..., 1, 0], 1 - m00 + m11 - m22, R[..., 1, 2] + R[..., 2, 1]], -1),
        jnp.stack([R[..., 1, 0] - R[..., 0, 1], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1], 1 - m00 - m11 + m22], -1),
    ], -2)                                                                  # [..., 4 candidates, 4]
    best = jnp.argmax(jnp.stack([tr, m00, m11, m22], -1), axis=-1)
    q = jnp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = _normalize(q)
    return q * jnp.where(q[..., :1] < 0, -1.0, 1.0)


def quat_multiply(a, b):
    """Hamilton product of wxyz quaternions [..., 4]."""
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return jnp.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                      aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def triangle_frames(vertices, faces):
    """Per-triangle orthonormal frames [F, 3, 3] (columns: tangent, bitangent, normal) and areas [F]."""
    tri = vertices[faces]
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    n = jnp.cross(e1, e2)
    area = 0.5 * jnp.sqrt(jnp.sum(n * n, -1) + 1e-30)
    t = _normalize(e1)
    nrm = _normalize(n)
    b = jnp.cross(nrm, t)
    return jnp.stack([t, b, nrm], -1), area


def bind_gaussians(binding: UVBinding, vertices, faces, offsets, rotations, scales):
    """Gaussians of the bound texels on a posed mesh.

    vertices [V, 3]; faces [F, 3]; offsets [M, 3] (local frame, texel units); rotations [M, 4] (wxyz,
    local); scales [M, 3] (texel units, positive). Returns (means [M, 3], quats [M, 4], scales [M, 3]).
    """
    faces = jnp.asarray(faces)
    frames, area = triangle_frames(vertices, faces)
    f = jnp.asarray(binding.face)
    corners = vertices[faces[f]]                                          # [M, 3, 3]
    point = jnp.einsum("mkc,mk->mc", corners, jnp.asarray(binding.bary, vertices.dtype))
    unit = jnp.sqrt(area[f] / jnp.asarray(binding.texels_per_face)[f])[:, None]   # texel size (m)
    frame = frames[f]                                                     # [M, 3, 3]
    means = point + jnp.einsum("mab,mb->ma", frame, offsets) * unit
    quats = quat_multiply(rotmat_to_quat(frame), rotations)
    return means, quats, scales * unit


def uv_maps_to_gaussians(binding: UVBinding, uv_maps: dict) -> dict:
    """Gathers the bound texels of dense UV maps {name: [R, R, k]} -> {name: [M, k]}."""
    rows, cols = binding.texel_index[:, 0], binding.texel_index[:, 1]
    return {k: v[rows, cols] for k, v in uv_maps.items()}

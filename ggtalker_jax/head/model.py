"""The head-model interface: a pytree of arrays and a pure forward function (linear blend skinning).

Both head models (the built-in open model and FLAME) are `HeadModel`s with FLAME's structure:

    T(shape, expr, pose) = v_template + shapedirs . shape + exprdirs . expr + posedirs . (R(pose) - I)
    vertices = LBS(T, joints = J_regressor T, rotations of [global, neck, jaw, eye_l, eye_r]) + translation

and landmarks are barycentric points on the posed mesh. 53 numbers per frame (50 expression + 3 jaw pose)
are the expression interface between audio and geometry, whatever the head model.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ggtalker_jax.constants import EXPR_DIM, NUM_EXPRESSION

JOINT_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")  # the skeleton of every head model


@struct.dataclass
class HeadModel:
    """A head model as arrays. V vertices, F faces, S shape comps, J = 5 joints, L landmarks.

    v_template [V, 3] (metres; y up, z toward the viewer), faces [F, 3] int32, shapedirs [V, 3, S],
    exprdirs [V, 3, 50], posedirs [(J-1)*9, V*3], J_regressor [J, V], lbs_weights [V, J],
    uvs [Vt, 2] in [0, 1] (v down), uv_faces [F, 3] int32, lmk_faces [L] int32, lmk_bary [L, 3],
    lmk_mediapipe_index [L] int32 (which of MediaPipe's 478 face-mesh points each landmark is),
    lip_vertices [K] int32 (vertices of the lips, for lip-vertex losses).
    Static: name ("open" | "flame" | ...), parents (J,), expression_names (50,; empty when unnamed), source
    (the files the model was built from: ((role, absolute path, sha256), ...), empty for built-in models;
    see `ggtalker_jax.head.record`).
    """
    v_template: Any
    faces: Any
    shapedirs: Any
    exprdirs: Any
    posedirs: Any
    J_regressor: Any
    lbs_weights: Any
    uvs: Any
    uv_faces: Any
    lmk_faces: Any
    lmk_bary: Any
    lmk_mediapipe_index: Any
    lip_vertices: Any
    name: str = struct.field(pytree_node=False, default="head")
    parents: tuple = struct.field(pytree_node=False, default=(-1, 0, 1, 1, 1))
    expression_names: tuple = struct.field(pytree_node=False, default=())
    source: tuple = struct.field(pytree_node=False, default=())

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[-1])

    @property
    def num_landmarks(self) -> int:
        return int(self.lmk_faces.shape[0])


@struct.dataclass
class HeadOutput:
    vertices: Any   # [..., V, 3]
    landmarks: Any  # [..., L, 3]
    joints: Any     # [..., J, 3] posed joint positions


def split_expression53(e):
    """[..., 53] -> (expression [..., 50], jaw_pose [..., 3])."""
    if e.shape[-1] != EXPR_DIM:
        raise ValueError(f"expression53 must have 53 numbers per frame (50 expression + 3 jaw), got shape {e.shape}")
    return e[..., :NUM_EXPRESSION], e[..., NUM_EXPRESSION:]


def join_expression53(expression, jaw_pose):
    """(expression [..., 50], jaw_pose [..., 3]) -> [..., 53]."""
    return jnp.concatenate([expression, jaw_pose], axis=-1)


def rodrigues(axis_angle):
    """Rotation matrices [..., 3, 3] from axis-angle [..., 3]; smooth (and exact) at zero angle."""
    sq = jnp.sum(axis_angle * axis_angle, axis=-1, keepdims=True)[..., None]     # [..., 1, 1]
    safe = jnp.where(sq > 1e-12, sq, 1.0)
    angle = jnp.sqrt(safe)
    # sin(a)/a and (1-cos a)/a^2 with Taylor series near zero (keeps gradients finite at the rest pose).
    a = jnp.where(sq > 1e-12, jnp.sin(angle) / angle, 1.0 - sq / 6.0)
    b = jnp.where(sq > 1e-12, (1.0 - jnp.cos(angle)) / safe, 0.5 - sq / 24.0)
    x, y, z = axis_angle[..., 0], axis_angle[..., 1], axis_angle[..., 2]
    zero = jnp.zeros_like(x)
    K = jnp.stack([jnp.stack([zero, -z, y], -1), jnp.stack([z, zero, -x], -1), jnp.stack([-y, x, zero], -1)], -2)
    eye = jnp.eye(3, dtype=axis_angle.dtype)
    return eye + a * K + b * (K @ K)


def _forward_single(model: HeadModel, shape, expression, jaw_pose, neck_pose, eye_pose, global_rot, translation):
    v = (model.v_template + jnp.einsum("vcs,s->vc", model.shapedirs, shape)
         + jnp.einsum("vce,e->vc", model.exprdirs, expression))
    joints = model.J_regressor @ v                                                     # [J, 3]
    pose = jnp.stack([global_rot, neck_pose, jaw_pose, eye_pose[:3], eye_pose[3:]])    # [J, 3]
    rots = rodrigues(pose)                                                             # [J, 3, 3]
    pose_feature = (rots[1:] - jnp.eye(3)).reshape(-1)
    v = v + (pose_feature @ model.posedirs).reshape(-1, 3)
    # Kinematic chain: world transform of each joint.
    world_R, world_t = [], []
    for j, parent in enumerate(model.parents):
        if parent < 0:
            world_R.append(rots[j])
            world_t.append(joints[j])
        else:
            world_R.append(world_R[parent] @ rots[j])
            world_t.append(world_t[parent] + world_R[parent] @ (joints[j] - joints[parent]))
    R = jnp.stack(world_R)                                                             # [J, 3, 3]
    t = jnp.stack(world_t) - jnp.einsum("jab,jb->ja", R, joints)                       # so that x -> R x + t
    blend_R = jnp.einsum("vj,jab->vab", model.lbs_weights, R)
    blend_t = model.lbs_weights @ t
    verts = jnp.einsum("vab,vb->va", blend_R, v) + blend_t + translation
    posed_joints = jnp.stack(world_t) + translation
    tri = verts[model.faces[model.lmk_faces]]                                          # [L, 3, 3]
    landmarks = jnp.einsum("lkc,lk->lc", tri, model.lmk_bary)
    return verts, landmarks, posed_joints


def forward(model: HeadModel, shape=None, expression=None, jaw_pose=None, neck_pose=None, eye_pose=None,
            global_rot=None, translation=None) -> HeadOutput:
    """Posed vertices and landmarks. Keyword arrays: shape [..., S], expression [..., 50], jaw_pose,
    neck_pose, global_rot (axis-angle), translation [..., 3], eye_pose [..., 6]; omitted ones are zero and
    leading batch dimensions broadcast. Returns HeadOutput(vertices [..., V, 3], landmarks [..., L, 3],
    joints [..., J, 3]). Pure, differentiable, jit- and vmap-friendly."""
    sizes = {"shape": model.num_shape, "expression": NUM_EXPRESSION, "jaw_pose": 3, "neck_pose": 3,
             "eye_pose": 6, "global_rot": 3, "translation": 3}
    given = dict(shape=shape, expression=expression, jaw_pose=jaw_pose, neck_pose=neck_pose, eye_pose=eye_pose,
                 global_rot=global_rot, translation=translation)
    dtype = jnp.asarray(model.v_template).dtype
    args = {}
    for name, size in sizes.items():
        x = given[name]
        x = jnp.zeros((size,), dtype) if x is None else jnp.asarray(x, dtype)
        if name == "shape" and x.shape[-1] < size:          # fewer shape comps than the model has: pad
            x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (size - x.shape[-1],), dtype)], -1)
        if x.ndim == 0 or x.shape[-1] != size:
            raise ValueError(f"head.forward: {name} must be [..., {size}], got shape {x.shape}")
        args[name] = x
    batch = jnp.broadcast_shapes(*(a.shape[:-1] for a in args.values()))
    flat = {k: jnp.broadcast_to(v, batch + v.shape[-1:]).reshape((-1, v.shape[-1])) for k, v in args.items()}
    fn = lambda *a: _forward_single(model, *a)
    verts, lmks, joints = jax.vmap(fn)(*(flat[k] for k in sizes))
    return HeadOutput(vertices=verts.reshape(batch + verts.shape[1:]),
                      landmarks=lmks.reshape(batch + lmks.shape[1:]),
                      joints=joints.reshape(batch + joints.shape[1:]))


def from_arrays(arrays: dict, name: str, expression_names=(), parents=(-1, 0, 1, 1, 1), source=()) -> HeadModel:
    """Builds a HeadModel from numpy arrays (float32 / int32), checking shapes."""
    v = np.asarray(arrays["v_template"], np.float32)
    nv = v.shape[0]
    checks = {"faces": (None, 3), "shapedirs": (nv, 3, None), "exprdirs": (nv, 3, NUM_EXPRESSION),
              "J_regressor": (len(parents), nv), "lbs_weights": (nv, len(parents))}
    for key, want in checks.items():
        got = np.shape(arrays[key])
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            raise ValueError(f"head model {name!r}: {key} has shape {got}, expected {want} (None = any)")
    f = np.asarray(arrays["faces"], np.int32)
    posedirs = arrays.get("posedirs")
    if posedirs is None:
        posedirs = np.zeros(((len(parents) - 1) * 9, nv * 3), np.float32)
    return HeadModel(
        v_template=jnp.asarray(v), faces=jnp.asarray(f),
        shapedirs=jnp.asarray(arrays["shapedirs"], jnp.float32), exprdirs=jnp.asarray(arrays["exprdirs"], jnp.float32),
        posedirs=jnp.asarray(posedirs, jnp.float32), J_regressor=jnp.asarray(arrays["J_regressor"], jnp.float32),
        lbs_weights=jnp.asarray(arrays["lbs_weights"], jnp.float32),
        uvs=jnp.asarray(arrays.get("uvs", np.zeros((0, 2))), jnp.float32),
        uv_faces=jnp.asarray(arrays.get("uv_faces", np.zeros((0, 3))), jnp.int32),
        lmk_faces=jnp.asarray(arrays.get("lmk_faces", np.zeros((0,))), jnp.int32),
        lmk_bary=jnp.asarray(arrays.get("lmk_bary", np.zeros((0, 3))), jnp.float32),
        lmk_mediapipe_index=jnp.asarray(arrays.get("lmk_mediapipe_index", np.zeros((0,))), jnp.int32),
        lip_vertices=jnp.asarray(arrays.get("lip_vertices", np.zeros((0,))), jnp.int32),
        name=name, parents=tuple(int(p) for p in parents), expression_names=tuple(expression_names),
        source=tuple(tuple(s) for s in source))


def blink_dimensions(model: HeadModel) -> list[int]:
    """Indices (into the 53-dim expression) of the components named as blinks; [] when none are named
    (FLAME's expression space is not named: blinks stay whatever the A2E / tracking gives)."""
    return [i for i, n in enumerate(model.expression_names) if "blink" in n]

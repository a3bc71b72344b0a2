"""Builds the open head's face points: MediaPipe's 3D face mesh (478 points) as its own model regresses it.

The procedural head (`open_head.procedural_head_arrays`, painted like the default subject) is rendered
neutral from several views with our Gaussian rasterizer; MediaPipe Face Mesh (the installed package,
Apache-2.0, refine_landmarks=True) regresses its 478 points (x, y in pixels, z relative depth on the x
scale) on each; every view is unprojected with its known camera and head pose into head space, the views
are rigidly aligned to the first and averaged, and the result is similarity-aligned to the procedural
layout's semantic points. Written to ggtalker_jax/assets/open_face/mediapipe_points.npz (points [478, 3]
float32, metres) with the views and residuals; `open_head` conforms its surface to these points.

    python experiments/build_open_face.py --size 512 --out ggtalker_jax/assets/open_face/mediapipe_points.npz
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 512, "render size in pixels")
flags.DEFINE_list("yaw_degrees", ["-20", "-10", "0", "10", "20"], "head yaw of the views")
flags.DEFINE_list("pitch_degrees", ["-8", "0", "8"], "head pitch of the views")
flags.DEFINE_string("out", "ggtalker_jax/assets/open_face/mediapipe_points.npz", "output .npz")

FOV_DEGREES, DISTANCE = 18.0, 0.85
HEAD_CENTRE = np.array([0.0, 0.008, -0.022])       # centre of the procedural skull (MediaPipe's depth origin)


def _procrustes(src, dst, scale: bool):
    """(s, R, t) minimising |s R src + t - dst|^2 over rows."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    D = np.diag([1, 1, d])
    R = u @ D @ vt
    s = float(np.trace(np.diag(sig) @ D) / np.sum(a * a)) if scale else 1.0
    return s, R, md - s * R @ ms


def main(_):
    from ggtalker_jax.data import default_subject
    from ggtalker_jax.data import landmarks as lm_lib
    from ggtalker_jax.head import model as model_lib
    from ggtalker_jax.head import open_head
    from ggtalker_jax.head import uv as uv_lib
    from ggtalker_jax.render import head_space_viewmat, intrinsics_from_fov, rasterization

    size = FLAGS.size
    model = model_lib.from_arrays(open_head.procedural_head_arrays(), "open", open_head.EXPRESSION_NAMES)
    binding = uv_lib.build_uv_binding(model, 256)
    colours = jnp.asarray(default_subject.texel_colours(model, binding, seed=0))
    m = binding.num_gaussians
    local_rot = jnp.tile(jnp.array([1.0, 0, 0, 0]), (m, 1))
    local_scale = jnp.array([1.3, 1.3, 0.3]) * jnp.ones((m, 3))
    K = np.asarray(intrinsics_from_fov(FOV_DEGREES, size, size))
    f = float(K[0, 0])
    trans = np.array([0.0, -0.005, -DISTANCE], np.float32)
    joints = np.asarray(model_lib.forward(model).joints)
    root = joints[0]

    @jax.jit
    def render(rot):
        o = model_lib.forward(model, global_rot=rot, translation=jnp.asarray(trans))
        means, quats, scales = uv_lib.bind_gaussians(binding, o.vertices, model.faces, jnp.zeros((m, 3)), local_rot,
                                                     local_scale)
        img, alpha, _ = rasterization(means, quats, scales, jnp.full((m,), 0.98), colours, head_space_viewmat()[None],
                                      jnp.asarray(K)[None], size, size)
        return img[0] + (1 - alpha[0]) * jnp.array([0.45, 0.5, 0.55])

    views, points = [], []
    with lm_lib.FaceLandmarker(lm_lib.LandmarkerConfig(static_image_mode=True, tile_fallback=False)) as lmk:
        for yaw in map(float, FLAGS.yaw_degrees):
            for pitch in map(float, FLAGS.pitch_degrees):
                rot = np.array([np.deg2rad(pitch), np.deg2rad(yaw), 0.0], np.float32)
                img = (np.clip(np.asarray(render(jnp.asarray(rot))), 0, 1) * 255 + 0.5).astype(np.uint8)
                pts, found = lmk(img)
                if not found:
                    print(f"view yaw {yaw} pitch {pitch}: no face found, skipped")
                    continue
                # Unproject: depth = distance of the head centre + MediaPipe's relative depth on the x scale.
                centre_depth = float(-(np.asarray(model_lib.rodrigues(jnp.asarray(rot))) @ (HEAD_CENTRE - root) + root
                                       + trans)[2])
                depth = centre_depth + pts[:, 2] * centre_depth / f
                cam = np.stack([(pts[:, 0] - size / 2) * depth / f, -(pts[:, 1] - size / 2) * depth / f, -depth], -1)
                R = np.asarray(model_lib.rodrigues(jnp.asarray(rot)), np.float64)
                head = (cam - trans - root) @ R + root                              # R^T (x - t - j0) + j0
                views.append((yaw, pitch))
                points.append(head)
    points = np.stack(points)
    ref = points[len(points) // 2]
    aligned = []
    for p in points:
        s, R, t = _procrustes(p, ref, scale=False)
        aligned.append(p @ R.T + t)
    aligned = np.stack(aligned)
    mean = aligned.mean(0)
    spread_mm = 1000 * np.linalg.norm(aligned - mean, axis=-1).mean()
    lay = open_head.procedural_head_arrays()
    v, faces = lay["v_template"], lay["faces"]
    layout = np.einsum("lk,lkc->lc", lay["lmk_bary"], v[faces[lay["lmk_faces"]]])
    idx = lay["lmk_mediapipe_index"]
    s, R, t = _procrustes(mean[idx], layout, scale=True)
    final = (s * mean @ R.T + t).astype(np.float32)
    resid_mm = 1000 * np.linalg.norm(final[idx] - layout, axis=-1)
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import mediapipe
    info = {"mediapipe_version": mediapipe.__version__, "views_yaw_pitch_degrees": views, "size": size,
            "view_spread_mm": float(spread_mm), "similarity_scale": s,
            "layout_residual_mm_mean": float(resid_mm.mean()), "layout_residual_mm_max": float(resid_mm.max()),
            "procedural_template_rms": float(np.sqrt(np.mean(np.square(v.astype(np.float64)))))}
    np.savez(out, points=final, info=np.array(json.dumps(info)))
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    app.run(main)

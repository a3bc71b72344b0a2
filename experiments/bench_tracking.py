"""Head-tracking benchmark on real clips: landmark error (pixels at the prepared size) per clip and region.

Each clip is prepared once (MediaPipe landmarks, crops; no tracking) into a cache folder, then tracked with
the chosen head model; the table shows the mean / median / 95th-percentile distance between the model's
projected landmarks and MediaPipe's, over all embedded landmarks and per face region, plus the share of
MediaPipe's 478 points the model embeds and the tracking time.

    python experiments/bench_tracking.py --data_dir /work/shared/data --size 512 --max_seconds 4 \
        --cache /tmp/bench_tracking --out /tmp/bench_tracking.json [--head generic_model.pkl \
        --landmark_embedding mediapipe_landmark_embedding.npz]
"""
import json
import pathlib
import shutil
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "/work/shared/data", "folder with the sample clips")
flags.DEFINE_list("clips", None, "clips to track (default: every .mp4 in --data_dir)")
flags.DEFINE_integer("size", 512, "prepared crop size in pixels (errors are in these pixels)")
flags.DEFINE_float("max_seconds", 4.0, "use the first seconds of each clip")
flags.DEFINE_string("cache", "/tmp/bench_tracking", "prepared clips are cached here (keyed by clip/size/seconds)")
flags.DEFINE_string("head", "open", "head model: 'open' or FLAME's generic_model.pkl")
flags.DEFINE_string("landmark_embedding", None, "MediaPipe landmark embedding .npz (FLAME)")
flags.DEFINE_string("out", "/tmp/bench_tracking.json", "JSON output path")


def regions() -> dict[str, set[int]]:
    """MediaPipe point sets by face region (from mediapipe's face_mesh_connections)."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    pts = lambda conn: {int(i) for edge in conn for i in edge}
    out = {"lips": pts(fmc.FACEMESH_LIPS), "eyes": pts(fmc.FACEMESH_LEFT_EYE) | pts(fmc.FACEMESH_RIGHT_EYE),
           "irises": set(range(468, 478)),
           "brows": pts(fmc.FACEMESH_LEFT_EYEBROW) | pts(fmc.FACEMESH_RIGHT_EYEBROW),
           "oval": pts(fmc.FACEMESH_FACE_OVAL)}
    if hasattr(fmc, "FACEMESH_NOSE"):
        out["nose"] = pts(fmc.FACEMESH_NOSE)
    return out


def prepared(clip: pathlib.Path) -> pathlib.Path:
    from ggtalker_jax.data import ingest

    out = pathlib.Path(FLAGS.cache) / f"{clip.stem}_{FLAGS.size}_{FLAGS.max_seconds:g}s"
    if not (out / "meta.json").is_file():
        ingest.prepare(clip, out, size=FLAGS.size, max_seconds=FLAGS.max_seconds, progress=False, overwrite=True)
    return out


def residuals_px(model, tracking: dict, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Model landmarks projected with the tracked parameters minus MediaPipe's: ([T, L] px, mp index [L])."""
    from ggtalker_jax import head
    from ggtalker_jax.data.track import project

    kw = {k: jnp.asarray(tracking[k]) for k in ("expression", "jaw_pose", "neck_pose", "eye_pose", "global_rot",
                                                 "translation") if k in tracking}
    out = head.forward(model, shape=jnp.asarray(tracking["shape"]), **kw)
    pix = np.asarray(project(out.landmarks, float(tracking["K"][0, 0]), size))
    idx = np.asarray(model.lmk_mediapipe_index)
    return np.linalg.norm(pix - landmarks[:, idx, :2], axis=-1), idx


def main(_):
    from ggtalker_jax import head
    from ggtalker_jax.data.dataset import PreparedDataset
    from ggtalker_jax.data.track import track_dataset

    data = pathlib.Path(FLAGS.data_dir)
    clips = [data / c for c in FLAGS.clips] if FLAGS.clips else sorted(data.glob("*.mp4"))
    kwargs = {"landmark_embedding": FLAGS.landmark_embedding} if FLAGS.landmark_embedding else {}
    model = head.load(FLAGS.head, **kwargs)
    reg = regions()
    rows = []
    for clip in clips:
        t0 = time.perf_counter()
        src = prepared(clip)
        prep_s = time.perf_counter() - t0
        work = pathlib.Path(FLAGS.cache) / "tracked" / src.name
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(src, work)
        t0 = time.perf_counter()
        track_dataset(str(work), head=FLAGS.head, **kwargs)
        track_s = time.perf_counter() - t0
        ds = PreparedDataset(work)
        with np.load(work / "tracking.npz") as z:
            tracking = {k: z[k] for k in z.files}
        err, idx = residuals_px(model, tracking, ds.landmarks, ds.size)
        err = err[ds.landmarks_found]
        row = {"clip": clip.name, "frames": int(ds.num_frames), "size": int(ds.size),
               "embedded": int(len(np.unique(idx))), "mean_px": float(err.mean()), "median_px": float(np.median(err)),
               "p95_px": float(np.percentile(err, 95)), "track_s": round(track_s, 1), "prepare_s": round(prep_s, 1)}
        for name, pts in reg.items():
            sel = np.isin(idx, list(pts))
            row[f"{name}_px"] = float(err[:, sel].mean()) if sel.any() else float("nan")
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ["clip", "frames", "embedded", "mean_px", "median_px", "p95_px", *(f"{n}_px" for n in reg), "track_s"]
    print(f"\nhead={FLAGS.head} size={FLAGS.size} max_seconds={FLAGS.max_seconds}")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    mean = float(np.mean([r["mean_px"] for r in rows]))
    print(f"mean over clips: {mean:.2f} px")
    pathlib.Path(FLAGS.out).write_text(json.dumps({"head": FLAGS.head, "size": FLAGS.size,
                                                   "max_seconds": FLAGS.max_seconds, "rows": rows,
                                                   "mean_px": mean}, indent=1))


if __name__ == "__main__":
    app.run(main)

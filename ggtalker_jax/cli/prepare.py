"""`ggtalker prepare --video IN.mp4 --out DIR [--size 512] [--fps 25] [--features logmel|F.npy] ...`:
a talking-head video -> a prepared dataset (`ggtalker_jax.data.ingest.prepare`). Prints the summary as
JSON."""
from __future__ import annotations

import json
import logging
import os
import pathlib

from ggtalker_jax.cli import flags as cli_flags


def define_flags():
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_string("video", None, "input talking-head video with its sound track", flag_values=fv)
    flags.DEFINE_string("out", None, "output dataset directory", flag_values=fv)
    flags.DEFINE_integer("size", 512, "crop side in pixels (>= 16)", flag_values=fv)
    flags.DEFINE_float("fps", 25.0, "dataset frame rate", flag_values=fv)
    flags.DEFINE_string("features", "logmel", "'logmel' or a .npy [S, D] of precomputed audio features",
                        flag_values=fv)
    flags.DEFINE_float("feature_fps", 50.0, "rate of the --features .npy rows (Hz)", flag_values=fv)
    flags.DEFINE_float("max_seconds", None, "use only the first seconds of the video", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace an existing prepared dataset at --out (anything else "
                         "there is never deleted)", flag_values=fv)
    flags.DEFINE_boolean("progress", True, "show progress bars", flag_values=fv)
    flags.DEFINE_string("preview", None, "also write crops with landmarks drawn as PNGs to this directory",
                        flag_values=fv)
    flags.DEFINE_boolean("track", True, "fit the head model to the landmarks (writes tracking.npz)", flag_values=fv)
    flags.DEFINE_string("head", "open", "head model for tracking: 'open' or FLAME's generic_model.pkl", flag_values=fv)
    flags.DEFINE_string("landmark_embedding", None, "with a FLAME --head: its MediaPipe landmark embedding .npz "
                        "(FLAME 2023's mediapipe_landmark_embedding.npz)", flag_values=fv)
    return fv


def main(argv: list[str]) -> int:
    fv = define_flags()
    cli_flags.no_positional(cli_flags.parse_flags(fv, argv))
    cli_flags.require(fv, "video", "out")
    cli_flags.existing_file("video", fv.video, "video file")
    cli_flags.positive("size", fv.size, 16, inclusive=True, integer=True)
    cli_flags.positive("fps", fv.fps)
    cli_flags.positive("feature_fps", fv.feature_fps)
    cli_flags.positive("max_seconds", fv.max_seconds)
    if fv.features != "logmel":
        cli_flags.existing_file("features", fv.features, ".npy feature file")
    if fv.head != "open":
        cli_flags.existing_file("head", fv.head, "head model file")
    if fv.landmark_embedding:
        cli_flags.existing_file("landmark_embedding", fv.landmark_embedding, "landmark embedding .npz")
    out = os.path.abspath(fv.out)
    cli_flags.writable_output_dir("out", os.path.dirname(out))
    if fv.preview:
        cli_flags.writable_output_dir("preview", fv.preview)

    from ggtalker_jax.data import ingest
    from ggtalker_jax.files import DirectoryLock

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    ingest.check_replaceable(pathlib.Path(out), fv.overwrite)
    track_fn = ingest.tracker(fv.head, fv.landmark_embedding) if fv.track else None  # a bad head fails now
    with DirectoryLock(os.path.dirname(out), "ggtalker prepare",
                       lock_file=os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lock")):
        summary = ingest.prepare(fv.video, out, size=fv.size, fps=fv.fps, features=fv.features,
                                 feature_fps=fv.feature_fps, max_seconds=fv.max_seconds, overwrite=fv.overwrite,
                                 progress=fv.progress, track_fn=track_fn)
    if fv.preview:
        n = summary["frames"]
        ingest.save_preview(out, fv.preview, indices=(0, n // 2, n - 1))
    summary["lost_ranges"] = [list(r) for r in summary["lost_ranges"]]
    print(json.dumps(summary, indent=1))
    return 0

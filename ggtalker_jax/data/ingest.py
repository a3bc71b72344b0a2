"""Turn a talking-head video into a prepared dataset directory (format: `ggtalker_jax.data.dataset`).

`prepare` runs: probe -> audio (16 kHz mono, silence check) -> pass 1: decode at `fps`, face landmarks
per frame (streamed, frames not kept) -> gap check / interpolation -> smoothed head crop boxes -> pass 2:
decode again, crop + resize, person segmentation + head mask, write JPEG/PNG -> landmarks in crop pixels,
audio features, 10:1 time split, meta.json -> optional ``track_fn(dataset_dir)`` (head tracking hook,
run before the dataset appears).
Everything is written to ``OUT.partial`` first and renamed to ``OUT`` at the end, so a crash never leaves
a half-written dataset that looks complete.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ggtalker_jax.audio import features as audio_features
from ggtalker_jax.audio.io import check_not_silent, write_wav
from ggtalker_jax.data import crop as crop_lib
from ggtalker_jax.data import dataset as ds
from ggtalker_jax.data import landmarks as lm_lib
from ggtalker_jax.data import masks as masks_lib
from ggtalker_jax import media
from ggtalker_jax.errors import MediaError, RefusedError, UsageError

log = logging.getLogger(__name__)

AUDIO_SR = 16000


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index ranges ``[a, b)`` where the bool array ``[T]`` is True."""
    padded = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.diff(padded.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def prepare(video_path: str | os.PathLike, out_dir: str | os.PathLike, size: int = 512, fps: float = 25,
            features: str | os.PathLike = "logmel", track_fn: Callable[[pathlib.Path], None] | None = None,
            progress: bool = True, max_seconds: float | None = None, feature_fps: float = 50.0,
            max_lost_ratio: float = 0.2, max_gap_seconds: float = 1.0, no_face_abort_seconds: float = 3.0,
            overwrite: bool = False, crop_config: crop_lib.CropConfig = crop_lib.CropConfig(),
            mask_dilate_px: int = 0) -> dict[str, Any]:
    """Prepare a dataset directory from a talking-head video.

    Args:
      video_path: input video with a sound track (any container / codec ffmpeg reads, VFR ok).
      out_dir: output directory (must not exist unless ``overwrite``).
      size: crop side in pixels; fps: dataset frame rate.
      features: ``"logmel"`` (80 mels x 4 per frame = 320 dims) or a path to a ``.npy [S, D]`` of
        precomputed features at `feature_fps` Hz (e.g. HuBERT), resampled to the frames.
      track_fn: called as ``track_fn(out_dir)`` on the finished directory (head tracking writes
        ``tracking.npz``); its errors propagate.
      max_seconds: use only the first `max_seconds` of the video (tests, previews).
      max_lost_ratio / max_gap_seconds: error if more frames than this lose the face, or one gap is longer;
        shorter gaps are linearly interpolated (ranges are logged and stored in meta.stats.lost_ranges).
      no_face_abort_seconds: stop early with an error if no face is seen in the first seconds.
    Returns:
      summary dict: ``frames``, ``fps``, ``size``, ``found_ratio``, ``lost_ranges``, ``ms_per_frame``
      (per stage and ``total``), ``out_dir``.
    Raises:
      MediaError: missing/corrupt/empty video, no audio track, silent audio, no face, too many lost
        frames, clip too short for the split.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    video_path = pathlib.Path(video_path)
    out_dir = pathlib.Path(out_dir)
    check_replaceable(out_dir, overwrite)
    if size < 16:
        raise ValueError(f"prepare: size must be >= 16, got {size}")
    ext_features = None if str(features) == "logmel" else pathlib.Path(features)
    if ext_features is not None and not ext_features.is_file():
        raise MediaError(f"{ext_features}: audio feature file not found; pass features='logmel' or a .npy path")

    # ---- probe + audio
    t0 = time.perf_counter()
    info = media.probe_video(video_path)
    if not info.has_audio:
        raise MediaError(f"{video_path}: has no audio track; prepare needs the speech that goes with the video "
                         "(mux one in: `ffmpeg -i video.mp4 -i speech.wav -c:v copy -map 0:v -map 1:a out.mp4`)")
    wav, _ = media.extract_audio(video_path, AUDIO_SR)
    audio_dbfs = check_not_silent(wav, video_path)
    timings["audio_decode"] = time.perf_counter() - t0

    # ---- pass 1: landmarks
    t0 = time.perf_counter()
    est = int(round(min(info.duration, max_seconds or np.inf) * fps))
    lms, found = [], []
    abort_after = int(round(no_face_abort_seconds * fps))
    decode_s = 0.0
    with lm_lib.FaceLandmarker() as landmarker:
        frames = media.read_video(video_path, fps=fps, max_seconds=max_seconds)
        bar = tqdm(total=est, desc="landmarks", unit="frame", disable=not progress)
        try:
            while True:
                td = time.perf_counter()
                frame = next(frames, None)
                decode_s += time.perf_counter() - td
                if frame is None:
                    break
                if not lms:
                    frame_hw = frame.shape[:2]
                p, f = landmarker(frame)
                lms.append(p)
                found.append(f)
                bar.update(1)
                if len(found) == abort_after and not any(found):
                    break
        finally:
            bar.close()
            frames.close()
    landmarks_src = np.stack(lms)
    found = np.array(found, bool)
    timings["landmarks"] = time.perf_counter() - t0 - decode_s
    timings["decode_pass1"] = decode_s
    if not found.any():
        raise MediaError(f"{video_path}: no face found in the first {len(found)} frames ({len(found) / fps:.1f} s); "
                         "use a video where one face is visible, frontal and reasonably lit (a face smaller than "
                         "~5% of the frame height may be missed: crop the video around the person first)")
    num_frames = len(found)
    # A truncated file (e.g. a faststart mp4 cut short) still announces its full duration: compare.
    if num_frames < est - max(3, 0.02 * est):
        raise MediaError(f"{video_path}: truncated? the container says {est / fps:.2f} s of video but only "
                         f"{num_frames / fps:.2f} s decode; re-download or re-encode the file "
                         "(`ffmpeg -i in.mp4 -c:v libx264 -c:a aac out.mp4`), or pass --max_seconds to use the "
                         "part that decodes")
    if num_frames < ds.MIN_FRAMES:
        raise MediaError(f"{video_path}: only {num_frames} frames at {fps} fps; need >= {ds.MIN_FRAMES} for the "
                         "train/test split (use a longer clip)")

    # ---- lost frames
    lost_ranges = _runs(~found)
    lost_ratio = 1.0 - float(found.mean())
    longest = max((b - a for a, b in lost_ranges), default=0)
    if lost_ranges:
        log.warning("%s: face lost in %d frames (%.1f%%), ranges %s; interpolating", video_path,
                    int((~found).sum()), 100 * lost_ratio, lost_ranges)
    if lost_ratio > max_lost_ratio:
        raise MediaError(f"{video_path}: face lost in {100 * lost_ratio:.0f}% of frames (> {100 * max_lost_ratio:.0f}%); "
                         f"lost frame ranges {lost_ranges[:10]}... Cut those parts out of the video or use a clip "
                         "where the face stays visible")
    if longest > max_gap_seconds * fps:
        raise MediaError(f"{video_path}: face lost for {longest} consecutive frames (> {max_gap_seconds} s); "
                         f"lost frame ranges {lost_ranges[:10]}. Cut those parts out of the video")
    if lost_ranges:
        landmarks_src = crop_lib.interpolate_missing(landmarks_src, found).astype(np.float32)

    # ---- crop boxes
    boxes = crop_lib.crop_boxes(landmarks_src, found, frame_hw, crop_config)
    landmarks_crop = crop_lib.landmarks_to_crop(landmarks_src, boxes, size)

    # ---- pass 2: crops + masks, written into OUT.partial
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    (tmp_dir / ds.FRAMES_DIR).mkdir(parents=True)
    (tmp_dir / ds.MASKS_DIR).mkdir()
    t_crop = t_mask = t_write = decode2 = 0.0
    head_fraction = []
    with masks_lib.PersonSegmenter() as segmenter:
        frames = media.read_video(video_path, fps=fps, max_seconds=max_seconds, max_frames=num_frames)
        bar = tqdm(total=num_frames, desc="crop+mask", unit="frame", disable=not progress)
        try:
            for i in range(num_frames):
                td = time.perf_counter()
                frame = next(frames, None)
                decode2 += time.perf_counter() - td
                if frame is None:
                    raise MediaError(f"{video_path}: second decoding pass ended after {i} of {num_frames} frames "
                                     "(file changed or non-deterministic decoding?)")
                ta = time.perf_counter()
                crop = crop_lib.crop_and_resize(frame, boxes[i], size)
                tb = time.perf_counter()
                person = segmenter(crop)
                head = masks_lib.head_mask(landmarks_crop[i], (size, size), person)
                head = masks_lib.dilate(head, mask_dilate_px)
                head_fraction.append(float(head.mean()))
                tc = time.perf_counter()
                ds.write_image(tmp_dir / ds.frame_name(i), crop)
                ds.write_image(tmp_dir / ds.mask_name(i), ds.encode_mask(head, person))
                td2 = time.perf_counter()
                t_crop += tb - ta
                t_mask += tc - tb
                t_write += td2 - tc
                bar.update(1)
        finally:
            bar.close()
            frames.close()
    timings.update(decode_pass2=decode2, crop=t_crop, masks=t_mask, write_images=t_write)

    # ---- audio + features + arrays + meta
    t0 = time.perf_counter()
    n_samples = int(round(num_frames / fps * AUDIO_SR))
    audio_mismatch_s = wav.size / AUDIO_SR - num_frames / fps
    if max_seconds is None and abs(audio_mismatch_s) > 0.5:
        log.warning("%s: audio is %.2f s %s than the video; it is padded/cut to the video length", video_path,
                    abs(audio_mismatch_s), "longer" if audio_mismatch_s > 0 else "shorter")
    wav = np.pad(wav[:n_samples], (0, max(0, n_samples - wav.size)))
    write_wav(tmp_dir / ds.AUDIO, wav, AUDIO_SR)
    feats, spec = audio_features.features_for(wav, AUDIO_SR, fps, num_frames, ext_features or "logmel", feature_fps)
    feature_meta = spec.to_dict()
    np.save(tmp_dir / ds.AUDIO_FEATURES, feats.astype(np.float32))
    np.save(tmp_dir / ds.LANDMARKS, landmarks_crop)
    np.save(tmp_dir / ds.LANDMARKS_FOUND, found)
    np.save(tmp_dir / ds.CROP_BOXES, boxes.astype(np.int64))
    timings["audio_features_and_arrays"] = time.perf_counter() - t0
    split = ds.split_ranges(num_frames)
    timings["total"] = time.perf_counter() - t_start
    stats = {"found_ratio": float(found.mean()), "lost_ranges": [list(r) for r in lost_ranges],
             "audio_dbfs": float(audio_dbfs), "head_mask_fraction_mean": float(np.mean(head_fraction)),
             "crop_side_source_px": int(np.median(boxes[:, 2])), "audio_video_mismatch_s": float(audio_mismatch_s)}
    meta = {"version": ds.FORMAT_VERSION, "fps": float(fps), "size": int(size), "num_frames": int(num_frames),
            "source": str(video_path), "source_info": dataclasses.asdict(info), "max_seconds": max_seconds,
            "audio_sample_rate": AUDIO_SR, "split": split, "features": feature_meta,
            "timings": {k: round(v, 4) for k, v in timings.items()}, "stats": stats,
            "crop": dataclasses.asdict(crop_config), "mask_dilate_px": int(mask_dilate_px)}
    (tmp_dir / ds.META).write_text(json.dumps(meta, indent=1))
    if track_fn is not None:      # tracking runs before the dataset appears: it appears whole or not at all
        t0 = time.perf_counter()
        track_fn(tmp_dir)
        timings["tracking"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
    check_replaceable(out_dir, overwrite)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    ms = {k: 1000.0 * v / num_frames for k, v in timings.items()}
    return {"out_dir": str(out_dir), "frames": num_frames, "fps": float(fps), "size": int(size),
            "found_ratio": float(found.mean()), "lost_ranges": lost_ranges, "ms_per_frame": ms}


def check_replaceable(out_dir: pathlib.Path, overwrite: bool) -> None:
    """Refuses an existing `out_dir` unless `overwrite` and it is recognisably a prepared dataset (a
    `meta.json` of this format): `prepare --overwrite` never deletes anything else."""
    if not out_dir.exists():
        return
    if not overwrite:
        raise RefusedError(f"{out_dir} already exists; choose another --out, or pass --overwrite to replace the "
                           "prepared dataset there")
    meta_path = out_dir / ds.META
    try:
        meta = json.loads(meta_path.read_text())
        ours = isinstance(meta, dict) and "version" in meta and "num_frames" in meta and (out_dir / ds.FRAMES_DIR).is_dir()
    except (OSError, ValueError):
        ours = False
    if not out_dir.is_dir() or not ours:
        raise RefusedError(f"{out_dir} exists and is not a prepared dataset (no {ds.META} of ggtalker's format); "
                           "--overwrite only replaces prepared datasets, so nothing was deleted. Choose another --out")


def save_preview(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, indices=(0,)) -> list[pathlib.Path]:
    """Write PNGs of crops with landmarks (green dots) and the head mask outline (red) for eyeballing."""
    import cv2

    data = ds.PreparedDataset(dataset_dir)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        img = data.frame(i)[..., ::-1].copy()  # BGR for cv2 drawing
        head = (data.mask(i)[..., 0] > 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(head, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, (0, 0, 255), 1)
        for x, y in data.landmarks[i, :, :2]:
            cv2.circle(img, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
        path = out_dir / f"{pathlib.Path(dataset_dir).name}_{i:06d}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def tracker(head: str, landmark_embedding: str | None = None):
    """The track_fn that fits `head` (with its MediaPipe `landmark_embedding`, FLAME) to the prepared
    landmarks (ggtalker_jax.data.track). The model is loaded now, so a bad --head / --landmark_embedding
    fails before the video is processed."""
    from ggtalker_jax import head as head_lib
    if head == "open" and landmark_embedding:
        raise UsageError(f"--landmark_embedding {landmark_embedding}: only for a FLAME --head (the open head "
                         "embeds MediaPipe's points itself)")
    model = head_lib.load(head, landmark_embedding=landmark_embedding)
    if model.num_landmarks == 0:
        raise UsageError(f"--head {head}: tracking needs MediaPipe's points on this model; pass "
                         "--landmark_embedding mediapipe_landmark_embedding.npz (shipped with FLAME 2023)")

    def track(out_dir):
        from ggtalker_jax.data.track import track_dataset
        result = track_dataset(str(out_dir), head=model)
        err = result["landmark_error_px"]
        log.info("tracking: landmark error %.2f px mean, %.2f px median (%.1f s)", float(err.mean()),
                 float(np.median(err)), result["seconds"])
    return track

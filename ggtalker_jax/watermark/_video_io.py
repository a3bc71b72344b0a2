"""Private mp4 reader/writer for the watermark (imageio-ffmpeg); kept small so it can later be pointed
at the shared media module. Frames are [T, H, W, 3] uint8 RGB."""
from __future__ import annotations

import dataclasses
import os
import subprocess

import imageio_ffmpeg
import numpy as np


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    fps: float
    has_audio: bool
    comment: str


def read_comment(path: str | os.PathLike) -> str:
    """The container's `comment` tag ("" when absent), via `ffmpeg -f ffmetadata`."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ValueError(f"cannot read metadata of {path}: {proc.stderr.strip()[-300:]}")
    for line in proc.stdout.splitlines():
        if line.lower().startswith("comment="):
            return line.split("=", 1)[1]
    return ""


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """Decode an mp4 -> frames [T, H, W, 3] uint8 and its fps / audio presence / comment tag."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    try:
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
        width, height = meta["size"]
        frames = []
        for raw in reader:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
            if max_frames is not None and len(frames) >= max_frames:
                reader.close()
                break
    except (RuntimeError, OSError, StopIteration) as err:
        raise ValueError(f"cannot decode video {path}: {err}") from err
    if not frames:
        raise ValueError(f"video {path} has no frames")
    info = VideoInfo(fps=float(meta.get("fps") or 25.0), has_audio=bool(meta.get("audio_codec")),
                     comment=read_comment(path))
    return np.stack(frames), info


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18,
                audio_from: str | os.PathLike | None = None, comment: str = "") -> None:
    """Encode frames [T, H, W, 3] uint8 as H.264 (yuv420p, given crf), copying the audio stream of
    `audio_from` when it has one, and writing `comment` into the container metadata."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 yuv420p needs even height and width, got {frames.shape[1:3]}; crop or pad")
    output_params = ["-crf", str(int(crf)), "-preset", "medium"]
    if comment:
        output_params += ["-metadata", f"comment={comment}"]
    audio_path = None
    if audio_from is not None:
        probe = imageio_ffmpeg.read_frames(os.fspath(audio_from))
        has_audio = bool(next(probe).get("audio_codec"))
        probe.close()
        audio_path = os.fspath(audio_from) if has_audio else None
    writer = imageio_ffmpeg.write_frames(
        os.fspath(path), (frames.shape[2], frames.shape[1]), fps=fps, codec="libx264", quality=None,
        macro_block_size=1, output_params=output_params, audio_path=audio_path,
        audio_codec="copy" if audio_path else None)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()

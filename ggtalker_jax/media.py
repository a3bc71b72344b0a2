"""The one video reader/writer of the package, on top of the ffmpeg binary bundled with imageio-ffmpeg (no
system ffmpeg needed). Used by `data` (ingest) and `watermark`; it depends only on `audio.io`.

- `probe_video`: size / fps / duration / audio presence / `comment` tag of any container ffmpeg reads
  (H.264, HEVC, VP9...).
- `read_video`: streams uint8 ``[H, W, 3]`` RGB frames resampled to a constant target fps by ffmpeg's
  ``fps`` filter (nearest-timestamp selection: output frame ``t`` at time ``t / fps`` is the source frame
  whose timestamp is nearest; handles variable-frame-rate sources by duplicating / dropping frames).
  Frames are decoded one at a time, so minutes of video never sit in RAM.
- `extract_audio`: the audio track as 16 kHz mono float32 (see `ggtalker_jax.audio.io.load_audio`).
- `write_mp4`: H.264 (libx264, yuv420p) + AAC, atomic write, output duration = video duration (audio
  padded with silence or cut).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ggtalker_jax.audio.io import _check_file, ffmpeg_exe, load_audio, write_wav
from ggtalker_jax.errors import MediaError


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Container facts. ``num_frames = round(duration * fps)`` (an estimate for variable-frame-rate
    files; ``fps`` is ffmpeg's average frame rate)."""

    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    has_audio: bool
    codec: str
    comment: str = ""  # the container's `comment` tag ("" when absent; the watermark's signed record)


def _streams(path: pathlib.Path) -> tuple[str, list[str]]:
    """(container format name, the `Stream #...` lines) ffmpeg reports for `path` ("" / [] if unreadable)."""
    res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True,
                         check=False)
    text = res.stderr.decode(errors="replace")
    fmt = next((line.split(",")[1].strip() for line in text.splitlines() if line.startswith("Input #")), "")
    return fmt, [line.strip() for line in text.splitlines() if line.strip().startswith("Stream #")]


STILL_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif")


def _header(path: pathlib.Path) -> dict[str, Any]:
    import imageio_ffmpeg

    _check_file(path)
    fmt, streams = _streams(path)
    has_video = any(": Video:" in s for s in streams)
    if streams and not has_video:
        raise MediaError(f"{path}: has no video stream (only {'audio' if any(': Audio:' in s for s in streams) else 'other'} "
                         "streams); give a video of the person talking")
    if has_video and (fmt in STILL_IMAGE_FORMATS or any("attached pic" in s for s in streams) and len(streams) == 1):
        raise MediaError(f"{path}: is a still image ({fmt}), not a video; give a video of the person talking "
                         "(a few minutes, with its sound)")
    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as e:
        raise MediaError(f"{path}: cannot read as video (corrupt or not a video file): "
                         f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}. "
                         "Re-encode it, e.g. `ffmpeg -i in -c:v libx264 out.mp4`") from e
    finally:
        gen.close()
    return meta


def read_comment(path: str | os.PathLike) -> str:
    """The container's `comment` tag ("" when absent), via `ffmpeg -f ffmetadata`."""
    path = pathlib.Path(path)
    _check_file(path)
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise MediaError(f"{path}: cannot read the container metadata: "
                         f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
        if line.lower().startswith("comment="):
            return line.split("=", 1)[1]
    return ""


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Probe a video file without decoding it. Raises `MediaError` for missing/empty/corrupt files."""
    path = pathlib.Path(path)
    meta = _header(path)
    width, height = (int(v) for v in meta["size"])
    fps = float(meta.get("fps") or 0.0)
    duration = float(meta.get("duration") or 0.0)
    if width <= 0 or height <= 0 or fps <= 0:
        raise MediaError(f"{path}: no usable video stream (size {width}x{height}, fps {fps})")
    return VideoInfo(width=width, height=height, fps=fps, num_frames=int(round(duration * fps)),
                     duration=duration, has_audio=meta.get("audio_codec") is not None,
                     codec=str(meta.get("codec", "?")), comment=read_comment(path))


def read_video(path: str | os.PathLike, fps: float | None = 25, max_seconds: float | None = None,
               max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Stream RGB frames ``uint8 [H, W, 3]`` (rotation metadata applied).

    Args:
      fps: target constant frame rate (nearest-timestamp resampling), or None for the source frames as
        stored (no resampling).
      max_seconds: decode only the first `max_seconds` seconds (at most ``round(max_seconds * fps)``
        frames when resampling).
      max_frames: stop after this many output frames.
    Output frame ``t`` shows time ``t / fps`` of the container clock (``start_time=0``: a stream that starts
    late repeats its first frame), so frame ``t`` lines up with audio ``[t / fps, (t + 1) / fps)``.
    Raises:
      MediaError: missing/corrupt file, or a file that yields no frames.
    """
    import imageio_ffmpeg

    path = pathlib.Path(path)
    meta = _header(path)
    width, height = (int(v) for v in meta["size"])
    input_params = ["-t", f"{max_seconds + 0.5:.6f}"] if max_seconds is not None else None
    if max_seconds is not None and fps is not None:
        limit = int(round(max_seconds * fps))
        max_frames = limit if max_frames is None else min(max_frames, limit)
    output_params = ["-vf", f"fps=fps={fps:g}:start_time=0"] if fps is not None else ["-fps_mode", "passthrough"]
    if max_frames is not None:
        output_params += ["-frames:v", str(int(max_frames))]
    gen = imageio_ffmpeg.read_frames(str(path), input_params=input_params, output_params=output_params)
    count = 0
    try:
        next(gen)  # meta
        for buf in gen:
            if len(buf) != width * height * 3:
                raise MediaError(f"{path}: decoded frame has {len(buf)} bytes, expected {width}x{height}x3")
            count += 1
            yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
    except (OSError, RuntimeError) as e:
        raise MediaError(f"{path}: video decoding failed after {count} frames (corrupt file?): "
                         f"{str(e).strip()[-300:]}") from e
    finally:
        gen.close()
    if count == 0:
        raise MediaError(f"{path}: video stream contains no decodable frames")


def extract_audio(path: str | os.PathLike, sr: int = 16000) -> tuple[np.ndarray, int]:
    """Audio track of a video as mono float32 ``[S]`` at `sr` (MediaError if it has none)."""
    return load_audio(path, sr)


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 25,
              audio: tuple[np.ndarray, int] | str | os.PathLike | None = None, crf: int = 18,
              preset: str = "medium", comment: str | Callable[[], str] | None = None) -> int:
    """Encode frames to an H.264 mp4, optionally muxing audio as AAC; returns the number of frames.

    Args:
      path: output ``.mp4``; written to a temp file in the same directory and then renamed (atomic).
      frames: iterable of uint8 ``[H, W, 3]`` RGB frames (all the same size); odd sizes are padded by
        one black row/column (yuv420p needs even sizes).
      audio: ``(wav [S] float, sr)``, a path to any audio/video file, or None. The output lasts exactly
        as long as the video: shorter audio is padded with silence, longer audio is cut.
      crf: x264 constant rate factor (18 = visually lossless).
      comment: written into the container's `comment` tag (the watermark's signed record); a callable is
        called once every frame was consumed (for a record that is only known after streaming the frames).
    """
    path = pathlib.Path(path)
    if path.parent and not path.parent.exists():
        raise MediaError(f"write_mp4: output directory {path.parent} does not exist")
    if isinstance(audio, (str, os.PathLike)):
        _check_file(pathlib.Path(audio))
    frames = iter(frames)
    try:
        first = next(frames)
    except StopIteration:
        raise ValueError(f"write_mp4({path}): no frames given") from None
    first = np.asarray(first)
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise ValueError(f"write_mp4({path}): frames must be uint8 [H, W, 3], got {first.dtype} {first.shape}")
    h, w = first.shape[:2]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmpdir:
        tmp_video = pathlib.Path(tmpdir) / "video.mp4"
        tmp_out = pathlib.Path(tmpdir) / "out.mp4"
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-",
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", preset,
               "-crf", str(int(crf)), "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(tmp_video)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        count = 0
        try:
            for frame in _chain(first, frames):
                frame = np.asarray(frame)
                if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
                    raise ValueError(f"write_mp4({path}): frame {count} is {frame.dtype} {frame.shape}, "
                                     f"expected uint8 {(h, w, 3)} like frame 0")
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                count += 1
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0:
            raise MediaError(f"write_mp4({path}): ffmpeg failed (exit {rc}): {err.strip()[-500:]}")
        text = comment() if callable(comment) else comment
        tags = ["-metadata", f"comment={text}"] if text else []
        # Second pass: copy the video, add the tags and the AAC audio padded/cut to its duration.
        mux = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(tmp_video)]
        if audio is not None:
            if isinstance(audio, (str, os.PathLike)):
                audio_path = pathlib.Path(audio)
                _check_file(audio_path)
            else:
                wav, sr = audio
                audio_path = pathlib.Path(tmpdir) / "audio.wav"
                write_wav(audio_path, np.asarray(wav, np.float32), int(sr))
            mux += ["-i", str(audio_path), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "160k",
                    "-af", "apad", "-t", f"{count / fps:.6f}"]
        mux += ["-c:v", "copy", "-movflags", "+faststart", *tags, str(tmp_out)]
        res = subprocess.run(mux, capture_output=True, check=False)
        if res.returncode != 0:
            raise MediaError(f"write_mp4({path}): muxing {'audio ' + str(audio_path) if audio is not None else 'tags'} "
                             f"failed: {res.stderr.decode(errors='replace').strip()[-500:]}")
        os.replace(tmp_out, path)
    return count


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest

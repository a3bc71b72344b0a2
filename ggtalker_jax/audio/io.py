"""Audio file I/O: load any format to mono float32 at a target rate, write WAV, detect silence.

Decoding tries `soundfile` (wav/flac/ogg/mp3 with libsndfile >= 1.1) first and falls back to the
ffmpeg binary shipped with `imageio-ffmpeg` (m4a/aac/mp4/mkv/...: any container ffmpeg can read).
Resampling uses `librosa.resample` (soxr backend).
"""
from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Any

import numpy as np

from ggtalker_jax.errors import MediaError

# Clips whose RMS level is below this (dBFS, full scale = 1.0) are treated as silent.
SILENCE_DBFS = -60.0


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_file(path: pathlib.Path) -> None:
    if not path.exists():
        raise MediaError(f"{path}: file not found (check the path)")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, expected a media file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty (0 bytes); re-export or re-download it")


def _to_mono(wav: np.ndarray) -> np.ndarray:
    """[S] or [S, C] -> [S] (channel mean)."""
    return wav.mean(axis=1) if wav.ndim == 2 else wav


def _decode_ffmpeg(path: pathlib.Path, sr: int) -> np.ndarray:
    """Decode the first audio stream of any container with ffmpeg -> float32 mono [S] at `sr`."""
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
           "-ac", "1", "-ar", str(sr), "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        if "matches no streams" in err or "does not contain any stream" in err:
            raise MediaError(f"{path}: has no audio stream; use a video with a sound track or pass a "
                             "separate audio file")
        raise MediaError(f"{path}: cannot decode audio (file corrupt or unsupported format); "
                         f"ffmpeg said: {err.splitlines()[-1] if err else 'exit code ' + str(proc.returncode)}. "
                         "Re-encode it, e.g. `ffmpeg -i in -ar 16000 -ac 1 out.wav`")
    return np.frombuffer(proc.stdout, np.float32).copy()


def load_audio(path: str | os.PathLike, sr: int = 16000) -> tuple[np.ndarray, int]:
    """Load an audio file (or the audio track of a video) as mono float32.

    Args:
      path: wav/flac/mp3/m4a/mp4/... file.
      sr: target sample rate in Hz (resampled if the file differs).
    Returns:
      ``(wav [S] float32 in [-1, 1], sr)``.
    Raises:
      MediaError: missing/empty/corrupt file, no audio stream, or zero decoded samples.
    """
    path = pathlib.Path(path)
    _check_file(path)
    wav = None
    try:
        import soundfile

        data, file_sr = soundfile.read(str(path), dtype="float32", always_2d=False)
        wav = _to_mono(np.asarray(data, np.float32))
        if file_sr != sr and wav.size:
            import librosa

            wav = librosa.resample(wav, orig_sr=file_sr, target_sr=sr, res_type="soxr_hq")
    except Exception:  # noqa: BLE001 - any libsndfile failure -> try ffmpeg, which reports properly
        wav = _decode_ffmpeg(path, sr)
    wav = np.ascontiguousarray(wav, np.float32)
    if wav.size == 0:
        raise MediaError(f"{path}: audio stream is empty (0 samples); use a file with sound")
    if not np.all(np.isfinite(wav)):
        raise MediaError(f"{path}: decoded audio contains NaN/inf (corrupt file); re-encode it")
    return wav, sr


def rms_dbfs(wav: np.ndarray) -> float:
    """RMS level of a waveform in dBFS (full scale 1.0); -inf for digital silence."""
    rms = float(np.sqrt(np.mean(np.square(np.asarray(wav, np.float64))))) if np.size(wav) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def check_not_silent(wav: np.ndarray, path: Any = "<array>", threshold_dbfs: float = SILENCE_DBFS) -> float:
    """Raise `MediaError` when the clip is (near-)silent; returns its RMS level in dBFS."""
    level = rms_dbfs(wav)
    if level < threshold_dbfs:
        raise MediaError(f"{path}: audio is silent (RMS {level:.1f} dBFS < {threshold_dbfs:.0f} dBFS); "
                         "use a clip with audible speech or check that the right track was exported")
    return level


def write_wav(path: str | os.PathLike, wav: np.ndarray, sr: int) -> None:
    """Write mono ``[S]`` (or ``[S, C]``) float audio as 16-bit PCM WAV (atomic: temp file + rename)."""
    import soundfile

    wav = np.asarray(wav, np.float32)
    if wav.ndim not in (1, 2):
        raise ValueError(f"write_wav({path}): wav must be [S] or [S, C], got shape {wav.shape}")
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"write_wav({path}): wav contains NaN/inf")
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.wav")
    soundfile.write(str(tmp), np.clip(wav, -1.0, 1.0), int(sr), subtype="PCM_16")
    os.replace(tmp, path)

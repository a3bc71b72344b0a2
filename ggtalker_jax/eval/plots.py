"""Evaluation figures (matplotlib, Agg backend, no display needed): PSNR curve, mouth vs audio, frame grid.

Every function writes one PNG and returns its path. Figures are built with the object-oriented API
(`matplotlib.figure.Figure`), so nothing touches pyplot's global state.
"""
from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _prepare_path(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, path: pathlib.Path, dpi: int = 100) -> pathlib.Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def _as_1d(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(-1) if np.ndim(x) <= 1 else None
    if x is None or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array [T]")
    return x


def plot_psnr_over_time(psnr: Any, path: str | pathlib.Path, fps: float | None = None,
                        title: str = "PSNR per frame") -> pathlib.Path:
    """Line plot of per-frame PSNR ``[T]`` (dB) with its mean; x axis in seconds when ``fps`` is given.

    Infinite values (identical frames) are drawn at the top of the finite range and counted in the legend.
    """
    p = _as_1d(psnr, "psnr")
    path = _prepare_path(path)
    finite = np.isfinite(p)
    t = np.arange(p.size) / fps if fps else np.arange(p.size)
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot()
    top = p[finite].max() if finite.any() else 100.0
    ax.plot(t, np.where(finite, p, top), lw=1.2, color="tab:blue", label="PSNR")
    if finite.any():
        mean = p[finite].mean()
        ax.axhline(mean, color="tab:red", ls="--", lw=1, label=f"mean {mean:.2f} dB (finite frames)")
    if (~finite).any():
        ax.plot(t[~finite], np.full((~finite).sum(), top), "k^", ms=4, label=f"{(~finite).sum()} identical (inf)")
    ax.set_xlabel("time [s]" if fps else "frame")
    ax.set_ylabel("PSNR [dB]")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_mouth_vs_audio(mouth: Any, energy: Any, path: str | pathlib.Path, offset: int | None = None,
                        fps: float | None = None, title: str = "Mouth opening vs audio energy") -> pathlib.Path:
    """Overlay z-scored mouth opening ``[T]`` and audio energy ``[T]``.

    When ``offset`` (frames, positive = video lags audio, as in `metrics.sync_score`) is given, the
    audio curve shifted by it is drawn dashed, so a correct offset makes the dashed curve follow the mouth.
    """
    m = _as_1d(mouth, "mouth")
    e = _as_1d(energy, "energy")
    if m.size != e.size:
        raise ValueError(f"mouth ({m.size}) and energy ({e.size}) must have one value per frame each")
    path = _prepare_path(path)

    def z(x):
        s = x.std()
        return (x - x.mean()) / s if s > 1e-12 else x - x.mean()

    t = np.arange(m.size) / fps if fps else np.arange(m.size)
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot()
    ax.plot(t, z(m), color="tab:blue", lw=1.3, label="mouth opening (z)")
    ax.plot(t, z(e), color="tab:orange", lw=1.0, alpha=0.8, label="audio energy (z)")
    if offset:
        shift_t = offset / fps if fps else offset
        ax.plot(t + shift_t, z(e), color="tab:green", lw=1.0, ls="--",
                label=f"audio shifted by {offset:+d} frames")
    ax.set_xlabel("time [s]" if fps else "frame")
    ax.set_ylabel("z-score")
    ax.set_title(title if offset is None else f"{title} (best offset {offset:+d} frames)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _to_float_images(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be [K, H, W, 3] RGB, got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    return np.clip(x.astype(np.float64), 0.0, 1.0)


def frame_grid(gt: Any, pred: Any, path: str | pathlib.Path, labels: Sequence[str] | None = None,
               diff_max: float | None = None) -> pathlib.Path:
    """Grid of K columns and three rows: ground truth, render, per-pixel |gt - pred| heatmap.

    Args:
      gt, pred: ``[K, H, W, 3]`` RGB, uint8 or float in [0, 1].
      labels: ``K`` column titles (e.g. frame indices); default "frame k".
      diff_max: colour-scale maximum of the abs-diff row (mean over channels); default = max diff.
    """
    g = _to_float_images(gt, "gt")
    p = _to_float_images(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt {g.shape} and pred {p.shape} must have the same shape")
    k, h, w, _ = g.shape
    if labels is None:
        labels = [f"frame {i}" for i in range(k)]
    if len(labels) != k:
        raise ValueError(f"labels has {len(labels)} entries for {k} frames")
    path = _prepare_path(path)
    diff = np.abs(g - p).mean(axis=-1)
    vmax = diff_max if diff_max is not None else max(float(diff.max()), 1e-6)
    col_w = 2.2
    fig = Figure(figsize=(col_w * k + 0.8, col_w * h / w * 3 + 0.6))
    axes = fig.subplots(3, k, squeeze=False)
    row_names = ("ground truth", "render", "|GT - render|")
    im = None
    for j in range(k):
        axes[0, j].imshow(g[j])
        axes[1, j].imshow(p[j])
        im = axes[2, j].imshow(diff[j], cmap="inferno", vmin=0.0, vmax=vmax)
        axes[0, j].set_title(str(labels[j]), fontsize=9)
        for r in range(3):
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
    for r in range(3):
        axes[r, 0].set_ylabel(row_names[r], fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.9, top=0.93, bottom=0.03, wspace=0.04, hspace=0.06)
    cax = fig.add_axes([0.92, 0.05, 0.015, 0.26])
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
    return _save(fig, path)

"""Tests for ggtalker_jax.eval.plots: PNGs exist, decode, and have the expected pixel size."""
import cv2
import numpy as np
import pytest

from ggtalker_jax.eval import plots


def _decode(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} did not decode"
    return img


def test_plot_psnr_over_time(tmp_path):
    psnr = 30 + np.sin(np.arange(50) / 5.0)
    psnr[7] = np.inf
    out = plots.plot_psnr_over_time(psnr, tmp_path / "sub" / "psnr.png", fps=25)
    img = _decode(out)
    assert img.shape == (320, 800, 3)          # figsize (8, 3.2) at 100 dpi
    assert img.std() > 10                      # not a blank canvas


def test_plot_mouth_vs_audio(tmp_path):
    t = np.arange(80)
    energy = np.abs(np.sin(t / 4.0))
    mouth = np.roll(energy, 2) * 0.3
    img = _decode(plots.plot_mouth_vs_audio(mouth, energy, tmp_path / "sync.png", offset=2))
    assert img.shape == (320, 800, 3)
    with pytest.raises(ValueError, match="one value per frame"):
        plots.plot_mouth_vs_audio(mouth[:10], energy, tmp_path / "bad.png")


def test_frame_grid(tmp_path):
    rng = np.random.default_rng(0)
    gt = (rng.random((3, 40, 32, 3)) * 255).astype(np.uint8)
    pred = np.clip(gt / 255.0 + 0.1 * rng.standard_normal(gt.shape), 0, 1)
    out = plots.frame_grid(gt, pred, tmp_path / "grid.png", labels=["t=0", "t=5", "t=10"])
    img = _decode(out)
    # figsize (2.2 * 3 + 0.8, 2.2 * 40 / 32 * 3 + 0.6) inches at 100 dpi
    assert img.shape[:2] == (round((2.2 * 40 / 32 * 3 + 0.6) * 100), round((2.2 * 3 + 0.8) * 100))
    with pytest.raises(ValueError, match="labels"):
        plots.frame_grid(gt, pred, tmp_path / "bad.png", labels=["a"])
    with pytest.raises(ValueError, match=".png"):
        plots.frame_grid(gt, pred, tmp_path / "grid.jpg")

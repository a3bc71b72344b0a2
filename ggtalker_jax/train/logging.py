"""Training logs: TensorBoard scalars/images (tensorboardX, in ``WORKDIR/tb``), a tqdm bar with step/s
and ETA, text messages, and PNG plots of predicted vs target curves (matplotlib, Agg backend).

Only process 0 writes (other processes get a silent logger), so multi-host runs log once.
"""
from __future__ import annotations

import logging as _pylogging
import os
import sys

import jax
import numpy as np

_log = _pylogging.getLogger("ggtalker_jax.train")


class TrainLogger:
    """``scalars(step, {name: float})``, ``image(step, name, [H,W,3] uint8)``, ``advance(step, loss)``
    (tqdm), ``info(text)`` (printed + python logging). Use as a context manager or call ``close()``."""

    def __init__(self, workdir: str, total_steps: int | None, start_step: int = 0, enabled: bool | None = None,
                 progress: bool = True, desc: str = "train"):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = workdir
        self._writer = None
        self._bar = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        os.makedirs(workdir, exist_ok=True)
        self._writer = SummaryWriter(os.path.join(workdir, "tb"))
        if progress:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr, desc=desc)

    def info(self, text: str) -> None:
        if not self.enabled:
            return
        _log.info(text)
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)
        sys.stdout.flush()

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"train/{name}", float(value), step)
        self._writer.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """image [H,W,3] uint8 (or float in [0,1])."""
        if not self.enabled:
            return
        self._writer.add_image(name, np.asarray(image), step, dataformats="HWC")
        self._writer.flush()

    def advance(self, step: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TrainLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_curves(predicted: np.ndarray, target: np.ndarray, names: list[str], path: str,
                title: str = "", fps: float | None = None) -> np.ndarray:
    """Plots predicted (solid) vs target (dashed) curves, one subplot per channel, to the PNG ``path``.

    predicted, target: [T, K] with K == len(names). Returns the rendered figure as [H,W,3] uint8.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted, target = np.asarray(predicted), np.asarray(target)
    if predicted.shape != target.shape or predicted.ndim != 2 or predicted.shape[1] != len(names):
        raise ValueError(f"plot_curves: predicted {predicted.shape} and target {target.shape} must both be "
                         f"[T, {len(names)}] (one column per name)")
    t = np.arange(predicted.shape[0]) / (fps or 1.0)
    k = len(names)
    fig, axes = plt.subplots(k, 1, figsize=(6, 1.4 * k + 0.6), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(t, target[:, i], "k--", lw=1, label="target")
        ax.plot(t, predicted[:, i], "C0-", lw=1.2, label="predicted")
        ax.set_ylabel(names[i], fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds" if fps else "frame", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image

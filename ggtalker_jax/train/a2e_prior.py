"""Audio-Expression (A2E) prior: expression windows from prepared datasets, the training driver (a
configuration of `ggtalker_jax.train.trainer` with `objectives.a2e_objective`) and held-out sample plots.

Each prepared dataset (`ggtalker_jax.data.dataset`) is one identity; the i-th gets style id i + 1
(0 = generic style). A training example is a window of ``window`` frames from the train split plus the
``prev`` clean frames just before it (motion context). The windowing is the prior's
(`avatar.PriorConfig.a2e_window` / `a2e_context`): inference cuts audio the same way
(`models.diffusion.predict_expressions`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax.data import dataset as dataset_lib
from ggtalker_jax.data.dataset import PreparedDataset
from ggtalker_jax.errors import DatasetError, UsageError
from ggtalker_jax.models import A2EConfig, A2ETransformer
from ggtalker_jax.models import diffusion
from ggtalker_jax.train import objectives, trainer


@dataclasses.dataclass(frozen=True)
class A2ETrainConfig:
    """window: frames per training window; prev: context frames before it (also the inference overlap).
    cond_drop_prob: classifier-free guidance dropout; no_prev_prob: fraction of steps without context.
    w_expr / w_vel / w_lip: weights of ``losses.a2e_loss``. sample_steps: DDIM steps of the sample plots.
    """

    window: int = 32
    prev: int = 8
    batch_size: int = 16
    cond_drop_prob: float = 0.1
    no_prev_prob: float = 0.2
    w_expr: float = 1.0
    w_vel: float = 1.0
    w_lip: float = 1.0
    sample_steps: int = 25

    def __post_init__(self):
        if self.window < 2 or self.prev < 0:
            raise ValueError(f"A2ETrainConfig: need window >= 2 and prev >= 0, got window={self.window}, "
                             f"prev={self.prev}")


@dataclasses.dataclass(frozen=True)
class PreparedClip:
    """One identity's A2E view: audio [T,Da] float32, expression [T,53] float32, fps, split {"train": (a,b), ...}."""

    path: str
    audio: np.ndarray
    expression: np.ndarray
    fps: float
    split: dict


# ------------------------------------------------------------------------------------------ data

def load_prepared(path: str) -> PreparedClip:
    """The A2E view of a prepared dataset (read and validated by `data.dataset.PreparedDataset`)."""
    data = PreparedDataset(path)
    tracking = data.require_tracking()
    expression = dataset_lib.expression53(tracking)
    return PreparedClip(str(data.dir), np.asarray(data.audio_features, np.float32), expression, data.fps,
                        {"train": tuple(data.train_range), "test": tuple(data.test_range)})


def window_index(clips: Sequence[PreparedClip], split: str, window: int, prev: int,
                 stride: int = 1) -> np.ndarray:
    """[N, 2] int64 rows (clip index, window start) of every window inside ``split`` whose ``prev``
    context frames are inside the split too."""
    rows = []
    for i, c in enumerate(clips):
        a, b = c.split.get(split, (0, 0))
        starts = np.arange(a + prev, b - window + 1, stride)
        rows.append(np.stack([np.full_like(starts, i), starts], axis=1))
    rows = np.concatenate(rows, axis=0) if rows else np.zeros((0, 2), np.int64)
    if len(rows) == 0:
        raise ValueError(f"no {split} window of {window}+{prev} frames fits in "
                         f"{[c.path for c in clips]}; use a smaller --window or longer clips")
    return rows


def make_train_iterator(clips: Sequence[PreparedClip], config: A2ETrainConfig, seed: int,
                        process_index: int | None = None, process_count: int | None = None):
    """Endless grain iterator of per-process batches {"audio" [b,W,Da], "expr" [b,W,53],
    "prev_expr" [b,P,53], "style_id" [b] int32}, b = batch_size / process_count. Each epoch is a new
    shuffle; windows are sharded by process. Has ``get_state()`` / ``set_state()`` for resuming."""
    import grain

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if config.batch_size % pc:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {pc} processes")
    rows = window_index(clips, "train", config.window, config.prev)
    w, p = config.window, config.prev

    def load(row):
        c = clips[int(row[0])]
        s = int(row[1])
        return {"audio": c.audio[s:s + w], "expr": c.expression[s:s + w],
                "prev_expr": c.expression[s - p:s], "style_id": np.int32(int(row[0]) + 1)}

    ds = (grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None)
          .slice(slice(pi, None, pc)).map(load).batch(config.batch_size // pc, drop_remainder=True))
    return iter(ds.to_iter_dataset())


# ------------------------------------------------------------------------------------------ loss

def make_loss_fn(model_config: A2EConfig, config: A2ETrainConfig,
                 lip_vertices_fn: Callable | None = None) -> trainer.LossFn:
    """The A2E prior's objective (`objectives.a2e_objective`) with this run's weights."""
    weights = objectives.A2EWeights(w_expr=config.w_expr, w_vel=config.w_vel, w_lip=config.w_lip,
                                    cond_drop_prob=config.cond_drop_prob, no_prev_prob=config.no_prev_prob)
    return objectives.a2e_objective(model_config, weights, context=config.prev, lip_fn=lip_vertices_fn)


def init_params(model_config: A2EConfig, seed: int = 0) -> Any:
    """Fresh A2ETransformer "params" collection."""
    model = A2ETransformer(model_config)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, model_config.expr_dim)),
                           jnp.zeros((1,), jnp.int32), jnp.zeros((1, 8, model_config.audio_dim)))
    return variables["params"]


# ------------------------------------------------------------------------------------------ sampling

def make_sample_fn(model_config: A2EConfig, config: A2ETrainConfig, clips: Sequence[PreparedClip],
                   workdir: str, logger=None) -> Callable[[Any, int], np.ndarray]:
    """sample_fn(state, step): DDIM-samples the first held-out ("test", else "train") window of the first
    clip and writes ``workdir/samples/a2e_step{step:07d}.png`` (jaw pose + first 3 expression curves,
    predicted vs target); logs it to TensorBoard when ``logger`` is given. Returns the image."""
    from ggtalker_jax.train.logging import plot_curves

    clip = clips[0]
    split = "test" if clip.split.get("test", (0, 0))[1] - clip.split.get("test", (0, 0))[0] \
        >= config.window + config.prev else "train"
    a, _ = clip.split[split]
    s = a + config.prev
    audio = jnp.asarray(clip.audio[s:s + config.window])[None]
    prev = jnp.asarray(clip.expression[s - config.prev:s])[None] if config.prev else None
    target = clip.expression[s:s + config.window]
    apply_fn = diffusion.make_a2e_apply_fn(A2ETransformer(model_config))
    schedule = diffusion.cosine_schedule(model_config.num_train_steps)
    steps = min(config.sample_steps, model_config.num_train_steps)

    @jax.jit
    def sample(params):
        return diffusion.ddim_sample(apply_fn, {"params": params}, audio, jax.random.PRNGKey(0), steps,
                                     1.0, prev, jnp.ones((1,), jnp.int32), schedule=schedule)[0]

    cols = [50, 51, 52, 0, 1, 2]
    names = ["jaw_0", "jaw_1", "jaw_2", "expr_0", "expr_1", "expr_2"]

    def sample_fn(state, step):
        pred = np.asarray(sample(state.params))
        path = os.path.join(workdir, "samples", f"a2e_step{step:07d}.png")
        image = plot_curves(pred[:, cols], target[:, cols], names, path, fps=clip.fps,
                            title=f"A2E step {step}: {split} window of {os.path.basename(clip.path)}")
        if logger is not None:
            logger.image(step, "a2e/sample", image)
        return image

    return sample_fn


# ------------------------------------------------------------------------------------------ driver

def train_a2e_prior(data_dirs: Sequence[str], workdir: str, model_config: A2EConfig,
                    train_config: trainer.TrainConfig, a2e_config: A2ETrainConfig,
                    lip_vertices_fn: Callable | None = None, mesh=None) -> Any:
    """Trains (or resumes) the A2E prior on the prepared dirs; returns the trained params (numpy tree)."""
    from ggtalker_jax.train.logging import TrainLogger

    if not data_dirs:
        raise UsageError("train_a2e_prior: no prepared dataset dirs given (--data)")
    clips = [load_prepared(d) for d in data_dirs]
    if len(clips) + 1 > model_config.num_styles:
        raise UsageError(f"{len(clips)} identities need {len(clips) + 1} style rows but the A2E config "
                         f"has num_styles={model_config.num_styles}")
    for c in clips:
        if c.audio.shape[1] != model_config.audio_dim:
            raise DatasetError(f"{c.path}: audio features have Da={c.audio.shape[1]} but the A2E config "
                               f"expects audio_dim={model_config.audio_dim}")
    data = make_train_iterator(clips, a2e_config, train_config.seed)
    params = init_params(model_config, train_config.seed)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
    with TrainLogger(workdir, train_config.num_steps) as logger:
        if has_ckpt:
            logger.info(f"found checkpoints in {ckpt_dir}")
        sample_fn = (make_sample_fn(model_config, a2e_config, clips, workdir, logger)
                     if train_config.sample_every else None)
        state = trainer.run_training(
            make_loss_fn(model_config, a2e_config, lip_vertices_fn), params, data, train_config, workdir,
            mesh=mesh, sample_fn=sample_fn, logger=logger,
            extra_meta={"kind": "a2e_prior", "data_dirs": [os.path.abspath(d) for d in data_dirs]})
    return jax.tree.map(np.asarray, state.params)


def export_prior(priors_dir: str, prior, params: Any, provenance: dict) -> None:
    """Writes the trained A2E params into the priors folder adaptation loads (``priors.update_priors``);
    `prior` is the `avatar.PriorConfig` (its A2E windowing must be the one trained)."""
    from ggtalker_jax import priors

    priors.update_priors(priors_dir, prior, {"a2e": params}, {"a2e": provenance})


# ------------------------------------------------------------------------------------------ synthetic

def make_synthetic_prepared_dir(out_dir: str, num_frames: int = 400, audio_dim: int = 320,
                                identity: int = 0, seed: int = 0, fps: float = 25.0) -> str:
    """Writes a small prepared dataset dir whose expressions are a fixed function of the audio (for tests
    and smoke runs): audio = temporally smoothed noise [T,Da]; jaw_pose[:, 0] = 0.5 * mean of the first 8
    audio channels (mouth opening), expression[:, :10] = a fixed linear map of 10 audio channels, plus a
    per-identity constant offset. 80% of the frames are "train", the rest "test". Returns ``out_dir``."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((num_frames + 8, audio_dim)).astype(np.float32)
    kernel = np.hanning(9).astype(np.float32)
    kernel /= kernel.sum()
    audio = np.stack([np.convolve(noise[:, j], kernel, mode="valid") for j in range(audio_dim)], 1)
    audio = (audio[:num_frames] * 2.5).astype(np.float32)
    mix = np.random.default_rng(1234).standard_normal((10, 10)).astype(np.float32) * 0.3
    offset = np.random.default_rng(5678 + identity).standard_normal(53).astype(np.float32) * 0.1
    expression = np.zeros((num_frames, 50), np.float32)
    expression[:, :10] = audio[:, :10] @ mix
    jaw = np.zeros((num_frames, 3), np.float32)
    jaw[:, 0] = 0.5 * audio[:, :8].mean(axis=1) * np.sqrt(8)
    expression += offset[:50]
    jaw += offset[50:]
    cut = int(num_frames * 0.8)
    dataset_lib.write_synthetic_dataset(
        out_dir, audio_features=audio, fps=fps, split={"train": [0, cut], "test": [cut, num_frames]},
        tracking={"expression": expression, "jaw_pose": jaw})
    return out_dir

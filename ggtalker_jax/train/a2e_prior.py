"""Audio-Expression (A2E) prior: expression windows from prepared datasets, the training driver (a
configuration of `ggtalker_jax.train.trainer` with `objectives.a2e_objective`), held-out measurements and
sample plots.

Each prepared dataset (`ggtalker_jax.data.dataset`) is one identity; the i-th gets style id i + 1 (0 =
the generic style, which windows are also trained with at `style_drop_prob`, so it drives new voices). A
training example is a window of the prior's ``a2e_window`` frames plus the ``a2e_context`` clean frames
just before it (`avatar.PriorConfig`): inference cuts audio the same way
(`models.diffusion.predict_expressions`), and context dropout trains the first window, which has none.
The A2E works on expressions normalised by statistics of the training frames; they are stored with the
prior (`PriorConfig.expr_mean` / `expr_std`) and applied at inference.

Held out: each clip's "test" split, or its last `holdout_fraction` of frames (`A2ETrainConfig`);
`held_out_report` samples those frames from their audio and measures how the generated mouth opening
follows the tracked one, against time-shuffled audio.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax import head as head_lib
from ggtalker_jax.audio.features import FeatureSpec
from ggtalker_jax.data import dataset as dataset_lib
from ggtalker_jax.data.dataset import PreparedDataset
from ggtalker_jax.errors import DatasetError, UsageError
from ggtalker_jax.models import A2EConfig, A2ETransformer
from ggtalker_jax.models import diffusion
from ggtalker_jax.train import objectives, trainer


@dataclasses.dataclass(frozen=True)
class A2ETrainConfig:
    """How the A2E prior trains (its windowing is the prior's: `avatar.PriorConfig.a2e_window/a2e_context`).

    cond_drop_prob: classifier-free guidance dropout; no_prev_prob: fraction of windows without context;
    style_drop_prob: fraction of windows with the generic style 0. w_expr / w_vel / w_lip: weights of
    ``losses.a2e_loss``. sample_steps: DDIM steps of the sample plots and held-out measurements.
    holdout_fraction: hold out the last fraction of each clip (None: each dataset's own test split).
    """

    batch_size: int = 16
    cond_drop_prob: float = 0.1
    no_prev_prob: float = 0.2
    style_drop_prob: float = 0.2
    w_expr: float = 1.0
    w_vel: float = 1.0
    w_lip: float = 1.0
    sample_steps: int = 10
    holdout_fraction: float | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"A2ETrainConfig: batch_size must be >= 1, got {self.batch_size}")
        if self.holdout_fraction is not None and not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"A2ETrainConfig: holdout_fraction must be in (0, 1), got {self.holdout_fraction}")


@dataclasses.dataclass(frozen=True)
class PreparedClip:
    """One identity's A2E view: audio [T,Da] float32, expression [T,53] float32, fps, split {"train": (a,b),
    "test": (b,c)}, features (`FeatureSpec`)."""

    path: str
    audio: np.ndarray
    expression: np.ndarray
    fps: float
    split: dict
    features: FeatureSpec = FeatureSpec()


# ------------------------------------------------------------------------------------------ data

def load_prepared(path: str, holdout_fraction: float | None = None) -> PreparedClip:
    """The A2E view of a prepared dataset (read and validated by `data.dataset.PreparedDataset`);
    `holdout_fraction` replaces its split by train = the first 1 - f of the frames, test = the rest."""
    data = PreparedDataset(path)
    tracking = data.require_tracking()
    expression = dataset_lib.expression53(tracking)
    split = {"train": tuple(data.train_range), "test": tuple(data.test_range)}
    if holdout_fraction is not None:
        cut = int(round(data.num_frames * (1.0 - holdout_fraction)))
        split = {"train": (0, cut), "test": (cut, data.num_frames)}
    return PreparedClip(str(data.dir), np.asarray(data.audio_features, np.float32), expression, data.fps, split,
                        data.feature_spec)


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
                         f"{[c.path for c in clips]}; use a smaller --a2e_window or longer clips")
    return rows


def training_window(clip: PreparedClip, start: int, window: int, context: int) -> dict:
    """The A2E's conditioning for the window of `clip` starting at `start`, as the trainer feeds it:
    {"audio" [W, Da], "expr" [W, 53], "prev_expr" [P, 53]} (unnormalised; the objective normalises)."""
    return {"audio": clip.audio[start:start + window], "expr": clip.expression[start:start + window],
            "prev_expr": clip.expression[start - context:start]}


def make_train_iterator(clips: Sequence[PreparedClip], prior: avatar_lib.PriorConfig, config: A2ETrainConfig,
                        seed: int, process_index: int | None = None, process_count: int | None = None):
    """Endless grain iterator of per-process batches {"audio" [b,W,Da], "expr" [b,W,53],
    "prev_expr" [b,P,53], "style_id" [b] int32} (W, P: the prior's window and context), b = batch_size /
    process_count. Each epoch is a new shuffle; windows are sharded by process. Has ``get_state()`` /
    ``set_state()`` for resuming."""
    import grain

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if config.batch_size % pc:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {pc} processes")
    w, p = prior.a2e_window, prior.a2e_context
    rows = window_index(clips, "train", w, p)

    def load(row):
        clip = int(row[0])
        return {**training_window(clips[clip], int(row[1]), w, p), "style_id": np.int32(clip + 1)}

    ds = (grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None)
          .slice(slice(pi, None, pc)).map(load).batch(config.batch_size // pc, drop_remainder=True))
    return iter(ds.to_iter_dataset())


def fit_expression_norm(clips: Sequence[PreparedClip]) -> diffusion.ExpressionNorm:
    """Normalisation statistics of the training frames of all clips."""
    return diffusion.ExpressionNorm.fit(np.concatenate([c.expression[slice(*c.split["train"])] for c in clips]))


def with_norm(prior: avatar_lib.PriorConfig, norm: diffusion.ExpressionNorm) -> avatar_lib.PriorConfig:
    return dataclasses.replace(prior, expr_mean=tuple(np.asarray(norm.mean).tolist()),
                               expr_std=tuple(np.asarray(norm.std).tolist()))


# ------------------------------------------------------------------------------------------ loss

def a2e_weights(config: A2ETrainConfig) -> objectives.A2EWeights:
    return objectives.A2EWeights(w_expr=config.w_expr, w_vel=config.w_vel, w_lip=config.w_lip,
                                 cond_drop_prob=config.cond_drop_prob, no_prev_prob=config.no_prev_prob,
                                 style_drop_prob=config.style_drop_prob)


def make_loss_fn(prior: avatar_lib.PriorConfig, config: A2ETrainConfig,
                 lip_vertices_fn: Callable | None = None) -> trainer.LossFn:
    """The A2E prior's objective (`objectives.a2e_objective`) with this run's weights, in the prior's
    normalised expression space."""
    return objectives.a2e_objective(prior.models.a2e, a2e_weights(config), prior.expression_norm,
                                    lip_fn=lip_vertices_fn)


def init_params(model_config: A2EConfig, seed: int = 0) -> Any:
    """Fresh A2ETransformer "params" collection."""
    model = A2ETransformer(model_config)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, model_config.expr_dim)),
                           jnp.zeros((1,), jnp.int32), jnp.zeros((1, 8, model_config.audio_dim)))
    return variables["params"]


# ------------------------------------------------------------------------------------------ measuring

def correlation(a, b) -> float:
    """Pearson correlation of two series [T] (0 when either is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 1e-12 else 0.0


def held_out_report(params: Any, prior: avatar_lib.PriorConfig, clips: Sequence[PreparedClip], *,
                    num_steps: int = 10, guidance: float = 1.0, seed: int = 0, split: str = "test",
                    head_model=None, style: str = "identity") -> dict:
    """Samples every clip's `split` frames from their audio (`diffusion.predict_expressions`, the prior's
    windowing, seed `seed`) and compares the generated mouth opening (head-model lip landmarks,
    `avatar.mouth_opening`) with the tracked one: Pearson correlation per clip and frame-weighted mean, the
    same with the audio's frames shuffled in time (the control), and the jaw-pitch correlation. style:
    "identity" (each clip's own style row) or "generic" (row 0)."""
    model = head_model or head_lib.load(prior.head_model)
    cfg = prior.models.a2e
    norm = prior.expression_norm
    rows, frames = [], 0
    rng = np.random.default_rng(seed)
    for i, c in enumerate(clips):
        a, b = c.split[split]
        if b - a < 4:
            continue
        sid = i + 1 if style == "identity" and i + 1 < cfg.num_styles else 0
        audio = c.audio[a:b]
        shuffled = audio[rng.permutation(b - a)]
        kw = dict(window=prior.a2e_window, context=prior.a2e_context, num_steps=num_steps, style_id=sid,
                  guidance=guidance, norm=norm)
        pred = np.asarray(diffusion.predict_expressions(cfg, params, audio, jax.random.PRNGKey(seed), **kw))
        ctrl = np.asarray(diffusion.predict_expressions(cfg, params, shuffled, jax.random.PRNGKey(seed), **kw))
        truth = avatar_lib.mouth_opening(model, c.expression[a:b])
        rows.append({"clip": os.path.basename(c.path), "frames": int(b - a),
                     "mouth_corr": correlation(avatar_lib.mouth_opening(model, pred), truth),
                     "mouth_corr_shuffled": correlation(avatar_lib.mouth_opening(model, ctrl), truth),
                     "jaw_corr": correlation(pred[:, 50], c.expression[a:b, 50])})
        frames += b - a
    if not rows:
        return {"frames": 0, "clips": []}
    w = np.array([r["frames"] for r in rows], np.float64)
    mean = {k: float(np.sum(w * [r[k] for r in rows]) / w.sum())
            for k in ("mouth_corr", "mouth_corr_shuffled", "jaw_corr")}
    return {"frames": int(frames), "split": split, "num_steps": num_steps, "guidance": guidance, "style": style,
            **mean, "clips": rows}


def make_sample_fn(prior: avatar_lib.PriorConfig, config: A2ETrainConfig, clips: Sequence[PreparedClip],
                   workdir: str, logger=None) -> Callable[[Any, int], np.ndarray]:
    """sample_fn(state, step): DDIM-samples the first held-out ("test", else "train") window of the first
    clip (with its context) and writes ``workdir/samples/a2e_step{step:07d}.png`` (jaw pose + first 3
    expression curves, predicted vs target); logs it to TensorBoard when ``logger`` is given. Returns the
    image."""
    from ggtalker_jax.train.logging import plot_curves

    model_config = prior.models.a2e
    norm = prior.expression_norm
    w, p = prior.a2e_window, prior.a2e_context
    clip = clips[0]
    test = clip.split.get("test", (0, 0))
    split = "test" if test[1] - test[0] >= w + p else "train"
    a, b = clip.split[split]
    s = a + p
    w = min(w, b - s)
    audio = jnp.asarray(clip.audio[s:s + w])[None]
    prev = norm.normalize(jnp.asarray(clip.expression[s - p:s]))[None] if p else None
    target = clip.expression[s:s + w]
    apply_fn = diffusion.make_a2e_apply_fn(A2ETransformer(model_config))
    schedule = diffusion.cosine_schedule(model_config.num_train_steps)
    steps = min(config.sample_steps, model_config.num_train_steps)

    @jax.jit
    def sample(params):
        z = diffusion.ddim_sample(apply_fn, {"params": params}, audio, jax.random.PRNGKey(0), steps,
                                  1.0, prev, jnp.ones((1,), jnp.int32), schedule=schedule)[0]
        return norm.denormalize(z)

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

def load_clips(data_dirs: Sequence[str], prior: avatar_lib.PriorConfig, config: A2ETrainConfig
               ) -> tuple[list[PreparedClip], avatar_lib.PriorConfig]:
    """The clips of `data_dirs` and the prior with their audio features (all clips must share one kind)."""
    if not data_dirs:
        raise UsageError("train_a2e_prior: no prepared dataset dirs given (--data)")
    clips = [load_prepared(d, config.holdout_fraction) for d in data_dirs]
    spec = clips[0].features
    for c in clips[1:]:
        if not spec.same_features(c.features):
            raise DatasetError(f"{c.path} has {c.features.describe()} but {clips[0].path} has {spec.describe()}; "
                               "prepare every clip of one prior with the same --features")
    prior = dataclasses.replace(prior, audio=spec)
    num_styles = prior.models.a2e.num_styles
    if len(clips) + 1 > num_styles:
        raise UsageError(f"{len(clips)} identities need {len(clips) + 1} style rows but the A2E config "
                         f"has num_styles={num_styles}")
    return clips, prior


def train_a2e_prior(data_dirs: Sequence[str], workdir: str, prior: avatar_lib.PriorConfig,
                    train_config: trainer.TrainConfig, a2e_config: A2ETrainConfig = A2ETrainConfig(),
                    lip_vertices_fn: Callable | None = None, mesh=None) -> tuple[Any, avatar_lib.PriorConfig]:
    """Trains (or resumes) the A2E prior on the prepared dirs with `prior`'s windowing. Returns the trained
    params (numpy tree) and the prior they define: `prior` with the clips' audio features and the
    expression normalisation of their training frames."""
    from ggtalker_jax.train.logging import TrainLogger

    clips, prior = load_clips(data_dirs, prior, a2e_config)
    prior = with_norm(prior, fit_expression_norm(clips))
    model_config = prior.models.a2e
    data = make_train_iterator(clips, prior, a2e_config, train_config.seed)
    params = init_params(model_config, train_config.seed)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
    with TrainLogger(workdir, train_config.num_steps) as logger:
        if has_ckpt:
            logger.info(f"found checkpoints in {ckpt_dir}")
        sample_fn = (make_sample_fn(prior, a2e_config, clips, workdir, logger)
                     if train_config.sample_every else None)
        state = trainer.run_training(
            make_loss_fn(prior, a2e_config, lip_vertices_fn), params, data, train_config, workdir,
            mesh=mesh, sample_fn=sample_fn, logger=logger,
            extra_meta={"kind": "a2e_prior", "data_dirs": [os.path.abspath(d) for d in data_dirs]})
    return jax.tree.map(np.asarray, state.params), prior


def export_prior(priors_dir: str, prior, params: Any, provenance: dict) -> None:
    """Writes the trained A2E params into the priors folder adaptation loads (``priors.update_priors``);
    `prior` is the `avatar.PriorConfig` `train_a2e_prior` returned (its A2E definition: windowing, audio
    features and normalisation, is the one trained)."""
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

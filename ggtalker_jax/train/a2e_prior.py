"""Audio-Expression (A2E) prior: data windows from prepared dataset dirs, the diffusion training loss,
the training driver, held-out sample plots, and ``predict_expressions`` for inference.

Prepared dataset dir (one identity each; the i-th dir gets style id i + 1, 0 = generic style):
    meta.json            {"fps", "num_frames", "split": {"train": [a, b], "test": [b, c]}, ...}
    audio_features.npy   [T, Da] float32 (frame-aligned audio features)
    tracking.npz         expression [T, 50], jaw_pose [T, 3], ...   (target = concat -> [T, 53])

A training example is a window of ``window`` frames from the train split plus the ``prev`` clean frames
just before it (motion context). Loss: x0-prediction diffusion objective at uniformly random timesteps
with classifier-free condition dropout (``cond_drop_prob``) = ``losses.a2e_loss`` (expression L2 +
velocity + optional lip-vertex term) on the predicted clean window. With probability
``no_prev_prob`` a step trains without the previous-frame context (the first window at inference has
none).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax.models import A2EConfig, A2ETransformer
from ggtalker_jax.models import diffusion
from ggtalker_jax.train import losses, trainer

EXPR_KEYS = ("expression", "jaw_pose")


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
    """One identity: audio [T,Da] float32, expression [T,53] float32, fps, split {"train": (a,b), ...}."""

    path: str
    audio: np.ndarray
    expression: np.ndarray
    fps: float
    split: dict


# ------------------------------------------------------------------------------------------ data

def load_prepared(path: str) -> PreparedClip:
    """Reads a prepared dataset dir (see module docstring); clear errors on missing/corrupt files."""
    meta_path = os.path.join(path, "meta.json")
    audio_path = os.path.join(path, "audio_features.npy")
    track_path = os.path.join(path, "tracking.npz")
    for p in (meta_path, audio_path, track_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} is missing: {path} is not a prepared dataset dir (run "
                                    "`ggtalker prepare` on the video first)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        audio = np.load(audio_path).astype(np.float32)
        with np.load(track_path) as tr:
            missing = [k for k in EXPR_KEYS if k not in tr.files]
            if missing:
                raise ValueError(f"{track_path} lacks {missing} (has {tr.files})")
            expression = np.concatenate([tr["expression"], tr["jaw_pose"]], axis=-1).astype(np.float32)
    except (OSError, json.JSONDecodeError, EOFError) as e:
        raise ValueError(f"{path}: cannot read prepared dataset files ({e}); re-run `ggtalker prepare`") from e
    if audio.ndim != 2 or expression.ndim != 2 or expression.shape[1] != 53:
        raise ValueError(f"{path}: expected audio_features [T,Da] and expression+jaw_pose [T,53], got "
                         f"{audio.shape} and {expression.shape}")
    t = min(len(audio), len(expression))
    if abs(len(audio) - len(expression)) > 1:
        raise ValueError(f"{path}: audio_features has {len(audio)} frames but tracking has "
                         f"{len(expression)}; they must be frame-aligned")
    audio, expression = audio[:t], expression[:t]
    for name, arr in (("audio_features.npy", audio), ("tracking.npz expression/jaw_pose", expression)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{os.path.join(path, name)} contains NaN/Inf values; re-run `ggtalker prepare`")
    split = {k: (int(v[0]), min(int(v[1]), t)) for k, v in meta.get("split", {"train": [0, t]}).items()}
    return PreparedClip(path, audio, expression, float(meta.get("fps", 25.0)), split)


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
    """loss_fn(params, batch, rng) -> (loss, {"expr", "vel"[, "lip"]}) for ``trainer.run_training``.
    ``params`` is the A2ETransformer "params" collection. lip_vertices_fn: [B,T,53] -> [B,T,K,3]."""
    model = A2ETransformer(model_config)
    schedule = diffusion.cosine_schedule(model_config.num_train_steps)

    def loss_fn(params, batch, rng):
        k_diff, k_drop, k_prev = jax.random.split(rng, 3)
        x0 = batch["expr"]
        tgt = diffusion.training_targets(schedule, x0, k_diff, config.cond_drop_prob)

        def predict(prev_expr):
            return model.apply({"params": params}, tgt["noisy"], tgt["timestep"], batch["audio"],
                               prev_expr, batch["style_id"], tgt["cond_mask"], train=True,
                               rngs={"dropout": k_drop})

        if config.prev > 0:
            use_prev = jax.random.uniform(k_prev) >= config.no_prev_prob
            pred = jax.lax.cond(use_prev, lambda: predict(batch["prev_expr"]), lambda: predict(None))
        else:
            pred = predict(None)
        return losses.a2e_loss(pred, x0, lip_vertices_fn, config.w_expr, config.w_vel, config.w_lip)

    return loss_fn


def init_params(model_config: A2EConfig, seed: int = 0) -> Any:
    """Fresh A2ETransformer "params" collection."""
    model = A2ETransformer(model_config)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, model_config.expr_dim)),
                           jnp.zeros((1,), jnp.int32), jnp.zeros((1, 8, model_config.audio_dim)))
    return variables["params"]


# ------------------------------------------------------------------------------------------ sampling

def predict_expressions(config: A2EConfig, params: Any, audio_features, rng, num_steps: int = 25,
                        style_id: int = 0, window: int = 32, overlap: int = 8,
                        guidance: float = 1.0) -> jax.Array:
    """audio_features [T,Da] -> expressions [T,53] (50 expression + 3 jaw pose), sampled window by window
    with DDIM (``diffusion.sample_long``). ``params``: the A2ETransformer "params" collection (what the
    priors' "a2e" entry holds). ``num_steps`` is capped at the model's training steps."""
    audio_features = jnp.asarray(audio_features, jnp.float32)
    if audio_features.ndim != 2 or audio_features.shape[1] != config.audio_dim:
        raise ValueError(f"predict_expressions audio_features: expected [T,{config.audio_dim}], got "
                         f"{audio_features.shape}")
    if not 0 <= style_id < config.num_styles:
        raise ValueError(f"predict_expressions style_id: {style_id} not in [0, {config.num_styles})")
    # jnp leaves: A2ETransformer indexes a param table with traced ints, which numpy leaves cannot do.
    params = jax.tree.map(jnp.asarray, params)
    apply_fn = diffusion.make_a2e_apply_fn(A2ETransformer(config))
    schedule = diffusion.cosine_schedule(config.num_train_steps)
    return diffusion.sample_long(apply_fn, {"params": params}, audio_features, rng, window,
                                 min(overlap, window), schedule=schedule,
                                 num_steps=min(num_steps, config.num_train_steps), guidance=guidance,
                                 style_id=style_id, expr_dim=config.expr_dim)


def make_sample_fn(model_config: A2EConfig, config: A2ETrainConfig, clips: Sequence[PreparedClip],
                   workdir: str, logger=None) -> Callable[[Any, int], np.ndarray]:
    """sample_fn(params, step): DDIM-samples the first held-out ("test", else "train") window of the first
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

    def sample_fn(params, step):
        pred = np.asarray(sample(params))
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
        raise ValueError("train_a2e_prior: no prepared dataset dirs given (--data)")
    clips = [load_prepared(d) for d in data_dirs]
    if len(clips) + 1 > model_config.num_styles:
        raise ValueError(f"{len(clips)} identities need {len(clips) + 1} style rows but the A2E config "
                         f"has num_styles={model_config.num_styles}")
    for c in clips:
        if c.audio.shape[1] != model_config.audio_dim:
            raise ValueError(f"{c.path}: audio features have Da={c.audio.shape[1]} but the A2E config "
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


def export_prior(priors_dir: str, avatar_config, params: Any, provenance: dict) -> None:
    """Writes the trained A2E params into the priors folder adaptation loads (``priors.update_priors``)."""
    from ggtalker_jax.train import priors

    priors.update_priors(priors_dir, avatar_config, {"a2e": params}, {"a2e": provenance})


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
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "audio_features.npy"), audio)
    np.savez(os.path.join(out_dir, "tracking.npz"), expression=expression, jaw_pose=jaw,
             global_rot=np.zeros((num_frames, 3), np.float32))
    cut = int(num_frames * 0.8)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump({"fps": fps, "num_frames": num_frames, "split": {"train": [0, cut], "test": [cut, num_frames]},
                   "synthetic": True}, f)
    return out_dir

"""Customized adaptation: the priors fitted to one identity in GGTalker's five stages (supplementary Table 1).

    stage                    trains                                        paper time
    1_uv_map                 the identity's UV Gaussian map refinement      2 min
    2_generator_head         generator + head params (shape, pose, expr)    3 min
    3_a2e                    the A2E (diffusion objective on this voice)    5 min
    4_a2e_generator_head     A2E + generator + head                         5 min
    5_all                    all of 4 + colour MLP + Body Inpainter         5 min

Every stage is a configuration of the training core (`ggtalker_jax.train.trainer`): its parameter groups
train, everything else is frozen by label (`TrainConfig.trainable`), its terms of
`objectives.adaptation_objective` are on. The A2E sees its windows as at inference (the prior's window
length, the previous frames as context, context dropout); in stages 4-5 half the rendered frames show
expressions the A2E generates from the audio (a few DDIM steps from noise, gradient through the last), so
the image loss shapes the A2E, while the other half keep fitting the head parameters (shape, pose and
per-frame expression corrections all learn in stages 2, 4 and 5). A stage ends after `steps` steps or `minutes` of wall time,
whichever comes first. Its training state is checkpointed as it runs (a killed run continues where it
stopped), and the avatar's parameters are saved after every stage (`ggtalker_jax.workdir`); a rerun with
the same dataset and schedule resumes, anything else is refused.

`ggtalker adapt --data PREPARED_DIR --workdir DIR [--priors DIR] [--schedule paper|small]`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax import head as head_lib
from ggtalker_jax import priors as priors_lib
from ggtalker_jax import workdir as workdir_lib
from ggtalker_jax.data import dataset as dataset_lib
from ggtalker_jax.data import loader as loader_lib
from ggtalker_jax.errors import DatasetError, UsageError
from ggtalker_jax.files import DirectoryLock, atomic_write_json
from ggtalker_jax.train import objectives, trainer
from ggtalker_jax.train.logging import TrainLogger

log = logging.getLogger(__name__)

PARAM_GROUPS = ("uv_delta", "generator", "head", "a2e", "color_mlp", "inpainter")
VISUAL_GROUPS = ("uv_delta", "generator", "head", "color_mlp", "inpainter")
UNLIMITED_STEPS = 10 ** 9

# What `ggtalker adapt` uses unless told otherwise. --schedule small (a CPU): frame size S, UV resolution R
# (R x R texels, nearly all bound: R = 128 gives 16k Gaussians on the open head) and steps per stage, sized
# for 2 CPU cores (experiments/bench_fidelity.py); --schedule paper: GGTalker's 512 px avatar, 512 x 512 UV map.
CPU_IMAGE_SIZE, CPU_UV_RESOLUTION, CPU_STEPS_PER_STAGE, CPU_LEARNING_RATE = 256, 128, 60, 3e-3
# Stage 1's rate on a CPU: the UV map's per-texel colours, sizes and offsets need large steps to reach the
# face's detail in a few dozen steps. Stage 1 alone for 60 steps, german_anchor_20s, 6 test frames with their
# tracked expressions (2 CPU cores, an ad-hoc script on `adapt`): 3e-3 21.96 dB, 1e-2 24.00, 3e-2 27.95,
# 1e-1 29.54, 3e-1 27.87; the full runs are in experiments/bench_fidelity.py's docstring.
CPU_UV_MAP_LEARNING_RATE = 0.1
# Stage 1 runs this many times the other stages' steps on a CPU: a step of it costs ~2/3 of a generator
# stage's, and it is where the face's detail is learned (stage 1 alone at 0.1, as above: 60 steps 29.54 dB,
# 120 steps 30.26).
UV_MAP_STEPS_FACTOR = 2
# The Body Inpainter's size on a CPU: the bundled prior's inpainter was trained on 64 px frames (its
# priors.json); run at 256 px it leaves the hole around the head dark (experiments/bench_fidelity.py).
CPU_INPAINTER_SIZE = 64
PAPER_IMAGE_SIZE, PAPER_UV_RESOLUTION = 512, 512
# The identity's per-frame corrections [T, k]: each step's batch touches a few of their rows, so they learn
# row by row (`trainer.row_sparse_adam`); with dense Adam every frame ever sampled kept drifting on stale
# momentum, 20 px off its landmarks after stage 2, and the shared maps learned from mis-posed frames.
PER_FRAME_PARAMS = ("head/expr_delta", "head/pose_delta")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One adaptation stage: which parameter groups train, for how long, how fast."""
    name: str
    trainable: tuple[str, ...]
    minutes: float
    steps: int | None = None          # None: run for `minutes` only
    learning_rate: float = 1e-3

    def __post_init__(self):
        unknown = set(self.trainable) - set(PARAM_GROUPS)
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown parameter groups {sorted(unknown)}; "
                             f"choose from {PARAM_GROUPS}")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"stage {self.name!r}: steps must be >= 1, got {self.steps}")
        if not self.minutes > 0 or not np.isfinite(self.minutes):
            raise UsageError(f"stage {self.name!r}: minutes must be a finite number > 0, got {self.minutes}")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            raise UsageError(f"stage {self.name!r}: the learning rate must be a finite number > 0, got "
                             f"{self.learning_rate}")

    def terms(self, render_diffusion_steps: int = 4) -> objectives.AdaptationTerms:
        """The objective's terms this stage needs: images when a visual group trains, the A2E's diffusion
        objective when the A2E trains, and both together render frames from expressions the A2E generates;
        the landmark term when the head parameters train."""
        visual = any(g in self.trainable for g in VISUAL_GROUPS)
        a2e = "a2e" in self.trainable
        return objectives.AdaptationTerms(photometric=visual, a2e=a2e, a2e_render=visual and a2e,
                                          render_diffusion_steps=render_diffusion_steps,
                                          landmarks="head" in self.trainable)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paper_schedule(scale_minutes: float = 1.0, learning_rate: float = 1e-4,
                   uv_map_learning_rate: float | None = None) -> tuple[Stage, ...]:
    """GGTalker's Table 1: 2 + 3 + 5 + 5 + 5 = 20 minutes (times `scale_minutes`), every stage at
    `learning_rate` but stage 1 (the UV map alone) at `uv_map_learning_rate` (None: 10 x `learning_rate`)."""
    m = scale_minutes
    uv_lr = 10 * learning_rate if uv_map_learning_rate is None else uv_map_learning_rate
    return (
        Stage("1_uv_map", ("uv_delta",), 2 * m, learning_rate=uv_lr),
        Stage("2_generator_head", ("generator", "head"), 3 * m, learning_rate=learning_rate),
        Stage("3_a2e", ("a2e",), 5 * m, learning_rate=learning_rate),
        Stage("4_a2e_generator_head", ("a2e", "generator", "head"), 5 * m, learning_rate=learning_rate),
        Stage("5_all", ("a2e", "generator", "head", "color_mlp", "inpainter"), 5 * m,
              learning_rate=learning_rate),
    )


def small_schedule(steps: int | None = None, learning_rate: float = CPU_LEARNING_RATE,
                   uv_map_learning_rate: float = CPU_UV_MAP_LEARNING_RATE,
                   uv_map_steps: int | None = None) -> tuple[Stage, ...]:
    """The same five stages by step count, for CPUs, demos and tests: `steps` per stage (default
    `CPU_STEPS_PER_STAGE`) but stage 1, `uv_map_steps` (default `UV_MAP_STEPS_FACTOR` x `steps`: its steps
    are the cheapest, the UV map alone); stage 1 at `uv_map_learning_rate`, the others at `learning_rate`."""
    steps = CPU_STEPS_PER_STAGE if steps is None else steps
    uv_steps = UV_MAP_STEPS_FACTOR * steps if uv_map_steps is None else uv_map_steps
    return tuple(dataclasses.replace(s, steps=uv_steps if s.name == "1_uv_map" else steps, minutes=60.0)
                 for s in paper_schedule(learning_rate=learning_rate, uv_map_learning_rate=uv_map_learning_rate))


def default_avatar_config(schedule: str = "small", image_size: int | None = None,
                          uv_resolution: int | None = None, inpainter_size: int | None = None
                          ) -> avatar_lib.AvatarConfig:
    """The avatar's run-time choices for `ggtalker adapt`: frame size S, UV resolution R and the Body
    Inpainter's size as given, else the schedule's defaults (small: `CPU_IMAGE_SIZE` / `CPU_UV_RESOLUTION`
    / `CPU_INPAINTER_SIZE`; paper: 512 / 512 / S). The prior's definition replaces the config's own when
    adapting. Bad values are a UsageError naming the flag."""
    paper = schedule == "paper"
    s = image_size or (PAPER_IMAGE_SIZE if paper else CPU_IMAGE_SIZE)
    r = uv_resolution or (PAPER_UV_RESOLUTION if paper else CPU_UV_RESOLUTION)
    n = inpainter_size or (s if paper else min(CPU_INPAINTER_SIZE, s))
    if s < 16 or s % 16:
        raise UsageError(f"--image_size {s}: must be a multiple of 16 (>= 16), e.g. 256 or 512")
    if not avatar_lib.MIN_UV_RESOLUTION <= r <= avatar_lib.MAX_UV_RESOLUTION:
        raise UsageError(f"--uv_resolution {r}: must be in [{avatar_lib.MIN_UV_RESOLUTION}, "
                         f"{avatar_lib.MAX_UV_RESOLUTION}] (R x R texels), e.g. 128 or 256")
    if n < 16 or n % 16 or n > s:
        raise UsageError(f"--inpainter_size {n}: must be a multiple of 16 (>= 16) and at most --image_size {s}, "
                         "e.g. 64")
    return avatar_lib.AvatarConfig(image_size=s, uv_resolution=r, inpainter_size=n)


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Settings shared by the stages (the stages themselves are passed separately)."""
    batch_size: int = 2                 # frames rendered per step (each with its own A2E window; in stages 4-5
                                        # half of them from the A2E's generated expressions)
    style_id: int = 0                   # A2E style row this identity adapts (0: the prior's generic style)
    render_diffusion_steps: int = 4     # stages 4-5: DDIM steps from noise of the rendered A2E expressions
    w_a2e: float = 1.0
    image: objectives.ImageWeights = objectives.ImageWeights()
    a2e: objectives.A2EWeights = objectives.A2EWeights()
    uv_init: avatar_lib.UVInit = avatar_lib.UVInit()   # how the UV refinement starts (`avatar.initial_uv_delta`)
    texture_frames: int = 8             # training frames whose colours start the texture (0: the prior's)
    per_frame_lr_scale: float = 0.1     # learning rate of the per-frame corrections (PER_FRAME_PARAMS) relative
                                        # to the stage's (tracking is already within ~1 px)
    checkpoint_every: int = 50          # steps between checkpoints of a running stage
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"adapt: batch size must be >= 1, got {self.batch_size}")
        if not (self.per_frame_lr_scale >= 0 and np.isfinite(self.per_frame_lr_scale)):
            raise UsageError(f"adapt: per_frame_lr_scale must be a finite number >= 0, got {self.per_frame_lr_scale}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def style_row(static: avatar_lib.AvatarStatic, cfg: AdaptConfig) -> int:
    return cfg.style_id % static.config.models.a2e.num_styles


def subject_loader(subject: dataset_lib.SubjectView, static: avatar_lib.AvatarStatic, cfg: AdaptConfig,
                   seed: int):
    """Endless, resumable batches of training frames with their A2E windows at the avatar's size."""
    return loader_lib.make_loader(subject.root, loader_lib.LoaderConfig(
        batch_size=cfg.batch_size, seed=seed, image_size=static.config.image_size, with_tracking=True,
        window=static.config.prior.a2e_window, window_context=static.config.prior.a2e_context,
        mouth_mask=cfg.image.mouth_weight != 1.0, num_threads=2,
        prefetch_buffer_size=4, shard_index=0, shard_count=1))


def run_stage(static: avatar_lib.AvatarStatic, subject: dataset_lib.SubjectView, uv_input, params: dict,
              stats: dict, stage: Stage, cfg: AdaptConfig, run_dir: str, index: int = 0,
              progress: bool = True) -> tuple[dict, dict]:
    """Optimises `stage.trainable` for `stage.steps` steps or `stage.minutes`, whichever ends first,
    resuming from `run_dir` when it holds a checkpoint of this stage. Returns (params, record) with record
    the stage's name, groups, steps, seconds and final metrics."""
    loss_fn = objectives.adaptation_objective(static, uv_input, style_row(static, cfg),
                                              stage.terms(cfg.render_diffusion_steps), cfg.image, cfg.a2e,
                                              cfg.w_a2e)
    tc = trainer.TrainConfig(num_steps=stage.steps or UNLIMITED_STEPS, learning_rate=stage.learning_rate,
                             warmup_steps=0, final_lr_fraction=1.0, weight_decay=0.0, grad_clip_norm=1.0,
                             checkpoint_every=cfg.checkpoint_every, keep_checkpoints=1, log_every=1,
                             seed=cfg.seed + index, trainable=stage.trainable, max_seconds=60.0 * stage.minutes,
                             per_row=PER_FRAME_PARAMS, per_row_lr_scale=cfg.per_frame_lr_scale)
    data = subject_loader(subject, static, cfg, seed=cfg.seed * 1000 + index)
    t0 = time.monotonic()
    with TrainLogger(run_dir, stage.steps, progress=progress, desc=f"adapt {stage.name}") as logger:
        state = trainer.run_training(loss_fn, params, data, tc, run_dir, batch_stats=stats, logger=logger,
                                     checkpoint_dir=os.path.join(run_dir, "state"),
                                     extra_meta={"stage": stage.name})
    run = trainer.read_run_record(os.path.join(run_dir, "state"))
    record = {"name": stage.name, "trainable": list(stage.trainable), "steps": int(run.get("step", 0)),
              "seconds": round(time.monotonic() - t0, 2), "final": run.get("metrics", {})}
    return jax.tree.map(np.asarray, state.params), record


def adapt(data_dir: str, workdir: str, priors: str | None = None, stages=None, cfg: AdaptConfig | None = None,
          avatar_config: avatar_lib.AvatarConfig | None = None, progress: bool = True,
          overwrite: bool = False, head: str | None = None, landmark_embedding: str | None = None) -> dict:
    """Adapts the priors to the prepared subject in `data_dir`; writes `workdir` (a valid --workdir for
    render and eval). Resumes an interrupted run of the same dataset and schedule; refuses anything else
    unless `overwrite` (which discards the workdir's avatar). `avatar_config` carries the run-time choices
    (image_size S, uv_resolution R; default `default_avatar_config()`), its prior is replaced by the
    loaded one's. The avatar's head model is the dataset's (`head` / `landmark_embedding`: new paths of
    its files when they moved; priors of another head model are refused, see `ggtalker_jax.priors`).
    Returns a summary dict."""
    stages = tuple(stages or small_schedule())
    cfg = cfg or AdaptConfig()
    head_record = head_lib.read_record(data_dir)
    model = workdir_lib.load_head_model(head_record, head, landmark_embedding,
                                        where=os.path.join(data_dir, dataset_lib.TRACKING), error=DatasetError)
    requested = avatar_config.prior if avatar_config else None
    if priors:
        priors_lib.check_priors_head_model(priors, head_record, data_dir)
    elif priors_lib.head_model_name(head_record) != "open":       # the bundled priors are the open head's
        requested = dataclasses.replace(requested or avatar_lib.PriorConfig(),
                                        head_model=priors_lib.head_model_name(head_record))
    os.makedirs(workdir, exist_ok=True)
    with DirectoryLock(workdir, "ggtalker adapt"):
        if priors and requested is not None:     # the head model was checked above, by content
            requested = dataclasses.replace(requested, head_model=priors_lib.read_prior_config(priors)[0].head_model)
        network, prior, source = priors_lib.load_or_init(priors, requested)
        prior = dataclasses.replace(prior, head_model=priors_lib.head_model_name(head_record))  # its file here
        config = dataclasses.replace(avatar_config or default_avatar_config(), prior=prior)
        config = dataclasses.replace(config, uv_resolution=config.resolved_uv_resolution)   # recorded as chosen
        static = avatar_lib.AvatarStatic.build(config, model)
        subject = dataset_lib.SubjectView(data_dir, config.image_size)
        check_features(subject, prior, source)
        record = workdir_lib.record_for(
            data_dir, config, source, priors_lib.digest(priors or priors_lib.BUNDLED) if source != "fresh" else None,
            style_row(static, cfg), [s.to_dict() for s in stages], cfg.to_dict(), head_model=model)
        previous = workdir_lib.read_record(workdir)
        if previous is not None and overwrite:
            shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
            if os.path.exists(os.path.join(workdir, workdir_lib.SUMMARY)):
                os.remove(os.path.join(workdir, workdir_lib.SUMMARY))
            previous = None
        done = workdir_lib.check_rerun(workdir, record, previous) if previous is not None else 0
        summary = {"data": record["data"], "workdir": os.path.abspath(workdir), "stages": []}
        if previous is not None:
            old = _read_json(os.path.join(workdir, workdir_lib.SUMMARY))
            summary["stages"] = old.get("stages", [])[:done]
        net_params = {k: v for k, v in network.items() if k not in avatar_lib.STATS_GROUPS}
        stats = {k: network[k] for k in avatar_lib.STATS_GROUPS}
        params = avatar_lib.init_identity_params(net_params, static, subject.num_frames, subject.tracking["shape"])
        if done:
            restored = workdir_lib.restore_params(workdir, {**params, **stats})
            if restored is None:
                done = 0
            else:
                full, done = restored
                params = {k: v for k, v in full.items() if k not in avatar_lib.STATS_GROUPS}
        if done == len(stages):
            print(f"{workdir}: all {len(stages)} stages are already finished; nothing to do "
                  "(--overwrite adapts again from the priors)")
        elif done:
            print(f"resuming adaptation after stage {done} ({stages[done - 1].name})")
        record["stages_done"] = done
        workdir_lib.write_record(workdir, record)
        uv_input = avatar_lib.subject_uv_input(static, subject)
        if not done:
            params["uv_delta"] = initial_uv_delta(static, subject, {**params, **stats}, uv_input, cfg)
        for i, stage in enumerate(stages):
            if i < done:
                continue
            run_dir = workdir_lib.stage_run_dir(workdir, i)
            params, stage_record = run_stage(static, subject, uv_input, params, stats, stage, cfg, run_dir, i,
                                             progress)
            summary["stages"].append(stage_record)
            workdir_lib.save_stage_params(workdir, i + 1, {**params, **stats})
            record["stages_done"] = i + 1
            workdir_lib.write_record(workdir, record)
            atomic_write_json(os.path.join(workdir, workdir_lib.SUMMARY), summary)
            shutil.rmtree(run_dir, ignore_errors=True)
        atomic_write_json(os.path.join(workdir, workdir_lib.SUMMARY), summary)
    return summary


def initial_uv_delta(static: avatar_lib.AvatarStatic, subject: dataset_lib.SubjectView, params: dict, uv_input,
                     cfg: AdaptConfig) -> dict:
    """The identity's UV refinement before stage 1 (`avatar.initial_uv_delta`): Gaussian sizes from the UV
    layout and, with `cfg.texture_frames`, the colours of up to that many training frames where the face
    was found (the reference first, the rest spread over the split), unwrapped with their tracked meshes."""
    zero = {k: jnp.zeros_like(v) for k, v in params["uv_delta"].items()}
    maps = jax.jit(lambda p: avatar_lib.generate_uv_maps({**p, "uv_delta": zero}, static, uv_input))(params)
    texture, residual = None, None
    if cfg.texture_frames and cfg.uv_init.texture:
        a, b, _ = subject.split
        found = np.flatnonzero(subject.landmarks_found[a:b]) + a
        if len(found):
            pick = found[np.unique(np.linspace(0, len(found) - 1, cfg.texture_frames).round().astype(int))]
            pick = np.unique(np.concatenate([[subject.reference_index], pick]))[:cfg.texture_frames]
            frame = {k: jnp.asarray(v) for k, v in subject.frame_params(pick).items()}
            shape = jnp.asarray(subject.tracking["shape"])
            texture = jax.jit(lambda f, fr: avatar_lib.unwrap_texture(
                static, fr, avatar_lib.posed_vertices(static, shape, f), jnp.asarray(subject.K)))(
                frame, jnp.asarray(subject.frames(pick)))
            ref = subject.expression53[subject.reference_index]
            residual = avatar_lib.colour_residual_map(params, static, maps, ref)
    return {k: jnp.asarray(v) for k, v in avatar_lib.initial_uv_delta(static, maps, texture, cfg.uv_init,
                                                                       residual).items()}


def check_features(subject: dataset_lib.SubjectView, prior: avatar_lib.PriorConfig, source: str) -> None:
    """Refuses a subject whose audio features are not those the prior's A2E reads."""
    have = subject.dataset.feature_spec
    if not prior.audio.same_features(have):
        raise DatasetError(f"{subject.root} was prepared with {have.describe()}, but the priors ({source}) read "
                           f"{prior.audio.describe()}; prepare the subject with the prior's features (`ggtalker "
                           "prepare --features ...`) or use priors trained on this kind")



def _read_json(path: str) -> dict:
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}

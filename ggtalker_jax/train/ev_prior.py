"""The Expression-Visual prior: Identity-Gaussian Generator + colour MLP + Body Inpainter over many
identities, so that one reference image already gives a good UV Gaussian head (GGTalker section 3).

A configuration of the training core (`ggtalker_jax.train.trainer`): the data are the grain loader's
frame samples with each identity's reference frame (`ggtalker_jax.data.loader`, `with_reference`), the
objective is `objectives.ev_prior_objective`, the generator, colour MLP and inpainter train (BatchNorm on
batch statistics), the A2E is frozen. `train_small_priors` also fits a small A2E prior on the same
subjects (`ggtalker_jax.train.a2e_prior`) so the demo has complete priors in minutes on a CPU.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax import priors as priors_lib
from ggtalker_jax.data import loader as loader_lib
from ggtalker_jax.train import objectives, trainer

log = logging.getLogger(__name__)

EV_GROUPS = ("generator", "color_mlp", "inpainter")


@dataclasses.dataclass(frozen=True)
class EVPriorConfig:
    learning_rate: float = 3e-3
    batch_size: int = 2           # frames rendered per step (each with its identity's reference)
    weights: objectives.ImageWeights = objectives.ImageWeights(w_scale=0.1)
    seed: int = 0


def make_iterator(data_dirs: list[str], image_size: int, config: EVPriorConfig):
    """Endless, resumable batches of training frames with their identities' references (at `image_size`)."""
    return loader_lib.make_loader(data_dirs, loader_lib.LoaderConfig(
        batch_size=config.batch_size, seed=config.seed, image_size=image_size, with_tracking=True,
        with_reference=True, mouth_mask=config.weights.mouth_weight != 1.0, num_threads=2,
        prefetch_buffer_size=4))


def split_stats(network_params: dict) -> tuple[dict, dict]:
    """Network params -> (trainable params, BatchNorm statistics)."""
    stats = {k: network_params[k] for k in avatar_lib.STATS_GROUPS}
    return {k: v for k, v in network_params.items() if k not in stats}, stats


def train_ev_prior(data_dirs: list[str], workdir: str, avatar_config: avatar_lib.AvatarConfig, num_steps: int,
                   checkpoint_every: int = 200, config: EVPriorConfig = EVPriorConfig(),
                   sample_every: int = 200, priors_dir: str | None = None, progress: bool = True) -> dict:
    """The Expression-Visual prior trainer: resumable (Orbax: params, statistics, optimizer state, RNG,
    step and the loader's position), TensorBoard scalars, a tqdm bar, ground-truth/render sample grids as
    PNG in ``workdir/samples``, export into `priors_dir` (default ``workdir/priors``). Data-parallel over
    every device (the batch size must be a multiple of the device count)."""
    from ggtalker_jax.train.logging import TrainLogger

    static = avatar_lib.AvatarStatic.build(avatar_config)
    network = avatar_lib.init_network_params(jax.random.PRNGKey(config.seed), avatar_config)
    params, stats = split_stats(network)
    data = make_iterator(list(data_dirs), avatar_config.image_size, config)
    tc = trainer.TrainConfig(num_steps=num_steps, learning_rate=config.learning_rate, warmup_steps=0,
                             final_lr_fraction=1.0, weight_decay=0.0, checkpoint_every=checkpoint_every,
                             log_every=1, sample_every=sample_every, seed=config.seed, trainable=EV_GROUPS)
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    loss_fn = objectives.ev_prior_objective(static, config.weights)
    t0 = time.monotonic()
    with TrainLogger(workdir, num_steps, progress=progress, desc="EV prior") as logger:
        sample_batch = next(make_iterator(list(data_dirs), avatar_config.image_size, config))

        def sample_fn(st, step):
            import cv2
            grid = sample_grid({**st.params, **st.batch_stats}, static, sample_batch)
            cv2.imwrite(os.path.join(workdir, "samples", f"ev_step{step:07d}.png"), grid[..., ::-1])
            logger.image(step, "samples/render", grid)

        state = trainer.run_training(loss_fn, params, data, tc, workdir, batch_stats=stats, logger=logger,
                                     sample_fn=sample_fn if sample_every else None,
                                     extra_meta={"kind": "ev_prior", "image_size": avatar_config.image_size,
                                                 "data_dirs": [os.path.abspath(d) for d in data_dirs]})
        if sample_every and num_steps % sample_every:
            sample_fn(state, num_steps)
    record = trainer.read_run_record(os.path.join(workdir, "checkpoints"))
    provenance = {"ev": {"steps": num_steps, "subjects": [os.path.abspath(d) for d in data_dirs],
                         "image_size": avatar_config.image_size, "seconds": round(time.monotonic() - t0, 1),
                         "final": record.get("metrics", {})}}
    trained = jax.tree.map(np.asarray, {**state.params, **state.batch_stats})
    priors_lib.update_priors(priors_dir or os.path.join(workdir, "priors"), avatar_config.prior,
                             {k: trained[k] for k in (*EV_GROUPS, *avatar_lib.STATS_GROUPS)}, provenance)
    return provenance


def train_small_priors(priors_dir: str, subject_dirs: list[str], avatar_config: avatar_lib.AvatarConfig,
                       num_steps: int = 150, config: EVPriorConfig = EVPriorConfig(), progress: bool = True) -> dict:
    """Small EV and A2E priors on prepared subjects (each with its own trainer), saved to `priors_dir`;
    their run directories are `priors_dir/runs/ev` and `priors_dir/runs/a2e`."""
    from ggtalker_jax.train import a2e_prior

    runs = os.path.join(priors_dir, "runs")
    ev = train_ev_prior(subject_dirs, os.path.join(runs, "ev"), avatar_config, num_steps, checkpoint_every=num_steps,
                        config=config, sample_every=0, priors_dir=priors_dir, progress=progress)
    # The prior's A2E windowing, shortened when a clip's training split is too short for it.
    from ggtalker_jax.data.dataset import PreparedDataset
    shortest = min(int(np.diff(PreparedDataset(d).train_range)[0]) for d in subject_dirs)
    context = avatar_config.prior.a2e_context
    window = max(2, min(avatar_config.prior.a2e_window, shortest - context))
    prior = dataclasses.replace(avatar_config.prior, a2e_window=window, a2e_context=min(context, window - 1))
    a2e_cfg = a2e_prior.A2ETrainConfig(batch_size=max(2, config.batch_size))
    tc = trainer.TrainConfig(num_steps=num_steps, learning_rate=config.learning_rate, warmup_steps=min(20, num_steps),
                             checkpoint_every=num_steps, seed=config.seed)
    t0 = time.monotonic()
    params, prior = a2e_prior.train_a2e_prior(subject_dirs, os.path.join(runs, "a2e"), prior, tc, a2e_cfg)
    a2e_prior.export_prior(priors_dir, prior, params, {
        "steps": num_steps, "trained_with": "a2e_prior.train_a2e_prior", "window": prior.a2e_window,
        "context": prior.a2e_context, "seconds": round(time.monotonic() - t0, 1),
        "subjects": [os.path.abspath(d) for d in subject_dirs]})
    return {"ev": ev["ev"]}


def sample_grid(params: dict, static: avatar_lib.AvatarStatic, batch: dict) -> np.ndarray:
    """[2H, B*W, 3] uint8: ground truth over render (eval-mode BatchNorm) of a loader batch."""
    fields = ("expression53", "global_rot", "translation", "neck_pose", "eye_pose")
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    uv_input = jax.vmap(lambda s, f, p, k: avatar_lib.identity_uv_input(static, s, f, p, k))(
        b["shape"], b["reference_frame"], {k: b["reference_" + k] for k in fields}, b["K"])
    maps = avatar_lib.generate_uv_maps(params, static, uv_input)
    heads = avatar_lib.render_heads(params, static, maps, {k: b[k] for k in fields}, b["K"], shape=b["shape"],
                                    per_frame_maps=True)
    out = avatar_lib.inpaint_frames(params, static, heads, b["frame"], b["mask"][..., :1])
    top = np.concatenate(list(batch["frame"]), 1)
    bottom = np.concatenate(list(np.asarray(out["image"])), 1)
    return (np.clip(np.concatenate([top, bottom], 0), 0, 1) * 255).astype(np.uint8)

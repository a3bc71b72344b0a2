"""The Expression-Visual prior: Identity-Gaussian Generator + colour MLP + Body Inpainter over many
identities, so that one reference image already gives a good UV Gaussian head (GGTalker section 3).

One step: for each sampled identity, its reference frame (unwrapped to UV) goes through the generator
(BatchNorm on batch statistics), the Gaussians are bound to the tracked mesh of other frames of the same
identity, rendered, and inpainted into those frames' bodies/backgrounds; the loss is
`losses.photometric_loss` (L1 + 0.2 D-SSIM, mouth-weighted when a mouth mask is given) on the final frame
and on the head render inside the head mask, plus offset and scale regularisers.

`train_small_priors` also fits a small A2E prior on the same subjects (diffusion + expression losses) so
the demo has complete priors in minutes on a CPU; the full-size A2E prior has its own trainer
(`ggtalker_jax.train.a2e_prior`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax.models import diffusion
from ggtalker_jax.train import losses
from ggtalker_jax.train import priors as priors_lib
from ggtalker_jax.train.subject import SubjectData

log = logging.getLogger(__name__)

EV_GROUPS = ("generator", "color_mlp", "inpainter")


@dataclasses.dataclass(frozen=True)
class EVPriorConfig:
    learning_rate: float = 3e-3
    batch_size: int = 2           # frames rendered per step
    window: int = 16              # A2E window when the A2E is trained alongside
    w_head_render: float = 1.0
    w_offset: float = 0.1
    w_scale: float = 0.1
    max_scale: float = 2.0        # generator scale units (local triangle size)
    train_a2e: bool = True
    seed: int = 0


def make_step(static, config: EVPriorConfig, trainable: tuple[str, ...]):
    """A jitted step(params, opt_state, rng, batch, uv_input, K, shape) -> (params, opt_state, metrics)."""
    a2e_module = avatar_lib.networks(static.config)[0]
    schedule = diffusion.cosine_schedule(static.config.models.a2e.num_train_steps)
    tx = optax.multi_transform(
        {"train": optax.chain(optax.clip_by_global_norm(1.0), optax.adam(config.learning_rate)),
         "frozen": optax.set_to_zero()},
        lambda p: {k: jax.tree.map(lambda _: "train" if k in trainable else "frozen", v) for k, v in p.items()})

    def loss_fn(params, rng, batch, uv_input, K, shape):
        sel = batch["render_pick"]
        frame = {"expression53": batch["expression53"][sel],
                 **{k: batch[k][sel] for k in ("global_rot", "translation", "eye_pose", "neck_pose")}}
        uv_maps, gen_stats = avatar_lib.generate_uv_maps(params, static, uv_input, train=True)
        out = avatar_lib.render_frames(params, static, uv_maps, frame, K, batch["frames"], batch["head_masks"],
                                       train=True, shape=shape)
        gt = batch["frames"]
        l_img, parts = losses.photometric_loss(out["image"], gt)
        head_comp = out["head_rgb"] + (1.0 - out["head_alpha"]) * gt * (1.0 - batch["head_masks"])
        l_head, _ = losses.photometric_loss(head_comp, gt, valid_mask=batch["head_masks"])
        reg = (config.w_offset * losses.offset_regularizer(uv_maps["offset"], 0.2)
               + config.w_scale * losses.scale_regularizer(uv_maps["scale"], config.max_scale))
        total = l_img + config.w_head_render * l_head + reg
        metrics = {"l1": parts["l1"], "dssim": parts["dssim"], "head": l_head,
                   "psnr": -10.0 * jnp.log10(jnp.mean(jnp.square(out["image"] - gt)) + 1e-10)}
        if "a2e" in trainable:
            tgt = diffusion.training_targets(schedule, batch["expression53"][None], rng, cond_drop_prob=0.1)
            x0 = a2e_module.apply({"params": params["a2e"]}, tgt["noisy"], tgt["timestep"], batch["audio"][None],
                                  None, jnp.zeros((1,), jnp.int32), tgt["cond_mask"])
            l_a2e, a2e_parts = losses.a2e_loss(x0, batch["expression53"][None])
            total = total + l_a2e
            metrics.update({f"a2e_{k}": v for k, v in a2e_parts.items()})
        metrics["loss"] = total
        return total, (metrics, gen_stats, out["inpainter_stats"])

    @jax.jit
    def step(params, opt_state, rng, batch, uv_input, K, shape):
        (_, (metrics, gen_stats, inp_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rng, batch, uv_input, K, shape)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params = {**params, "generator_stats": gen_stats, "inpainter_stats": inp_stats}
        return params, opt_state, metrics

    return tx, step


def train_small_priors(priors_dir: str, subject_dirs: list[str], avatar_config: avatar_lib.AvatarConfig,
                       num_steps: int = 150, config: EVPriorConfig = EVPriorConfig(), progress: bool = True) -> dict:
    """Trains small EV (+ A2E) priors on prepared subjects and saves them to `priors_dir`."""
    static = avatar_lib.AvatarStatic.build(avatar_config)
    subjects = [SubjectData.load(d, static) for d in subject_dirs]
    params = avatar_lib.init_network_params(jax.random.PRNGKey(config.seed), avatar_config)
    trainable = EV_GROUPS + (("a2e",) if config.train_a2e else ())
    tx, step = make_step(static, config, trainable)
    opt_state = tx.init(params)
    rng = jax.random.PRNGKey(config.seed)
    np_rng = np.random.default_rng(config.seed)
    history = []
    t0 = time.monotonic()
    for i in tqdm(range(num_steps), desc="small priors", disable=not progress, unit="step"):
        subject = subjects[i % len(subjects)]
        batch = subject.sample_batch(np_rng, config.window, config.batch_size)
        rng, k = jax.random.split(rng)
        params, opt_state, metrics = step(params, opt_state, k, batch, subject.uv_input, subject.K,
                                          subject.tracking["shape"])
        metrics = {key: float(v) for key, v in metrics.items()}
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"prior training: loss became {metrics['loss']} at step {i}")
        history.append(metrics)
    provenance = {"ev": {"steps": num_steps, "subjects": [os.path.abspath(d) for d in subject_dirs],
                         "seconds": round(time.monotonic() - t0, 1), "final": history[-1] if history else {}}}
    if config.train_a2e:
        provenance["a2e"] = {"steps": num_steps, "trained_with": "ev_prior.train_small_priors"}
    priors_lib.save_priors(priors_dir, params, avatar_config, provenance)
    return {"history": history, **provenance}


def train_ev_prior(data_dirs: list[str], workdir: str, avatar_config: avatar_lib.AvatarConfig, num_steps: int,
                   checkpoint_every: int = 200, config: EVPriorConfig = EVPriorConfig(train_a2e=False),
                   sample_every: int = 200, priors_dir: str | None = None, progress: bool = True) -> dict:
    """The Expression-Visual prior trainer: resumable (Orbax, params + optimizer state + RNG + step),
    TensorBoard scalars, a tqdm bar, ground-truth/render sample grids as PNG, export into `priors_dir`.

    Subjects are visited round-robin, one identity's reference + `batch_size` of its frames per step (the
    generator's BatchNorm sees one reference per step). Data-parallel scaling lives in
    `ggtalker_jax.train.trainer` (used by the A2E prior); this loop runs on one device.
    """
    import cv2

    from ggtalker_jax.train.checkpoint import Checkpointer
    from ggtalker_jax.train.logging import TrainLogger

    static = avatar_lib.AvatarStatic.build(avatar_config)
    subjects = [SubjectData.load(d, static) for d in data_dirs]
    params = avatar_lib.init_network_params(jax.random.PRNGKey(config.seed), avatar_config)
    trainable = EV_GROUPS + (("a2e",) if config.train_a2e else ())
    tx, step = make_step(static, config, trainable)
    state = {"params": params, "opt": tx.init(params), "rng": jax.random.key_data(jax.random.PRNGKey(config.seed)),
             "step": jnp.int32(0)}
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    restored = ckpt.restore_latest(state)
    start = 0
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        print(f"resumed at step {start}")
    logger = TrainLogger(workdir, num_steps, start_step=start, progress=progress)
    params, opt_state = state["params"], state["opt"]
    rng = jax.random.wrap_key_data(jnp.asarray(state["rng"]))
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    metrics = {}
    for i in range(start, num_steps):
        subject = subjects[i % len(subjects)]
        np_rng = np.random.default_rng([config.seed, i])            # the data position is the step: exact resume
        batch = subject.sample_batch(np_rng, config.window, config.batch_size)
        rng, k = jax.random.split(rng)
        params, opt_state, metrics = step(params, opt_state, k, batch, subject.uv_input, subject.K,
                                          subject.tracking["shape"])
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"EV prior: loss is {loss} at step {i}; the last good checkpoint is step "
                                     f"{ckpt.latest()} in {ckpt.directory}")
        logger.scalars(i + 1, {k: float(v) for k, v in metrics.items()})
        logger.advance(i + 1, loss)
        if (i + 1) % checkpoint_every == 0 or i + 1 == num_steps:
            ckpt.save(i + 1, {"params": params, "opt": opt_state, "rng": jax.random.key_data(rng),
                              "step": jnp.int32(i + 1)}, {"step": i + 1})
        if sample_every and ((i + 1) % sample_every == 0 or i + 1 == num_steps):
            grid = _sample_grid(params, static, subject, batch)
            cv2.imwrite(os.path.join(workdir, "samples", f"ev_step{i + 1:07d}.png"), grid[..., ::-1])
            logger.image(i + 1, "samples/render", grid)
    logger.close()
    ckpt.close()
    provenance = {"ev": {"steps": num_steps, "subjects": [os.path.abspath(d) for d in data_dirs],
                         "final": {k: float(v) for k, v in metrics.items()}}}
    priors_lib.update_priors(priors_dir or os.path.join(workdir, "priors"), avatar_config,
                             {k: params[k] for k in ("generator", "generator_stats", "color_mlp", "inpainter",
                                                     "inpainter_stats")}, provenance)
    return provenance


def _sample_grid(params, static, subject, batch) -> np.ndarray:
    """[2H, B*W, 3] uint8: ground truth over render (eval-mode BatchNorm)."""
    sel = batch["render_pick"]
    frame = {"expression53": jnp.asarray(batch["expression53"][sel]),
             **{k: jnp.asarray(batch[k][sel]) for k in ("global_rot", "translation", "eye_pose", "neck_pose")}}
    uv_maps = avatar_lib.generate_uv_maps(params, static, subject.uv_input)
    out = avatar_lib.render_frames(params, static, uv_maps, frame, subject.K, jnp.asarray(batch["frames"]),
                                   jnp.asarray(batch["head_masks"]), shape=jnp.asarray(subject.tracking["shape"]))
    top = np.concatenate(list(batch["frames"]), 1)
    bottom = np.concatenate(list(np.asarray(out["image"])), 1)
    return (np.clip(np.concatenate([top, bottom], 0), 0, 1) * 255).astype(np.uint8)

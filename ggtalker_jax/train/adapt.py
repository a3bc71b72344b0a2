"""Customized adaptation: the paper's 5 stages (supplementary, Table 1), as data.

    stage  trains                                              paper budget
    1      identity Gaussian UV map (uv_delta)                 2 min
    2      generator + head-model params (shape, pose, expr)   3 min
    3      A2E (audio-to-expression finetune)                  5 min
    4      A2E + generator + head params                       5 min
    5      all of 4 + colour MLP + Body Inpainter              5 min

Everything a stage does not name is frozen (`optax.multi_transform` with `set_to_zero`). Losses:
stages that train any visual part use `losses.photometric_loss` on the inpainted frame plus on the head
render inside the head mask; stages that train the A2E use `losses.a2e_loss` on windows of the subject's
tracked expressions (a new style row of the A2E's style table is this identity's). In stages 4-5 the
frames are rendered with the A2E's one-step x0 prediction of the window, so image gradients reach the A2E
and the renderer learns the A2E's expressions. A stage ends after `steps` steps or `minutes` of wall time,
whichever comes first; the parameters are checkpointed after every stage and a rerun resumes after the last
finished one.

`ggtalker adapt --data PREPARED_DIR --workdir DIR [--priors DIR] [--schedule paper|small]`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax.models import diffusion
from ggtalker_jax.train import losses
from ggtalker_jax.train.checkpoint import Checkpointer
from ggtalker_jax.train.subject import SubjectData

log = logging.getLogger(__name__)

PARAM_GROUPS = ("uv_delta", "generator", "head", "a2e", "color_mlp", "inpainter")
VISUAL_GROUPS = ("uv_delta", "generator", "head", "color_mlp", "inpainter")


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


def paper_schedule(scale_minutes: float = 1.0, learning_rate: float = 1e-4) -> tuple[Stage, ...]:
    """GGTalker's Table 1: 2 + 3 + 5 + 5 + 5 = 20 minutes (times `scale_minutes`)."""
    m = scale_minutes
    return (
        Stage("1_uv_map", ("uv_delta",), 2 * m, learning_rate=10 * learning_rate),
        Stage("2_generator_head", ("generator", "head"), 3 * m, learning_rate=learning_rate),
        Stage("3_a2e", ("a2e",), 5 * m, learning_rate=learning_rate),
        Stage("4_a2e_generator_head", ("a2e", "generator", "head"), 5 * m, learning_rate=learning_rate),
        Stage("5_all", ("a2e", "generator", "head", "color_mlp", "inpainter"), 5 * m,
              learning_rate=learning_rate),
    )


def small_schedule(steps: int = 40, learning_rate: float = 3e-3) -> tuple[Stage, ...]:
    """The same five stages by step count, for CPU demos and tests."""
    return tuple(dataclasses.replace(s, steps=steps, minutes=60.0, learning_rate=learning_rate)
                 for s in paper_schedule())


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    stages: tuple[Stage, ...]
    batch_size: int = 2                 # frames rendered per step
    window: int = 16                    # A2E window (frames)
    style_id: int = -1                  # A2E style row for this identity (-1: the last row)
    diffusion_steps_for_render: int = 0  # noise level (timestep) of the one-step A2E prediction in 4-5
    w_head_render: float = 1.0
    w_a2e: float = 1.0
    w_offset: float = 0.1
    seed: int = 0


def stage_controls(stage: Stage) -> dict:
    """What a stage trains, as traced numbers (so all five stages share one compiled step):
    `mask` {group: 0/1}, `w_photo`, `w_a2e` (loss weights) and `a2e_render` (render with the A2E's
    expressions instead of the tracked ones)."""
    visual = any(g in stage.trainable for g in VISUAL_GROUPS)
    trains_a2e = "a2e" in stage.trainable
    return {"mask": {g: jnp.float32(g in stage.trainable) for g in PARAM_GROUPS},
            "w_photo": jnp.float32(visual), "w_a2e": jnp.float32(trains_a2e),
            "a2e_render": jnp.float32(visual and trains_a2e), "learning_rate": jnp.float32(stage.learning_rate)}


def _style_id(static, cfg: AdaptConfig) -> int:
    n = static.config.models.a2e.num_styles
    return cfg.style_id % n


def make_loss_fn(static, data: SubjectData, cfg: AdaptConfig):
    """loss(params, rng, batch, controls) -> (loss, metrics); `controls` from `stage_controls`."""
    a2e_module = avatar_lib.networks(static.config)[0]
    schedule = diffusion.cosine_schedule(static.config.models.a2e.num_train_steps)
    style = _style_id(static, cfg)

    def loss_fn(params, rng, batch, controls):
        head = params["head"]
        idx = batch["window_index"]                                                   # [W]
        target = batch["expression53"] + jax.lax.stop_gradient(head["expr_delta"][idx])  # [W, 53]
        k_diff, k_noise = jax.random.split(rng)
        # A2E: diffusion x0 objective on this identity's window (its own style row).
        tgt = diffusion.training_targets(schedule, target[None], k_diff, cond_drop_prob=0.1)
        x0 = a2e_module.apply({"params": params["a2e"]}, tgt["noisy"], tgt["timestep"], batch["audio"][None],
                              None, jnp.full((1,), style), tgt["cond_mask"])
        l_a2e, a2e_parts = losses.a2e_loss(x0, target[None])
        # Frames rendered with the tracked (+ learned correction) expressions, or in stages 4-5 with the
        # A2E's one-step prediction, so image gradients reach the A2E.
        t = jnp.full((1,), cfg.diffusion_steps_for_render)
        noisy = diffusion.q_sample(schedule, target[None], t, jax.random.normal(k_noise, target[None].shape))
        expr_a2e = a2e_module.apply({"params": params["a2e"]}, noisy, t, batch["audio"][None], None,
                                    jnp.full((1,), style), None)[0]
        expr_track = batch["expression53"] + head["expr_delta"][idx]
        expr_render = controls["a2e_render"] * expr_a2e + (1.0 - controls["a2e_render"]) * expr_track
        sel = batch["render_pick"]                                                    # [B] positions in the window
        fidx = idx[sel]
        frame = {"expression53": expr_render[sel],
                 "global_rot": batch["global_rot"][sel] + head["pose_delta"][fidx, :3],
                 "translation": batch["translation"][sel] + head["pose_delta"][fidx, 3:],
                 "eye_pose": batch["eye_pose"][sel], "neck_pose": batch["neck_pose"][sel]}
        uv_maps = avatar_lib.generate_uv_maps(params, static, data.uv_input)
        out = avatar_lib.render_frames(params, static, uv_maps, frame, data.K, batch["frames"], batch["head_masks"])
        gt = batch["frames"]
        l_img, parts = losses.photometric_loss(out["image"], gt)
        head_comp = out["head_rgb"] + (1.0 - out["head_alpha"]) * gt * (1.0 - batch["head_masks"])
        l_head, _ = losses.photometric_loss(head_comp, gt, valid_mask=batch["head_masks"])
        l_off = losses.offset_regularizer(uv_maps["offset"], max_norm=0.2)
        l_photo = l_img + cfg.w_head_render * l_head + cfg.w_offset * l_off
        total = controls["w_photo"] * l_photo + controls["w_a2e"] * cfg.w_a2e * l_a2e
        metrics = {"loss": total, "l1": parts["l1"], "dssim": parts["dssim"], "head": l_head,
                   "psnr": -10.0 * jnp.log10(jnp.mean(jnp.square(out["image"] - gt)) + 1e-10),
                   **{f"a2e_{k}": v for k, v in a2e_parts.items()}}
        return total, metrics

    return loss_fn


def make_step(static, data: SubjectData, cfg: AdaptConfig):
    """(init_opt, step): one Adam over all parameters, gradients masked per stage (frozen groups get
    exactly zero updates; the optimizer state is fresh for every stage)."""
    loss_fn = make_loss_fn(static, data, cfg)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.inject_hyperparams(optax.adam)(learning_rate=1e-3))

    @jax.jit
    def step(params, opt_state, rng, batch, controls):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng, batch, controls)
        grads = {k: jax.tree.map(lambda g: g * controls["mask"].get(k, 0.0), v) for k, v in grads.items()}
        opt_state[1].hyperparams["learning_rate"] = controls["learning_rate"]
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = {k: jax.tree.map(lambda u: u * controls["mask"].get(k, 0.0), v) for k, v in updates.items()}
        return optax.apply_updates(params, updates), opt_state, metrics

    return tx.init, step


def run_stage(params, data: SubjectData, stage: Stage, cfg: AdaptConfig, rng, init_opt, step, progress=True):
    """Optimises `stage.trainable` for `stage.steps` steps or `stage.minutes`, whichever ends first.
    Returns (params, history list of metric dicts)."""
    controls = stage_controls(stage)
    opt_state = init_opt(params)
    history = []
    start = time.monotonic()
    bar = tqdm(total=stage.steps, desc=f"adapt {stage.name}", disable=not progress, unit="step")
    i = 0
    np_rng = np.random.default_rng([cfg.seed, PARAM_GROUPS.index(stage.trainable[0]), len(stage.trainable)])
    while (stage.steps is None or i < stage.steps) and time.monotonic() - start < 60 * stage.minutes:
        rng, k = jax.random.split(rng)
        batch = data.sample_batch(np_rng, cfg.window, cfg.batch_size)
        params, opt_state, metrics = step(params, opt_state, k, batch, controls)
        metrics = {key: float(v) for key, v in metrics.items()}
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"adaptation stage {stage.name}: loss became {metrics['loss']} at step {i}; "
                                     "lower the learning rate (--learning_rate) or check the prepared data")
        history.append(metrics)
        bar.set_postfix({key: f"{v:.4g}" for key, v in metrics.items() if key in ("loss", "psnr")})
        bar.update(1)
        i += 1
    bar.close()
    return params, history


def adapt(data_dir: str, workdir: str, priors: str | None = None, stages=None, cfg: AdaptConfig | None = None,
          avatar_config: avatar_lib.AvatarConfig | None = None, progress: bool = True) -> dict:
    """Adapts the priors to the prepared subject in `data_dir`; writes `workdir` (a valid --workdir for
    render and eval). Resumes after the last finished stage. Returns a summary dict."""
    from ggtalker_jax.train import priors as priors_lib

    stages = tuple(stages or small_schedule())
    cfg = cfg or AdaptConfig(stages=stages)
    os.makedirs(workdir, exist_ok=True)
    network_params, prior_avatar_cfg = priors_lib.load_or_init(priors, avatar_config)
    avatar_cfg = prior_avatar_cfg
    static = avatar_lib.AvatarStatic.build(avatar_cfg)
    data = SubjectData.load(data_dir, static)
    params = avatar_lib.init_identity_params(network_params, static, data.tracking)
    summary = {"data": os.path.abspath(data_dir), "workdir": os.path.abspath(workdir), "stages": []}
    with open(os.path.join(workdir, "avatar.json"), "w") as f:
        json.dump({"avatar": avatar_cfg.to_dict(), "data": os.path.abspath(data_dir),
                   "style_id": _style_id(static, cfg), "priors": priors}, f, indent=2)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    done = 0
    restored = ckpt.restore_latest(params)
    if restored is not None:
        params, meta = restored
        done = int(meta.get("stages_done", 0))
        summary["stages"] = meta.get("history", [])
        print(f"resuming adaptation after stage {done} ({stages[done - 1].name if done else '-'})")
    rng = jax.random.PRNGKey(cfg.seed)
    init_opt, step = make_step(static, data, cfg)
    for i, stage in enumerate(stages):
        if i < done:
            continue
        t0 = time.monotonic()
        params, history = run_stage(params, data, stage, cfg, jax.random.fold_in(rng, i), init_opt, step, progress)
        record = {"name": stage.name, "trainable": list(stage.trainable), "steps": len(history),
                  "seconds": round(time.monotonic() - t0, 2),
                  "final": history[-1] if history else {}}
        summary["stages"].append(record)
        ckpt.save(i + 1, params, {"stages_done": i + 1, "history": summary["stages"]})
    ckpt.close()
    with open(os.path.join(workdir, "adapt_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def load_adapted(workdir: str):
    """(static, params, data, info) of an adapted subject written by `adapt`."""
    path = os.path.join(workdir, "avatar.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} is not an adapted subject (no avatar.json); run "
                                "`ggtalker adapt --data PREPARED_DIR --workdir DIR` first")
    with open(path) as f:
        info = json.load(f)
    avatar_cfg = avatar_lib.AvatarConfig.from_dict(info["avatar"])
    static = avatar_lib.AvatarStatic.build(avatar_cfg)
    data = SubjectData.load(info["data"], static)
    network_params = avatar_lib.init_network_params(jax.random.PRNGKey(0), avatar_cfg)   # structure only
    template = avatar_lib.init_identity_params(network_params, static, data.tracking)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    restored = ckpt.restore_latest(template)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no finished adaptation stage; rerun `ggtalker adapt`")
    params, meta = restored
    info["stages_done"] = meta.get("stages_done")
    return static, params, data, info


def main(argv) -> int:
    from absl import flags

    from ggtalker_jax.cli import parse_flags
    fv = flags.FlagValues()
    flags.DEFINE_string("data", None, "prepared subject directory (from `ggtalker prepare`)", flag_values=fv)
    flags.DEFINE_string("workdir", None, "output directory of the adapted subject", flag_values=fv)
    flags.DEFINE_string("priors", None, "directory with trained priors (default: the bundled small priors "
                        "or fresh networks)", flag_values=fv)
    flags.DEFINE_enum("schedule", "small", ["small", "paper"], "small: steps per stage; paper: Table 1 minutes",
                      flag_values=fv)
    flags.DEFINE_integer("steps_per_stage", 40, "steps per stage for --schedule=small", flag_values=fv)
    flags.DEFINE_float("minutes_scale", 1.0, "multiplies the paper schedule's minutes", flag_values=fv)
    flags.DEFINE_float("learning_rate", None, "learning rate (default: the schedule's)", flag_values=fv)
    flags.DEFINE_integer("batch_size", 2, "frames rendered per step", flag_values=fv)
    parse_flags(fv, argv)
    if not fv.data or not fv.workdir:
        print("ggtalker adapt: --data and --workdir are required", file=sys.stderr)
        return 2
    kw = {} if fv.learning_rate is None else {"learning_rate": fv.learning_rate}
    stages = (small_schedule(fv.steps_per_stage, **kw) if fv.schedule == "small"
              else paper_schedule(fv.minutes_scale, **kw))
    summary = adapt(fv.data, fv.workdir, fv.priors, stages, AdaptConfig(stages=stages, batch_size=fv.batch_size))
    for s in summary["stages"]:
        print(f"  {s['name']:<24} {s['steps']:>5} steps {s['seconds']:>8.1f} s  loss {s['final'].get('loss', float('nan')):.4f}")
    print(f"adapted subject: {summary['workdir']}")
    return 0

"""The one training core of ggtalker-jax: the A2E prior, the Expression-Visual prior and each of the five
adaptation stages are configurations of it (big_vision style: one trainer, configs as code).

A run is described by
- a loss function ``loss_fn(params, batch, rng, batch_stats=None) -> (loss scalar, aux dict)`` that
  averages over the *global* batch (so data parallelism does not change its value). ``aux`` holds scalar
  metrics; an objective that updates BatchNorm statistics returns them under ``aux["batch_stats"]``;
- an initial parameter pytree (a dict of named groups, e.g. an avatar's ``{"generator", "head", ...}``)
  and optional BatchNorm statistics (``batch_stats``: not trained by the optimizer);
- a `TrainConfig`: optimisation, which top-level parameter groups train (``trainable``; the others are
  frozen through ``optax.multi_transform`` with ``optax.set_to_zero``, so XLA does not even compute their
  gradients), and how long (steps and/or a wall-clock budget);
- a data iterator yielding per-process batches (dicts of numpy arrays ``[B_local, ...]``) with
  ``get_state() -> JSON-able`` and ``set_state(state)`` (a ``grain`` ``DatasetIterator`` has both).

Data parallelism: one 1-D ``Mesh`` named "data" over all devices (all processes' devices when
``jax.distributed`` is initialised). Parameters, statistics, optimizer state and the RNG key are
replicated, the batch is sharded along its leading axis; ``jax.jit`` with these shardings computes the
gradient of the global-batch loss, i.e. gradients are averaged across devices by construction (XLA inserts
the all-reduce). Each process feeds only its own shard (``jax.make_array_from_process_local_data``).

Resuming: ``run_training`` saves the `TrainState` and the data iterator's state every
``checkpoint_every`` steps and at the end (with ``"finished": true``) through `Checkpointer`, and restores
the newest one on start, so a killed run continues exactly (per-step randomness is
``fold_in(rng, step)``); a run that already did its steps (or spent its time) returns its final state at once,
one asked for more steps continues. A non-finite loss stops the run
(`TrainingError`) without saving the bad state.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, NamedTuple, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ggtalker_jax.checkpoint import Checkpointer
from ggtalker_jax.errors import TrainingError

log = logging.getLogger(__name__)

LossFn = Callable[..., tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one training run.

    num_steps: steps to run (the run also ends once ``max_seconds`` of training have passed, when set).
    learning_rate: peak rate; linear warmup over ``warmup_steps`` then cosine decay to
      ``learning_rate * final_lr_fraction`` at ``num_steps`` (1.0: constant after the warmup).
    trainable: the top-level parameter groups the optimizer updates (None: all); the rest stay exactly
      as they are.
    per_row: parameters ("group/name") whose leading axis indexes examples (an identity's per-frame
      corrections, [T, k]): each batch touches a few rows, so they learn by `row_sparse_adam` (a row the
      batch did not touch keeps its value and moments) at ``learning_rate * per_row_lr_scale``, outside
      the global-norm clipping. Dense Adam would move every row each step on stale momentum, and a row
      seen once gets a step of ~lr / sqrt(1 - b2) (30x) from its nearly empty second moment.
    grad_clip_norm: global-norm clipping of the trained groups' gradients (<= 0 disables).
    checkpoint_every: save every this many steps (and at the end); keep_checkpoints: how many to keep.
    log_every / sample_every: scalar logging and sample-hook periods in steps (0 disables sampling).
    """

    num_steps: int = 1000
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.05
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    sample_every: int = 0
    seed: int = 0
    trainable: tuple[str, ...] | None = None
    max_seconds: float | None = None
    per_row: tuple[str, ...] = ()
    per_row_lr_scale: float = 1.0

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"TrainConfig: num_steps must be >= 1, got {self.num_steps}")
        if self.checkpoint_every < 1:
            raise ValueError(f"TrainConfig: checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"TrainConfig: learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"TrainConfig: max_seconds must be > 0, got {self.max_seconds}")
        if not (self.per_row_lr_scale >= 0 and math.isfinite(self.per_row_lr_scale)):
            raise ValueError(f"TrainConfig: per_row_lr_scale must be a finite number >= 0, got {self.per_row_lr_scale}")
        bad = [p for p in self.per_row if p.count("/") != 1]
        if bad:
            raise ValueError(f"TrainConfig: per_row names parameters as 'group/name', got {bad}")


@flax.struct.dataclass
class TrainState:
    """step [] int32, params (pytree), batch_stats (pytree of statistics the objective updates; {} when
    none), opt_state (optax pytree), rng [2] uint32 (base key)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    batch_stats: Any = flax.struct.field(default_factory=dict)


class DataIterator(Protocol):
    def __next__(self) -> dict: ...
    def get_state(self) -> Any: ...
    def set_state(self, state: Any) -> None: ...


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then cosine decay to the final fraction."""
    warmup = min(config.warmup_steps, max(config.num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
        decay_steps=max(config.num_steps, warmup + 1),
        end_value=config.learning_rate * config.final_lr_fraction)


def param_labels(params: Any, trainable: tuple[str, ...] | None, per_row: tuple[str, ...] = ()) -> Any:
    """"train" / "frozen" / "per_row" per leaf: by top-level group name (all "train" when `trainable` is
    None); the trained leaves named in `per_row` ("group/name") are "per_row"."""
    if trainable is None and not per_row:
        return jax.tree.map(lambda _: "train", params)
    if not isinstance(params, dict):
        raise ValueError("TrainConfig.trainable names parameter groups, but the parameters are not a dict")
    unknown = set(trainable or ()) - set(params)
    if unknown:
        raise ValueError(f"TrainConfig.trainable: unknown parameter groups {sorted(unknown)}; the parameters "
                         f"have {sorted(params)}")
    rows = {tuple(p.split("/")) for p in per_row}
    missing = sorted(f"{g}/{n}" for g, n in rows if not isinstance(params.get(g), dict) or n not in params[g])
    if missing:
        raise ValueError(f"TrainConfig.per_row: no parameters {missing}")

    def label(group: str, path, _) -> str:
        if trainable is not None and group not in trainable:
            return "frozen"
        name = getattr(path[0], "key", None) if path else None
        return "per_row" if (group, name) in rows else "train"

    return {k: jax.tree_util.tree_map_with_path(lambda path, x, k=k: label(k, path, x), v)
            for k, v in params.items()}


class RowSparseAdamState(NamedTuple):
    """count [] int32 (steps taken: the schedule's); rows: per leaf [T] int32 (updates of each row); mu, nu:
    per leaf, the moments (shaped like the parameter)."""
    count: jax.Array
    rows: Any
    mu: Any
    nu: Any


def row_sparse_adam(learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam for parameters [T, ...] whose rows are examples ("lazy" Adam): a row whose gradient is exactly
    zero (the batch did not touch it) keeps its value and its moments; a touched row takes Adam's step with
    the bias correction of its own number of updates (its first step is -lr * sign(g), as Adam's first).
    On a parameter every batch touches in full it is `optax.adam`."""
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init(params):
        return RowSparseAdamState(count=jnp.zeros((), jnp.int32),
                                  rows=jax.tree.map(lambda p: jnp.zeros(p.shape[:1], jnp.int32), params),
                                  mu=jax.tree.map(jnp.zeros_like, params), nu=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        lr = schedule(state.count)

        def one(g, n, m, v):
            touched = jnp.any(g != 0, axis=tuple(range(1, g.ndim)))
            n = n + touched.astype(n.dtype)
            t = touched.reshape((-1,) + (1,) * (g.ndim - 1))
            m = jnp.where(t, b1 * m + (1 - b1) * g, m)
            v = jnp.where(t, b2 * v + (1 - b2) * jnp.square(g), v)
            k = jnp.maximum(n, 1).astype(g.dtype).reshape(t.shape)
            step = (m / (1 - b1 ** k)) / (jnp.sqrt(v / (1 - b2 ** k)) + eps)
            return jnp.where(t, -lr * step, 0.0).astype(g.dtype), n, m, v

        out = jax.tree.map(one, grads, state.rows, state.mu, state.nu)
        treedef = jax.tree.structure(grads)
        leaves = treedef.flatten_up_to(out)
        unzip = [treedef.unflatten([leaf[i] for leaf in leaves]) for i in range(4)]
        return unzip[0], RowSparseAdamState(state.count + 1, unzip[1], unzip[2], unzip[3])

    return optax.GradientTransformation(init, update)


def make_optimizer(config: TrainConfig, params: Any = None) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW on the warmup + cosine schedule, applied to the trainable groups;
    the frozen groups get exactly zero updates (``optax.set_to_zero``); the `per_row` parameters learn by
    `row_sparse_adam` on the same schedule times ``per_row_lr_scale``."""
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(learning_rate_schedule(config), weight_decay=config.weight_decay))
    inner = optax.chain(*parts)
    if config.trainable is None and not config.per_row:
        return inner
    schedule = learning_rate_schedule(config)
    per_row = row_sparse_adam(lambda step: config.per_row_lr_scale * schedule(step))
    return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero(), "per_row": per_row},
                                 lambda p: param_labels(p, config.trainable, config.per_row))


def init_train_state(params: Any, optimizer: optax.GradientTransformation, seed: int,
                     batch_stats: Any = None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(seed), batch_stats={} if batch_stats is None else batch_stats)


# ----------------------------------------------------------------------------------------- sharding

def make_mesh(devices: list | None = None) -> Mesh:
    """1-D mesh named "data" over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` on all devices of ``mesh`` (same value everywhere)."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Per-process batch (numpy ``[B_local, ...]`` leaves) -> global arrays ``[B_global, ...]`` sharded
    along "data". ``B_local`` must be divisible by this process's number of devices in ``mesh``."""
    n_local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
    sharding = batch_sharding(mesh)

    def put(path, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % n_local:
            raise ValueError(f"shard_batch: batch leaf {jax.tree_util.keystr(path)} has shape {x.shape}; "
                             f"its leading (batch) size must be divisible by the {n_local} local devices "
                             "(choose --batch_size as a multiple of the device count)")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, local_batch)


# ----------------------------------------------------------------------------------------- step

def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh,
                    donate: bool = True,
                    trainable: tuple[str, ...] | None = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``step(state, global_batch) -> (new_state, metrics)``, jitted with replicated state and a batch
    sharded along "data". metrics: "loss", "grad_norm" (of the trained groups) and the loss's aux scalars.
    The per-step key is ``fold_in(state.rng, state.step)``."""
    rep, data = replicated(mesh), batch_sharding(mesh)

    def step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss(params):
            return loss_fn(params, batch, rng, state.batch_stats)

        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        aux = dict(aux)
        batch_stats = aux.pop("batch_stats", state.batch_stats)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        trained = grads if trainable is None else {k: v for k, v in grads.items() if k in trainable}
        metrics = {"loss": value, "grad_norm": optax.tree.norm(trained), **aux}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  batch_stats=batch_stats)
        return new_state, metrics

    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep),
                   donate_argnums=(0,) if donate else ())


# ----------------------------------------------------------------------------------------- loop

NonFiniteLossError = TrainingError     # the name earlier releases raised


def run_training(loss_fn: LossFn, init_params: Any, data_iter: DataIterator, config: TrainConfig,
                 workdir: str | os.PathLike, *, mesh: Mesh | None = None, batch_stats: Any = None,
                 sample_fn: Callable[[TrainState, int], None] | None = None, logger=None,
                 extra_meta: dict | None = None, checkpoint_dir: str | None = None) -> TrainState:
    """Trains ``init_params`` for ``config.num_steps`` steps (or ``config.max_seconds``), resuming from
    ``checkpoint_dir`` (default ``workdir/checkpoints``).

    sample_fn(state, step) is called every ``config.sample_every`` steps (process 0 only), e.g. to
    write a plot. ``logger`` is a ``ggtalker_jax.train.logging.TrainLogger`` (made in ``workdir`` when
    None). Raises `TrainingError` naming the step when the loss is not finite; the newest checkpoint on
    disk is then the last good one. Returns the final state (replicated arrays); the final checkpoint's
    meta (`read_run_record`) holds the steps done and the last metrics (and, for a time-limited run, the
    seconds spent).
    """
    from ggtalker_jax.train import logging as train_logging

    workdir = os.fspath(workdir)
    mesh = make_mesh() if mesh is None else mesh
    optimizer = make_optimizer(config)
    # Copies: the step donates its state's buffers, and the caller's arrays must stay valid.
    init_params, batch_stats = jax.tree.map(lambda x: jnp.array(x, copy=True), (init_params, batch_stats or {}))
    state = replicate(init_train_state(init_params, optimizer, config.seed, batch_stats), mesh)
    ckpt = Checkpointer(checkpoint_dir or os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    restored = ckpt.restore_latest(state)
    start, elapsed, last_metrics = 0, 0.0, {}
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        elapsed = float(meta.get("seconds", 0.0))
        last_metrics = dict(meta.get("metrics", {}))
        if int(state.step) != start:
            raise RuntimeError(f"checkpoint in {ckpt.directory} is inconsistent: meta step {start} != "
                               f"state step {int(state.step)}; delete the newest step folder")
        out_of_budget = start >= config.num_steps or (config.max_seconds is not None
                                                       and elapsed >= config.max_seconds)
        if out_of_budget:       # nothing left to do (a longer schedule continues from here instead)
            ckpt.close()
            return state
        if meta.get("data") is not None:
            data_iter.set_state(meta["data"])
    own_logger = logger is None
    if own_logger:
        logger = train_logging.TrainLogger(workdir, total_steps=config.num_steps, start_step=start)
    if restored is not None:
        logger.info(f"resumed at step {start}")
    train_step = make_train_step(loss_fn, optimizer, mesh, trainable=config.trainable)
    last_saved = start if restored is not None else None
    t_start = time.monotonic() - elapsed

    def save(step: int, finished: bool) -> None:
        meta = {**(extra_meta or {}), "step": step, "data": data_iter.get_state(), "metrics": last_metrics,
                "finished": finished}
        if config.max_seconds is not None:   # a time budget resumes with what is left of it
            meta["seconds"] = round(time.monotonic() - t_start, 3)
        ckpt.save(step, state, meta)

    try:
        step = start
        while step < config.num_steps:
            if config.max_seconds is not None and time.monotonic() - t_start >= config.max_seconds and step > start:
                break
            batch = shard_batch(next(data_iter), mesh)
            new_state, metrics = train_step(state, batch)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                         if last_saved is not None else "no checkpoint was saved yet")
                raise TrainingError(
                    f"loss is {loss} at step {step + 1} (training stopped; {where}). Check the data "
                    "for NaN/Inf and lower --learning_rate.")
            state = new_state
            step += 1
            if step % config.log_every == 0 or step == config.num_steps or step == start + 1:
                last_metrics = {k: float(v) for k, v in metrics.items()}
                last_metrics["learning_rate"] = float(learning_rate_schedule(config)(step - 1))
                logger.scalars(step, last_metrics)
            logger.advance(step, loss)
            if sample_fn is not None and config.sample_every and step % config.sample_every == 0 \
                    and jax.process_index() == 0:
                sample_fn(state, step)
            if step % config.checkpoint_every == 0 and step < config.num_steps:
                save(step, finished=False)
                last_saved = step
        last_metrics = {k: float(v) for k, v in metrics.items()} if step > start else last_metrics
        save(step, finished=True)
    finally:
        ckpt.close()
        if own_logger:
            logger.close()
    return state


def read_run_record(checkpoint_dir: str) -> dict:
    """The meta of the newest checkpoint in `checkpoint_dir` (step, seconds, metrics, finished, ...), or {}."""
    if not os.path.isdir(checkpoint_dir):
        return {}
    with Checkpointer(checkpoint_dir) as ckpt:
        step = ckpt.latest()
        return {} if step is None else ckpt.read_meta(step)

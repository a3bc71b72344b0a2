"""Generic data-parallel training loop pieces (used by the A2E and Expression-Visual prior trainers).

A trainer is described by
- a loss function ``loss_fn(params, batch, rng) -> (loss scalar, aux dict of scalars)`` that averages
  over the *global* batch (so data parallelism does not change its value),
- an initial parameter pytree,
- a data iterator yielding per-process batches (dicts of numpy arrays ``[B_local, ...]``) with
  ``get_state() -> JSON-able`` and ``set_state(state)`` (a ``grain`` ``DatasetIterator`` has both).

Data parallelism: one 1-D ``Mesh`` named "data" over all devices (all processes' devices when
``jax.distributed`` is initialised). Parameters, optimizer state and the RNG key are replicated, the
batch is sharded along its leading axis; ``jax.jit`` with these in/out shardings computes the gradient of
the global-batch loss, i.e. gradients are averaged across devices by construction (XLA inserts the
all-reduce). Each process feeds only its own shard (``jax.make_array_from_process_local_data``).

Resuming: ``run_training`` saves ``TrainState`` (step, params, optimizer state, RNG key) and the data
iterator state every ``checkpoint_every`` steps through ``Checkpointer`` and restores the newest one on
start, so a killed run continues exactly (per-step randomness is ``fold_in(rng, step)``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ggtalker_jax.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one training run.

    learning_rate: peak rate; linear warmup over ``warmup_steps`` then cosine decay to
      ``learning_rate * final_lr_fraction`` at ``num_steps``.
    grad_clip_norm: global-norm clipping (<= 0 disables).
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

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"TrainConfig: num_steps must be >= 1, got {self.num_steps}")
        if self.checkpoint_every < 1:
            raise ValueError(f"TrainConfig: checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig: learning_rate must be > 0, got {self.learning_rate}")


@flax.struct.dataclass
class TrainState:
    """step [] int32, params (pytree), opt_state (optax pytree), rng [2] uint32 (base key)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


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


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW on the warmup + cosine schedule."""
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(learning_rate_schedule(config), weight_decay=config.weight_decay))
    return optax.chain(*parts)


def init_train_state(params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(seed))


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
                    donate: bool = True) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``step(state, global_batch) -> (new_state, metrics)``, jitted with replicated state and a batch
    sharded along "data". metrics: "loss", "grad_norm", "learning_rate" and the loss's aux entries
    (all replicated scalars). The per-step key is ``fold_in(state.rng, state.step)``."""
    rep, data = replicated(mesh), batch_sharding(mesh)

    def step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep),
                   donate_argnums=(0,) if donate else ())


# ----------------------------------------------------------------------------------------- loop

class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; the run stopped without saving the bad state."""


def run_training(loss_fn: LossFn, init_params: Any, data_iter: DataIterator, config: TrainConfig,
                 workdir: str | os.PathLike, *, mesh: Mesh | None = None,
                 sample_fn: Callable[[Any, int], None] | None = None, logger=None,
                 extra_meta: dict | None = None) -> TrainState:
    """Trains ``init_params`` for ``config.num_steps`` steps, resuming from ``workdir/checkpoints``.

    sample_fn(params, step) is called every ``config.sample_every`` steps (process 0 only), e.g. to
    write a plot. ``logger`` is a ``ggtalker_jax.train.logging.TrainLogger`` (made in ``workdir`` when
    None). Raises ``NonFiniteLossError`` naming the step when the loss is not finite; the newest
    checkpoint on disk is then the last good one. Returns the final state (replicated arrays).
    """
    from ggtalker_jax.train import logging as train_logging

    workdir = os.fspath(workdir)
    mesh = make_mesh() if mesh is None else mesh
    optimizer = make_optimizer(config)
    state = replicate(init_train_state(init_params, optimizer, config.seed), mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    restored = ckpt.restore_latest(state)
    start = 0
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        if int(state.step) != start:
            raise RuntimeError(f"checkpoint in {ckpt.directory} is inconsistent: meta step {start} != "
                               f"state step {int(state.step)}; delete the newest step folder")
        if meta.get("data") is not None:
            data_iter.set_state(meta["data"])
    own_logger = logger is None
    if own_logger:
        logger = train_logging.TrainLogger(workdir, total_steps=config.num_steps, start_step=start)
    if restored is not None:
        logger.info(f"resumed at step {start}")
    train_step = make_train_step(loss_fn, optimizer, mesh)
    last_saved = start if restored is not None else None

    def save(step: int) -> None:
        meta = {**(extra_meta or {}), "step": step, "data": data_iter.get_state()}
        ckpt.save(step, state, meta)

    try:
        for step in range(start, config.num_steps):
            batch = shard_batch(next(data_iter), mesh)
            new_state, metrics = train_step(state, batch)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                         if last_saved is not None else "no checkpoint was saved yet")
                raise NonFiniteLossError(
                    f"loss is {loss} at step {step + 1} (training stopped; {where}). Check the data "
                    "for NaN/Inf and lower --learning_rate.")
            state = new_state
            done = step + 1
            if done % config.log_every == 0 or done == config.num_steps:
                scalars = {k: float(v) for k, v in metrics.items()}
                scalars["learning_rate"] = float(learning_rate_schedule(config)(step))
                logger.scalars(done, scalars)
            logger.advance(done, loss)
            if sample_fn is not None and config.sample_every and done % config.sample_every == 0 \
                    and jax.process_index() == 0:
                sample_fn(state.params, done)
            if done % config.checkpoint_every == 0 or done == config.num_steps:
                save(done)
                last_saved = done
    finally:
        ckpt.close()
        if own_logger:
            logger.close()
    return state

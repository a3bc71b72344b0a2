"""Atomic, resumable checkpoints over Orbax.

A checkpoint holds a pytree of arrays (`state`: parameters, optimizer state, RNG key, ...) and a small
JSON record (`meta`: step, data-loader position, stage name, config, ...). Orbax writes each step into a
temporary folder and renames it when complete, so a process killed mid-save leaves the previous
checkpoint intact; `Checkpointer.latest()` only ever sees finished ones.

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=3)
    restored = ckpt.restore_latest(abstract_state)     # None on a fresh run
    if restored: state, meta = restored
    ...
    ckpt.save(step, state, {"step": step, "loader": loader_state})
    ckpt.close()
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of a run in `directory` (created when missing)."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest(self) -> int | None:
        """The step of the newest finished checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict | None = None, force: bool = True) -> None:
        """Saves `state` (pytree of arrays) and `meta` (JSON-able dict) at `step`, atomically."""
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))), force=force)
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the checkpoint at `step` into the structure/dtypes/shapes of `abstract_state`.

        `abstract_state` is a pytree of arrays or `jax.ShapeDtypeStruct`s shaped like what was saved.
        """
        abstract = jax.tree.map(_as_abstract, abstract_state)
        restored = self._manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"] or {})

    def read_meta(self, step: int) -> dict:
        """The JSON record saved with the checkpoint at `step` (no arrays are read)."""
        restored = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {})

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """Restores the newest checkpoint, or returns None when the directory holds none."""
        step = self.latest()
        if step is None:
            return None
        log.info("resuming from checkpoint step %d in %s", step, self.directory)
        return self.restore(step, abstract_state)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    return x

"""An adapted avatar on disk (a `--workdir`): the one owner of its format. `ggtalker adapt` writes it
(through `ggtalker_jax.train.adapt`); `ggtalker render` and `ggtalker eval` read it with `load_adapted`.

    WORKDIR/avatar.json          the record: format version, AvatarConfig, the prepared dataset it was
                                 adapted on (path + digest), the head model (its record, see
                                 `ggtalker_jax.head.record`: kind, files + sha256, topology), priors
                                 (source + digest), A2E style row, the adaptation schedule, and how many
                                 stages are finished
    WORKDIR/checkpoints/avatar/  Orbax: the avatar's parameters after each finished stage (step = stage
                                 number; the newest is the adapted avatar)
    WORKDIR/checkpoints/stage_K/ the running stage's full training state (removed once the stage is done)
    WORKDIR/adapt_summary.json   per-stage steps, seconds and final metrics
    WORKDIR/.lock                held while `adapt` writes the workdir

A rerun of `adapt` on a workdir continues only the run it recorded (same dataset, same schedule); anything
else is refused with the reason (`RefusedError`), so an avatar never mixes two identities.

Head model. The avatar's head model is the one its dataset was tracked with (tracking parameters mean
nothing on another mesh): `adapt` takes it from the dataset's record (tracking.npz), `render` / `eval`
from avatar.json, loading the recorded files again (FLAME: model, landmark embedding, UV file). When they
moved, `--head FILE --landmark_embedding FILE` give their new paths; a missing file or one whose content
differs from the record is a `WorkdirError` (a `DatasetError` in `adapt`) naming it and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax import head as head_lib
from ggtalker_jax.checkpoint import Checkpointer
from ggtalker_jax.data import dataset as dataset_lib
from ggtalker_jax.errors import DatasetError, RefusedError, WorkdirError
from ggtalker_jax.files import atomic_write_json

FORMAT = 2
RECORD = "avatar.json"
SUMMARY = "adapt_summary.json"
PARAMS_DIR = os.path.join("checkpoints", "avatar")


def stage_run_dir(workdir: str, index: int) -> str:
    """Where stage `index` (0-based) keeps its resumable training state while it runs."""
    return os.path.join(workdir, "checkpoints", f"stage_{index + 1}")


def data_digest(data_dir: str) -> str:
    """SHA-256 over a prepared dataset's meta.json, tracking.npz and audio features: its identity."""
    h = hashlib.sha256()
    for name in (dataset_lib.META, dataset_lib.TRACKING, dataset_lib.AUDIO_FEATURES):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(name.encode())
                h.update(f.read())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Adapted:
    """A loaded adapted avatar: static parts, parameters (all groups, BatchNorm statistics included), the
    subject it was adapted on (seen at the avatar's image size) and the workdir record."""
    static: avatar_lib.AvatarStatic
    params: dict
    subject: dataset_lib.SubjectView
    record: dict

    @property
    def style_id(self) -> int:
        return int(self.record["style_id"])


def read_record(workdir: str) -> dict | None:
    """The workdir's avatar.json, or None when there is none. Raises `WorkdirError` when it is corrupt."""
    path = os.path.join(workdir, RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict) or "avatar" not in record or "data" not in record:
            raise ValueError("not an avatar record")
        avatar_lib.AvatarConfig.from_dict(record["avatar"])
    except (OSError, ValueError, TypeError) as e:
        raise WorkdirError(f"{path}: corrupt ({type(e).__name__}: {e}); delete {workdir} and rerun "
                           "`ggtalker adapt`") from e
    return record


def write_record(workdir: str, record: dict) -> None:
    atomic_write_json(os.path.join(workdir, RECORD), record)


def check_rerun(workdir: str, record: dict, previous: dict) -> int:
    """How many stages of `previous` (the workdir's record) a run asking for `record` can keep: the
    number finished when both describe the same run. Raises `RefusedError` saying what differs and what to
    do when they do not (another dataset, schedule, avatar config or priors)."""
    same = {"data_digest": "the prepared dataset", "avatar": "the avatar config", "schedule": "the schedule",
            "adapt": "the adaptation settings", "priors_digest": "the priors"}
    for key, what in same.items():
        if previous.get(key) != record.get(key):
            detail = ""
            if key == "data_digest":
                detail = f" (it was adapted on {previous.get('data')}, this run gives {record.get('data')})"
            raise RefusedError(f"{workdir} holds an avatar adapted with other {what}{detail}; nothing was "
                               "changed. Use another --workdir, or --overwrite to discard it and adapt from the "
                               "priors again")
    return int(previous.get("stages_done", 0))


def save_stage_params(workdir: str, stage_number: int, params: dict) -> None:
    with Checkpointer(os.path.join(workdir, PARAMS_DIR), max_to_keep=2) as ckpt:
        ckpt.save(stage_number, jax.tree.map(np.asarray, params), {"stages_done": stage_number})


def restore_params(workdir: str, template: dict) -> tuple[dict, int] | None:
    """(params, stages_done) of the newest finished stage, or None."""
    directory = os.path.join(workdir, PARAMS_DIR)
    if not os.path.isdir(directory):
        return None
    with Checkpointer(directory) as ckpt:
        restored = ckpt.restore_latest(template)
    if restored is None:
        return None
    params, meta = restored
    return params, int(meta["stages_done"])


def identity_template(static: avatar_lib.AvatarStatic, subject: dataset_lib.SubjectView) -> dict:
    """Parameters of the right structure and shapes for `subject` (values meaningless: for restoring)."""
    network = jax.eval_shape(lambda: avatar_lib.init_network_params(jax.random.PRNGKey(0), static.config))
    network = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), network)
    return avatar_lib.init_identity_params(network, static, subject.num_frames, subject.tracking["shape"])


def load_head_model(record: dict | None, head: str | None = None, landmark_embedding: str | None = None,
                    where: str = "tracking.npz", error: type = WorkdirError) -> head_lib.HeadModel:
    """The head model of a head-model `record` (`ggtalker_jax.head.record`; None: `head` or the open head),
    its files read from the recorded paths unless `head` / `landmark_embedding` give new ones. A missing
    file, an unreadable one or one that is not the recorded model raises `error` (naming `where`, the file
    and the fix)."""
    try:
        return head_lib.load_recorded_head(record, head, landmark_embedding, where)
    except (OSError, ValueError) as e:        # FileNotFoundError, HeadModelMismatchError, a corrupt file
        raise error(str(e)) from e


def load_adapted(workdir: str, data_dir: str | None = None, head: str | None = None,
                 landmark_embedding: str | None = None) -> Adapted:
    """The adapted avatar in `workdir`. `data_dir` replaces the recorded dataset path (e.g. after moving
    it); its content must be the one the avatar was adapted on. `head` / `landmark_embedding` replace the
    recorded paths of the head model's files (their content must be the recorded one)."""
    record = read_record(workdir)
    if record is None:
        raise WorkdirError(f"{workdir} is not an adapted subject (no {RECORD}); run "
                           "`ggtalker adapt --data PREPARED_DIR --workdir DIR` first")
    data_dir = data_dir or record["data"]
    if not os.path.isdir(data_dir):
        raise WorkdirError(f"{workdir} was adapted on the prepared dataset {data_dir}, which no longer exists; "
                           "pass its new location with --data")
    if record.get("data_digest") and data_digest(data_dir) != record["data_digest"]:
        raise WorkdirError(f"{data_dir} is not the prepared dataset {workdir} was adapted on (its content "
                           "differs); pass the original dataset with --data")
    config = avatar_lib.AvatarConfig.from_dict(record["avatar"])
    head_record = record.get("head_model") or head_lib.read_record(data_dir)    # older workdirs: the dataset's
    model = load_head_model(head_record, head, landmark_embedding, where=os.path.join(workdir, RECORD))
    static = avatar_lib.AvatarStatic.build(config, model)
    try:
        subject = dataset_lib.SubjectView(data_dir, config.image_size)
    except DatasetError as e:
        raise WorkdirError(f"{workdir}: its dataset cannot be read: {e}") from e
    restored = restore_params(workdir, identity_template(static, subject))
    if restored is None:
        raise WorkdirError(f"{workdir}/{PARAMS_DIR} holds no finished adaptation stage; rerun `ggtalker adapt` "
                           "with the same --data and --workdir to continue")
    params, done = restored
    record = {**record, "stages_done": done}
    return Adapted(static, params, subject, record)


def record_for(data_dir: str, config: avatar_lib.AvatarConfig, priors_source: str, priors_digest: str | None,
               style_id: int, schedule: list[dict], adapt_settings: dict[str, Any],
               head_model: head_lib.HeadModel | None = None) -> dict:
    """A fresh avatar.json record (stages_done 0); `head_model`: the avatar's (default: the open head)."""
    head_record = head_lib.head_model_record(head_model if head_model is not None else head_lib.load("open"))
    record = {"format": FORMAT, "avatar": config.to_dict(), "data": os.path.abspath(data_dir),
              "data_digest": data_digest(data_dir), "head_model": head_record,
              "priors": priors_source, "priors_digest": priors_digest,
              "style_id": int(style_id), "schedule": schedule, "adapt": adapt_settings, "stages_done": 0}
    return json.loads(json.dumps(record, default=float))      # as it reads back (tuples become lists)

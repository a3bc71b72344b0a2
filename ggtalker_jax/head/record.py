"""Which head model a tracking was fitted with (a small JSON-able record), and checking a model against it.

Tracking parameters only mean something with the head model they were fitted with (FLAME 2020 vs 2023,
another landmark embedding, a changed built-in model). `ggtalker_jax.data.track.track_dataset` stores
`head_model_record(model)` in ``tracking.npz`` (key ``head_model_record``, a JSON string) and in
``meta.json`` (``tracking.head_model``); adaptation / render / eval call `check_head_model` (or
`load_recorded_head`, which finds the files again) and get a clear error on a mismatch.

Record keys: ``kind`` ("open" | "flame"), ``version`` (built-in models' geometry version), ``files``
([{role, path, sha256}]: for FLAME the model, landmark embedding and UV file), ``num_vertices``,
``num_faces``, ``num_shape``, ``num_landmarks``, ``topology_sha256`` (faces + landmark embedding
indices, exact integers) and ``geometry`` (a few summary statistics of the template, bases and rest
landmarks, compared with a relative tolerance so bit-level float differences between machines pass).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ggtalker_jax.head.model import HeadModel

GEOMETRY_RTOL = 1e-4


class HeadModelMismatchError(ValueError):
    """The head model given is not the one the tracking was fitted with."""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _topology_sha256(model: HeadModel) -> str:
    h = hashlib.sha256()
    for a in (model.faces, model.lmk_faces, model.lmk_mediapipe_index):
        h.update(np.ascontiguousarray(np.asarray(a), np.int64).tobytes())
    return h.hexdigest()


def _geometry(model: HeadModel, num_shape: int) -> dict:
    v = np.asarray(model.v_template, np.float64)
    faces = np.asarray(model.faces)[np.asarray(model.lmk_faces)]
    lmk = np.einsum("lk,lkc->lc", np.asarray(model.lmk_bary, np.float64), v[faces]) if len(faces) else np.zeros((0, 3))
    rms = lambda a: float(np.sqrt(np.mean(np.square(np.asarray(a, np.float64))))) if np.size(a) else 0.0
    return {"template_mean": v.mean(0).tolist(), "template_rms": rms(v - v.mean(0)),
            "exprdirs_rms": rms(model.exprdirs), "shapedirs_rms": rms(np.asarray(model.shapedirs)[..., :num_shape]),
            "posedirs_rms": rms(model.posedirs), "landmarks_rms": rms(lmk - v.mean(0))}


def head_model_record(model: HeadModel) -> dict:
    """The record of `model` (JSON-able dict, keys in the module docstring)."""
    from ggtalker_jax.head.open_head import OPEN_HEAD_VERSION
    return {"kind": model.name, "version": OPEN_HEAD_VERSION if model.name == "open" else None,
            "files": [{"role": r, "path": p, "sha256": h} for r, p, h in model.source],
            "num_vertices": model.num_vertices, "num_faces": int(model.faces.shape[0]), "num_shape": model.num_shape,
            "num_landmarks": model.num_landmarks, "topology_sha256": _topology_sha256(model),
            "geometry": _geometry(model, model.num_shape)}


def _describe(record: dict) -> str:
    files = ", ".join(f"{f['role']} {os.path.basename(f['path'])} (sha256 {f['sha256'][:12]})"
                      for f in record.get("files", []))
    return f"{record.get('kind')!r}" + (f" from {files}" if files else "")


def check_head_model(model: HeadModel, record: dict | None, where: str = "tracking.npz") -> None:
    """Raises HeadModelMismatchError (naming `where`, both models and the fix) unless `model` is the head
    model of `record`; a None record (data tracked before records existed) checks nothing. Files are
    compared by content (sha256), not path, so a moved workdir or model file still passes."""
    if not record:
        return
    fix = ("pass the head model the data was tracked with (ggtalker ... --head FILE --landmark_embedding FILE), "
           "or re-run `ggtalker prepare` with this head model")
    head = f"{where} was fitted with head model {_describe(record)}, but the head model given is {{}}; {fix}"
    mine = head_model_record(model)
    if record.get("kind") != mine["kind"]:
        raise HeadModelMismatchError(head.format(_describe(mine)))
    if record.get("version") is not None and record.get("version") != mine["version"]:
        raise HeadModelMismatchError(
            f"{where} was fitted with version {record['version']} of the built-in {record['kind']!r} head model; "
            f"this ggtalker_jax has version {mine['version']}; re-run `ggtalker prepare` (or its tracking) so "
            "the tracking matches the model")
    my_files = {f["role"]: f for f in mine["files"]}
    for f in record.get("files", []):
        have = my_files.get(f["role"])
        if have is None or have["sha256"] != f["sha256"]:
            got = f"{have['path']} (sha256 {have['sha256'][:12]})" if have else "none"
            raise HeadModelMismatchError(
                f"{where} was fitted with {f['role']} {f['path']} (sha256 {f['sha256'][:12]}), but the head model "
                f"given has {f['role']} {got}: a different file (another FLAME version or embedding?); {fix}")
    for key in ("num_vertices", "num_faces", "num_landmarks", "topology_sha256"):
        if key in record and record[key] != mine[key]:
            raise HeadModelMismatchError(f"{where}: head model {key} differs ({record[key]} recorded, "
                                         f"{mine[key]} given); {fix}")
    num_shape = int(record.get("num_shape", model.num_shape))
    if model.num_shape < num_shape:
        raise HeadModelMismatchError(f"{where} was fitted with {num_shape} shape components, the head model given "
                                     f"has {model.num_shape}; load it with num_shape={num_shape}")
    if "geometry" in record:
        want, got = record["geometry"], _geometry(model, num_shape)
        for key, value in want.items():
            if not np.allclose(got[key], value, rtol=GEOMETRY_RTOL, atol=1e-9):
                raise HeadModelMismatchError(f"{where}: the head model's geometry differs from the one tracked "
                                             f"({key}: {value} recorded, {got[key]} now); {fix}")


def read_record(dataset_dir: str) -> dict | None:
    """The head-model record of `dataset_dir/tracking.npz`; for data tracked before records existed, a
    record with the kind only (from its ``head_model`` string); None without tracking.npz."""
    path = os.path.join(dataset_dir, "tracking.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        if "head_model_record" in z.files:
            return json.loads(str(z["head_model_record"]))
        if "head_model" in z.files:
            name = str(z["head_model"])
            return {"kind": "open" if name == "open" else "flame"}
    return None


def load_recorded_head(record: dict | None, head: str | None = None, landmark_embedding: str | None = None,
                       where: str = "tracking.npz") -> HeadModel:
    """Loads the head model a record names (files from the record's paths unless `head` /
    `landmark_embedding` override them) and checks it against the record. No record: `head` or "open"."""
    from ggtalker_jax.head import load
    if not record:
        return load(head or "open", landmark_embedding=landmark_embedding)
    if head == "open" or (head is None and record.get("kind") == "open"):
        model = load("open")
    else:
        files = {f["role"]: f["path"] for f in record.get("files", [])}
        path = head or files.get("model")
        embedding = landmark_embedding or files.get("landmark_embedding")
        for role, p in (("model", path), ("landmark_embedding", embedding)):
            if role in files and (p is None or not os.path.isfile(p)):
                raise FileNotFoundError(
                    f"{where} was fitted with head model {_describe(record)}; its {role} is not at {p} on this "
                    f"machine: pass --head /path/to/the/model and --landmark_embedding /path/to/the/embedding")
        if path is None:
            raise FileNotFoundError(f"{where} was fitted with head model {_describe(record)}; pass its file as --head")
        model = load(path, num_shape=record.get("num_shape"), landmark_embedding=embedding)
    check_head_model(model, record, where)
    return model

"""Head models behind one interface: the built-in open head model and FLAME (loaded safely).

    model = head.load("open")                 # or head.load("/path/to/generic_model.pkl",
                                              #              landmark_embedding="mediapipe_landmark_embedding.npz")
    out = head.forward(model, expression=e, jaw_pose=j, global_rot=r, translation=t)
    out.vertices [..., V, 3], out.landmarks [..., L, 3]

Eyes (blinks, gaze) for every model: `ggtalker_jax.head.eyes`. Which model a tracking was fitted with:
`ggtalker_jax.head.record` (`head_model_record`, `check_head_model`, `load_recorded_head`).
"""
from __future__ import annotations

import os

from ggtalker_jax.head.model import (JOINT_NAMES, NUM_EXPRESSION, HeadModel, HeadOutput, blink_dimensions,
                                     forward, join_expression53, rodrigues, split_expression53)
from ggtalker_jax.head.open_head import EXPRESSION_NAMES as OPEN_EXPRESSION_NAMES
from ggtalker_jax.head.record import (HeadModelMismatchError, check_head_model, head_model_record,
                                      load_recorded_head, read_record)


def load(name_or_path: str = "open", num_shape: int | None = None, landmark_embedding: str | None = None) -> HeadModel:
    """"open" -> the built-in model; a path to FLAME's generic_model.pkl (2020 / 2023) or an .npz with the
    same arrays -> FLAME (`num_shape` of its 300 shape components, default 100), with MediaPipe's points
    placed by `landmark_embedding` (an .npz, see `ggtalker_jax.head.landmark_embedding`; tracking needs it)."""
    if name_or_path == "open":
        from ggtalker_jax.head.open_head import open_head
        return open_head()
    if not os.path.exists(str(name_or_path)):
        raise FileNotFoundError(f"head model {name_or_path!r}: no such file; use 'open' (built in) or the path to "
                                "FLAME's generic_model.pkl / an .npz with its arrays")
    from ggtalker_jax.head.flame import load_flame
    return load_flame(name_or_path, num_shape=num_shape or 100, landmark_embedding=landmark_embedding)


__all__ = ["load", "forward", "HeadModel", "HeadOutput", "split_expression53", "join_expression53", "rodrigues",
           "blink_dimensions", "OPEN_EXPRESSION_NAMES", "NUM_EXPRESSION", "JOINT_NAMES",
           "head_model_record", "check_head_model", "load_recorded_head", "read_record", "HeadModelMismatchError"]

"""Reading a MediaPipe-to-mesh landmark embedding (which mesh point each MediaPipe face-mesh point is).

An embedding places L of MediaPipe's 478 face-mesh points on a head mesh: landmark l is the point with
barycentric coordinates `bary[l]` in triangle `faces[l]`. FLAME 2023 ships one as
``mediapipe_landmark_embedding.npz`` (L = 105, as used by metrical trackers); any ``.npz`` (no pickles)
with these arrays works:

  ==================  ==========================================================  =====================
  what                accepted keys (first found wins)                            shape / type
  ==================  ==========================================================  =====================
  face per landmark   lmk_face_idx, lmk_faces_idx, face_idx, faces_idx,           [L] int, in [0, F)
                      lmk_face_indices, face_indices, static_lmk_faces_idx
  barycentrics        lmk_b_coords, lmk_bary_coords, lmk_bary, b_coords,          [L, 3] (or [3, L])
                      bary_coords, barycentric_coords, static_lmk_bary_coords     float, rows sum to 1
  MediaPipe index     landmark_indices, mediapipe_indices, lmk_mediapipe_index,   [L] int, in [0, 478),
                      mp_indices, lmk_indices, landmark_idx                       unique
  ==================  ==========================================================  =====================

The MediaPipe index may be left out only when L is 468 or 478 (then landmark l is MediaPipe point l).
Errors name the file, the key and what was expected.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

NUM_MEDIAPIPE = 478
FACE_KEYS = ("lmk_face_idx", "lmk_faces_idx", "face_idx", "faces_idx", "lmk_face_indices", "face_indices",
             "static_lmk_faces_idx")
BARY_KEYS = ("lmk_b_coords", "lmk_bary_coords", "lmk_bary", "b_coords", "bary_coords", "barycentric_coords",
             "static_lmk_bary_coords")
INDEX_KEYS = ("landmark_indices", "mediapipe_indices", "lmk_mediapipe_index", "mp_indices", "lmk_indices",
              "landmark_idx")


def _first(raw: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in raw:
            return k, raw[k]
    return None, None


def load_landmark_embedding(path: str | os.PathLike, num_faces: int | None = None) -> dict[str, np.ndarray]:
    """Reads an embedding ``.npz`` -> ``{"lmk_faces" [L] int32, "lmk_bary" [L, 3] float32,
    "lmk_mediapipe_index" [L] int32}`` (keys as `HeadModel` names them). `num_faces`: the mesh's face
    count, to check the face indices against. Raises FileNotFoundError / ValueError naming the file."""
    path = os.fspath(path)
    fix = ("pass FLAME 2023's mediapipe_landmark_embedding.npz or an .npz with face indices [L], barycentric "
           "coordinates [L, 3] and MediaPipe indices [L] (see ggtalker_jax.head.landmark_embedding)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--landmark_embedding {path}: no such file; {fix}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as z:
                raw = {k: z[k] for k in z.files}
        else:
            raw = None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable landmark embedding .npz ({type(err).__name__}: {err}; pickled "
                         f"objects are refused); {fix}") from None
    if raw is None:
        raise ValueError(f"{path}: a single .npy array, not an .npz of named arrays; {fix}")
    face_key, faces = _first(raw, FACE_KEYS)
    bary_key, bary = _first(raw, BARY_KEYS)
    index_key, index = _first(raw, INDEX_KEYS)
    if face_key is None or bary_key is None:
        missing = [name for name, k in (("face indices", face_key), ("barycentric coordinates", bary_key)) if k is None]
        raise ValueError(f"{path}: no {' and no '.join(missing)} (looked for keys {FACE_KEYS if face_key is None else ''}"
                         f"{BARY_KEYS if bary_key is None else ''}); present: {sorted(raw)}; {fix}")
    faces, bary = np.asarray(faces), np.asarray(bary)
    if faces.ndim != 1 or faces.dtype.kind not in "iu":
        raise ValueError(f"{path}: key {face_key!r} must be [L] integers, got {faces.dtype} {list(faces.shape)}")
    num = faces.shape[0]
    if bary.ndim == 2 and bary.shape == (3, num) and num != 3:
        bary = bary.T
    if bary.shape != (num, 3) or bary.dtype.kind != "f":
        raise ValueError(f"{path}: key {bary_key!r} must be [{num}, 3] floats (one row per landmark of "
                         f"{face_key!r}), got {bary.dtype} {list(bary.shape)}")
    if not np.all(np.isfinite(bary)) or np.any(np.abs(bary.sum(-1) - 1.0) > 1e-3) or np.any(bary < -1e-3):
        raise ValueError(f"{path}: key {bary_key!r} rows must be barycentric coordinates (>= 0, summing to 1)")
    if index_key is None:
        if num not in (468, NUM_MEDIAPIPE):
            raise ValueError(f"{path}: {num} landmarks but no MediaPipe index array (looked for keys {INDEX_KEYS}); "
                             f"present: {sorted(raw)}; add 'landmark_indices' [{num}] int")
        index = np.arange(num)
    index = np.asarray(index)
    if index.shape != (num,) or index.dtype.kind not in "iu":
        raise ValueError(f"{path}: key {index_key!r} must be [{num}] integers, got {index.dtype} {list(index.shape)}")
    if num and (index.min() < 0 or index.max() >= NUM_MEDIAPIPE or len(np.unique(index)) != num):
        raise ValueError(f"{path}: key {index_key!r} must hold distinct MediaPipe point indices in [0, {NUM_MEDIAPIPE})")
    if num and (faces.min() < 0 or (num_faces is not None and faces.max() >= num_faces)):
        raise ValueError(f"{path}: key {face_key!r} indexes faces outside [0, {num_faces}) of the head mesh; "
                         "is the embedding for another mesh (e.g. FLAME 2020 vs 2023)?")
    return {"lmk_faces": faces.astype(np.int32), "lmk_bary": bary.astype(np.float32),
            "lmk_mediapipe_index": index.astype(np.int32)}

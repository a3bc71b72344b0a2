"""Safe loading of the official FLAME model files, without chumpy and without arbitrary unpickling.

The official FLAME ``generic_model.pkl`` (FLAME 2020 / 2023) is a Python-2 pickle of a dict whose
values are numpy arrays, chumpy ``Ch`` objects (the array lives in the state dict under ``x``) and a
``scipy.sparse`` ``csc_matrix`` (``J_regressor``). Unpickling it the ordinary way imports chumpy and
scipy and, more importantly, lets the file call any importable callable. Here a restricted
``pickle.Unpickler`` resolves only an explicit allow-list of names to inert stand-ins or to numpy's
own array reconstructors; every other global is refused with :class:`UnsafePickleError` before
anything in the file runs. The same file re-saved by Python 3 at protocol 2 (bytes stored as
``_codecs.encode(str, 'latin1')``) loads too.

Public API:
  * :func:`load_flame_arrays` -- ``generic_model.pkl`` or an ``.npz`` with the same keys -> dict of
    plain numpy arrays laid out as the FLAME PyTorch code uses them.
  * :func:`load_landmark_embedding` -- FLAME's ``mediapipe_landmark_embedding.npz`` -> dict.
  * :class:`UnsafePickleError` -- a ``ValueError`` naming the file and the refused ``module.name``.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

__all__ = [
    "FLAME_STORED_SHAPE_COMPONENTS",
    "UnsafePickleError",
    "load_flame_arrays",
    "load_landmark_embedding",
]

# FLAME's ``shapedirs`` stores the identity (shape) basis first, then the expression basis.
FLAME_STORED_SHAPE_COMPONENTS = 300

_REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")


class UnsafePickleError(ValueError):
    """A pickle referenced a global outside the FLAME allow-list; nothing from it was executed."""


# ---------------------------------------------------------------------------------------------
# Inert stand-ins for the classes a FLAME pickle references.
# ---------------------------------------------------------------------------------------------


class _ChumpyArray:
    """Stand-in for ``chumpy.ch.Ch``: keeps the pickled state dict; the array is ``state['x']``."""

    __slots__ = ("state",)

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def to_array(self, where: str) -> np.ndarray:
        state = getattr(self, "state", None)
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError(f"{where}: chumpy Ch object has no array under 'x' in its pickled state")
        return np.asarray(state["x"])


class _SparseMatrix:
    """Stand-in for scipy's ``csc_matrix``/``csr_matrix``: densified from data/indices/indptr/shape."""

    __slots__ = ("state",)
    compressed_axis: int = 1  # csc: indptr runs over columns

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def to_array(self, where: str) -> np.ndarray:
        state = getattr(self, "state", None)
        if not isinstance(state, dict):
            raise ValueError(f"{where}: sparse matrix has no state dict in the pickle")
        missing = [k for k in ("data", "indices", "indptr") if k not in state]
        shape = state.get("_shape", state.get("shape"))
        if missing or shape is None:
            raise ValueError(f"{where}: sparse matrix state lacks {missing or ['_shape']}")
        data = np.asarray(state["data"])
        indices = np.asarray(state["indices"]).astype(np.int64)
        indptr = np.asarray(state["indptr"]).astype(np.int64)
        rows, cols = (int(s) for s in shape)
        major = cols if self.compressed_axis == 1 else rows
        minor = rows if self.compressed_axis == 1 else cols
        if (
            indptr.ndim != 1 or indptr.shape[0] != major + 1 or indptr[0] != 0
            or np.any(np.diff(indptr) < 0) or indptr[-1] != data.shape[0]
            or indices.shape != data.shape or data.ndim != 1
            or (indices.size and (indices.min() < 0 or indices.max() >= minor))
        ):
            raise ValueError(f"{where}: inconsistent sparse matrix (shape {shape}, "
                             f"{data.shape[0]} values, indptr of length {indptr.shape[0]})")
        major_index = np.repeat(np.arange(major), np.diff(indptr))
        dense = np.zeros((rows, cols), dtype=data.dtype)
        if self.compressed_axis == 1:
            np.add.at(dense, (indices, major_index), data)
        else:
            np.add.at(dense, (major_index, indices), data)
        return dense


class _CscMatrix(_SparseMatrix):
    compressed_axis = 1


class _CsrMatrix(_SparseMatrix):
    compressed_axis = 0


_STANDIN_CLASSES = (_ChumpyArray, _CscMatrix, _CsrMatrix)


class _NdarrayToken:
    """What ``numpy.ndarray`` resolves to: only usable as the subtype argument of ``_reconstruct``."""


def _safe_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` restricted to plain ndarrays of shape (0,)."""
    if subtype is not _NdarrayToken:
        raise UnsafePickleError(f"_reconstruct called with a non-ndarray type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _safe_copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` that only instantiates the stand-ins, from plain ``object``."""
    if cls not in _STANDIN_CLASSES or base is not object or state is not None:
        raise UnsafePickleError(f"copyreg._reconstructor refused for {cls!r} (base {base!r})")
    return object.__new__(cls)


def _safe_copyreg_newobj(cls: Any, *args: Any) -> Any:
    """``copyreg.__newobj__`` that only instantiates the stand-ins."""
    if cls not in _STANDIN_CLASSES or args:
        raise UnsafePickleError(f"copyreg.__newobj__ refused for {cls!r}")
    return object.__new__(cls)


def _safe_codecs_encode(text: Any, encoding: Any = None, errors: Any = "strict") -> bytes:
    """``_codecs.encode(str, 'latin1')``: how Python 3 stores ``bytes`` in pickle protocols 0-2.

    Only that exact call is honoured (a ``str`` and the ``latin1`` codec, as ``pickle`` writes it); any
    other codec (``zlib``, ``rot13``, ...) or argument type is refused.
    """
    if type(text) is not str or encoding != "latin1" or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode refused for ({type(text).__name__}, {encoding!r}, "
                                f"{errors!r}); only (str, 'latin1') is allowed")
    return text.encode("latin1")


def _numpy_scalar() -> Any:
    from numpy._core import multiarray

    return multiarray.scalar


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("chumpy.ch", "chumpy"):
    _ALLOWED_GLOBALS[(_mod, "Ch")] = _ChumpyArray
for _mod in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse"):
    _ALLOWED_GLOBALS[(_mod, "csc_matrix")] = _CscMatrix
for _mod in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse"):
    _ALLOWED_GLOBALS[(_mod, "csr_matrix")] = _CsrMatrix
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_mod, "_reconstruct")] = _safe_reconstruct
    _ALLOWED_GLOBALS[(_mod, "scalar")] = _numpy_scalar()
_ALLOWED_GLOBALS[("numpy", "ndarray")] = _NdarrayToken
_ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
for _mod in ("copy_reg", "copyreg"):
    _ALLOWED_GLOBALS[(_mod, "_reconstructor")] = _safe_copyreg_reconstructor
    _ALLOWED_GLOBALS[(_mod, "__newobj__")] = _safe_copyreg_newobj
for _mod in ("__builtin__", "builtins"):
    _ALLOWED_GLOBALS[(_mod, "object")] = object
    # Python 2 pickles sets as REDUCE(set, [items]); chumpy state dicts hold sets such as _dirty_vars.
    _ALLOWED_GLOBALS[(_mod, "set")] = set
    _ALLOWED_GLOBALS[(_mod, "frozenset")] = frozenset
# Python 3 writing protocol <= 2 stores bytes (e.g. ndarray raw data) as _codecs.encode(str, 'latin1').
_ALLOWED_GLOBALS[("_codecs", "encode")] = _safe_codecs_encode
del _mod


class _FlameUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the FLAME allow-list; anything else raises UnsafePickleError."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        resolved = _ALLOWED_GLOBALS.get((module, name))
        if resolved is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle global '{module}.{name}' (not on the FLAME "
                "allow-list; the file may be hostile or not a FLAME model). Nothing was executed.")
        return resolved

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refusing persistent id {pid!r} in pickle")


def _unpickle_flame(path: str) -> dict:
    with open(path, "rb") as handle:
        try:
            obj = _FlameUnpickler(handle, path).load()
        except UnsafePickleError as err:
            if path in str(err):
                raise
            raise UnsafePickleError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError,
                KeyError, ValueError, UnicodeDecodeError, MemoryError) as err:
            raise ValueError(f"{path}: not a readable FLAME pickle ({type(err).__name__}: {err}); "
                             "re-download generic_model.pkl from flame.is.tue.mpg.de") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of FLAME arrays at the top level, got "
                         f"{type(obj).__name__}")
    return obj


def _load_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz of FLAME arrays ({type(err).__name__}: "
                         f"{err}); object arrays are refused (allow_pickle=False)") from None


def _as_numeric(value: Any, path: str, key: str) -> np.ndarray:
    where = f"{path}: key '{key}'"
    if isinstance(value, _STANDIN_CLASSES):
        value = value.to_array(where)
    elif isinstance(value, (_NdarrayToken, type)) or callable(value):
        raise ValueError(f"{where} holds {value!r}, not an array")
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where} has dtype {array.dtype}, expected numbers")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"{where} contains NaN or Inf values")
    return array


def _check_shape(array: np.ndarray, expected: tuple, path: str, key: str, meaning: str) -> None:
    ok = array.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, array.shape))
    if not ok:
        shown = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{path}: key '{key}' has shape {list(array.shape)}, expected {shown} "
                         f"({meaning})")


def _parents_from_kintree(kintree: np.ndarray, path: str) -> np.ndarray:
    """``kintree_table [2, J]`` (row 0 parent ids, row 1 joint ids) -> ``parents [J]``, root -1."""
    num_joints = kintree.shape[1]
    ids = kintree[1].astype(np.int64)
    if len(set(ids.tolist())) != num_joints:
        raise ValueError(f"{path}: key 'kintree_table' has repeated joint ids {ids.tolist()}")
    column_of = {int(i): c for c, i in enumerate(ids)}
    parents = np.full((num_joints,), -1, dtype=np.int32)
    for c in range(1, num_joints):
        parent_id = int(kintree[0, c])
        if parent_id not in column_of:
            raise ValueError(f"{path}: key 'kintree_table' joint {c} has unknown parent id {parent_id}")
        parents[c] = column_of[parent_id]
        if parents[c] >= c:
            raise ValueError(f"{path}: key 'kintree_table' is not topologically ordered (joint {c} "
                             f"has parent {parents[c]}); FLAME's LBS needs parents before children")
    return parents


def load_flame_arrays(path: str | os.PathLike, num_shape: int = 300,
                      num_expression: int = 100) -> dict[str, np.ndarray]:
    """Read FLAME ``generic_model.pkl`` (or an ``.npz`` with the same keys) safely.

    Args:
      path: the official pickle (Python 2, or re-saved by Python 3 at protocol <= 2; chumpy/scipy
        objects are replaced by inert stand-ins) or
        an ``.npz`` holding ``v_template, f, shapedirs, posedirs, J_regressor, kintree_table,
        weights`` (``J_regressor`` dense).
      num_shape: identity components kept, ``<= 300`` (FLAME stores 300 shape components first).
      num_expression: expression components kept, ``<= shapedirs.shape[2] - 300``.

    Returns:
      dict of numpy arrays (V vertices, F faces, J joints; FLAME: V=5023, F=9976, J=5):
        ``v_template [V, 3]`` float32, ``faces [F, 3]`` int32,
        ``shapedirs [V, 3, num_shape]`` float32, ``exprdirs [V, 3, num_expression]`` float32,
        ``posedirs [(J-1)*9, V*3]`` float32 (as ``reshape(posedirs, [-1, P]).T`` in FLAME PyTorch),
        ``J_regressor [J, V]`` float32, ``parents [J]`` int32 (root -1),
        ``lbs_weights [V, J]`` float32.

    Raises:
      FileNotFoundError: no file at ``path``.
      UnsafePickleError: the pickle references a global outside the allow-list (nothing executed).
      ValueError: unreadable file, missing key, wrong shape, non-finite values, bad counts.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: FLAME model file not found; download generic_model.pkl "
                                "from flame.is.tue.mpg.de and pass its path")
    for arg, value in (("num_shape", num_shape), ("num_expression", num_expression)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{arg} must be a non-negative int, got {value!r}")
    if num_shape > FLAME_STORED_SHAPE_COMPONENTS:
        raise ValueError(f"num_shape={num_shape} exceeds the {FLAME_STORED_SHAPE_COMPONENTS} shape "
                         "components FLAME stores")

    if path.lower().endswith(".npz"):
        raw = _load_npz(path)
    else:
        raw = _unpickle_flame(path)
    missing = [key for key in _REQUIRED_KEYS if key not in raw]
    if missing:
        raise ValueError(f"{path}: missing FLAME key(s) {missing}; present: {sorted(map(str, raw))}")
    arrays = {key: _as_numeric(raw[key], path, key) for key in _REQUIRED_KEYS}

    v_template = arrays["v_template"]
    _check_shape(v_template, (None, 3), path, "v_template", "[V, 3] template vertices")
    num_vertices = v_template.shape[0]

    faces = arrays["f"]
    _check_shape(faces, (None, 3), path, "f", "[F, 3] triangle vertex indices")
    if faces.dtype.kind == "f":
        raise ValueError(f"{path}: key 'f' has float dtype {faces.dtype}, expected integer indices")
    if faces.size and (faces.min() < 0 or faces.max() >= num_vertices):
        raise ValueError(f"{path}: key 'f' indexes vertices outside [0, {num_vertices})")

    shapedirs_all = arrays["shapedirs"]
    _check_shape(shapedirs_all, (num_vertices, 3, None), path, "shapedirs",
                 "[V, 3, 300 shape + expression components]")
    stored_expression = shapedirs_all.shape[2] - FLAME_STORED_SHAPE_COMPONENTS
    if stored_expression < 0:
        raise ValueError(f"{path}: key 'shapedirs' has {shapedirs_all.shape[2]} components, fewer "
                         f"than the {FLAME_STORED_SHAPE_COMPONENTS} shape components FLAME stores")
    if num_expression > stored_expression:
        raise ValueError(f"num_expression={num_expression} exceeds the {stored_expression} "
                         f"expression components stored in {path} (key 'shapedirs')")

    kintree = arrays["kintree_table"]
    _check_shape(kintree, (2, None), path, "kintree_table", "[2, J] parent ids / joint ids")
    num_joints = kintree.shape[1]
    parents = _parents_from_kintree(kintree, path)

    posedirs = arrays["posedirs"]
    num_pose_basis = (num_joints - 1) * 9
    _check_shape(posedirs, (num_vertices, 3, num_pose_basis), path, "posedirs",
                 "[V, 3, (J-1)*9] pose-corrective blend shapes")

    j_regressor = arrays["J_regressor"]
    _check_shape(j_regressor, (num_joints, num_vertices), path, "J_regressor", "[J, V]")
    weights = arrays["weights"]
    _check_shape(weights, (num_vertices, num_joints), path, "weights", "[V, J] skinning weights")

    f32 = np.float32
    return {
        "v_template": np.ascontiguousarray(v_template, dtype=f32),
        "faces": np.ascontiguousarray(faces, dtype=np.int32),
        "shapedirs": np.ascontiguousarray(shapedirs_all[:, :, :num_shape], dtype=f32),
        "exprdirs": np.ascontiguousarray(
            shapedirs_all[:, :, FLAME_STORED_SHAPE_COMPONENTS:FLAME_STORED_SHAPE_COMPONENTS + num_expression],
            dtype=f32),
        "posedirs": np.ascontiguousarray(np.reshape(posedirs, (-1, num_pose_basis)).T, dtype=f32),
        "J_regressor": np.ascontiguousarray(j_regressor, dtype=f32),
        "parents": parents,
        "lbs_weights": np.ascontiguousarray(weights, dtype=f32),
    }


def load_landmark_embedding(path_npz: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read FLAME's ``mediapipe_landmark_embedding.npz`` (no pickles allowed).

    Returns:
      ``lmk_face_idx [L]`` int32 (FLAME face per landmark), ``lmk_b_coords [L, 3]`` float32
      (barycentric coordinates in that face), ``landmark_indices [L]`` int32 (MediaPipe Face Mesh
      landmark index of each embedded point). FLAME ships L = 105.
    """
    path = os.fspath(path_npz)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: landmark embedding not found; pass the path of FLAME's "
                                "mediapipe_landmark_embedding.npz")
    raw = _load_npz(path)
    missing = [k for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; present: {sorted(raw)}")
    face_idx = _as_numeric(raw["lmk_face_idx"], path, "lmk_face_idx")
    coords = _as_numeric(raw["lmk_b_coords"], path, "lmk_b_coords")
    indices = _as_numeric(raw["landmark_indices"], path, "landmark_indices")
    _check_shape(face_idx, (None,), path, "lmk_face_idx", "[L] face index per landmark")
    num = face_idx.shape[0]
    _check_shape(coords, (num, 3), path, "lmk_b_coords", "[L, 3] barycentric coordinates")
    _check_shape(indices, (num,), path, "landmark_indices", "[L] MediaPipe landmark indices")
    for key, arr in (("lmk_face_idx", face_idx), ("landmark_indices", indices)):
        if arr.dtype.kind == "f" or (arr.size and arr.min() < 0):
            raise ValueError(f"{path}: key '{key}' must hold non-negative integers")
    return {
        "lmk_face_idx": face_idx.astype(np.int32),
        "lmk_b_coords": coords.astype(np.float32),
        "landmark_indices": indices.astype(np.int32),
    }

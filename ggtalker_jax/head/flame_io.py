"""Reading the official FLAME files without trusting them.

FLAME's `generic_model.pkl` is a Python-2 pickle of chumpy `Ch` objects and a scipy sparse matrix. Loading it
with `pickle.load` would import chumpy (unmaintained, broken on NumPy 2) and, worse, would run whatever a
tampered file asks for. `SafeFlameUnpickler.find_class` resolves only an allow-list of names (the numpy
reconstruction helpers, and inert stand-ins for chumpy's `Ch` and scipy's csc/csr matrices that become plain
arrays); every other name is refused with `UnsafePickleError` before anything from the file runs.
"""
from __future__ import annotations

import os
import pickle

import numpy as np


class UnsafePickleError(ValueError):
    """A pickle asked for a class or function outside the FLAME allow-list."""


class _ChStandIn:
    """Replaces chumpy.Ch: keeps the pickled state; `.array` is its value (`x`)."""

    def __setstate__(self, state):
        self.state = state

    @property
    def array(self):
        x = self.state.get("x") if isinstance(self.state, dict) else None
        if x is None:
            raise ValueError("chumpy object without an 'x' array")
        return np.asarray(x)


class _SparseStandIn:
    """Replaces scipy.sparse csc/csr matrices: builds the dense array from data/indices/indptr."""
    layout = "csc"

    def __setstate__(self, state):
        self.state = state

    @property
    def array(self):
        s = self.state
        shape = tuple(s.get("_shape") or s.get("shape"))
        data, indices, indptr = np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"])
        dense = np.zeros(shape, data.dtype)
        major = shape[1] if self.layout == "csc" else shape[0]
        for j in range(major):
            rows = indices[indptr[j]:indptr[j + 1]]
            vals = data[indptr[j]:indptr[j + 1]]
            if self.layout == "csc":
                dense[rows, j] = vals
            else:
                dense[j, rows] = vals
        return dense


class _CsrStandIn(_SparseStandIn):
    layout = "csr"


def _safe_reconstructor(cls, base, state):
    """copyreg._reconstructor restricted to the stand-ins (what protocol-0/2 pickles of Ch objects use)."""
    if cls not in (_ChStandIn, _SparseStandIn, _CsrStandIn) or base is not object:
        raise UnsafePickleError(f"refusing to reconstruct {cls!r} from base {base!r}")
    return object.__new__(cls)


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as Python-3 protocol-2 pickles use it for raw bytes; nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


_INERT_BUILTINS = {"object": object, "set": set, "frozenset": frozenset, "list": list, "tuple": tuple,
                   "dict": dict}      # containers chumpy's state holds; none of them runs code
_CH = {"Ch", "Select", "Minimum", "Maximum", "Reorder", "Transpose", "Concatenate"}


class SafeFlameUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module, name):
        if module.startswith("chumpy") and name in _CH | {"Ch"}:
            return _ChStandIn
        if module.startswith("scipy.sparse") and name in ("csc_matrix", "csc_array"):
            return _SparseStandIn
        if module.startswith("scipy.sparse") and name in ("csr_matrix", "csr_array"):
            return _CsrStandIn
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(np._core.multiarray, name) if hasattr(np, "_core") else getattr(np.core.multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _safe_reconstructor
        if module in ("__builtin__", "builtins") and name in _INERT_BUILTINS:
            return _INERT_BUILTINS[name]
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise UnsafePickleError(f"{self.path}: refusing to load {module}.{name} - not part of a FLAME model file "
                                "(only numpy arrays, chumpy Ch and scipy sparse matrices are allowed); "
                                "is this the official generic_model.pkl?")


def _plain(x):
    if isinstance(x, (_ChStandIn, _SparseStandIn)):
        return x.array
    return x


def read_flame_pickle(path: str) -> dict:
    """The pickle's dict with every value a plain numpy array (or what it was, for strings)."""
    with open(path, "rb") as f:
        try:
            obj = SafeFlameUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated / not a pickle
            raise ValueError(f"{path}: not a readable FLAME pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of arrays, found {type(obj).__name__}")
    return {k: _plain(v) for k, v in obj.items()}


def load_flame_arrays(path: str, num_shape: int = 300, num_expression: int = 100) -> dict:
    """FLAME arrays from generic_model.pkl (2020/2023) or an .npz with the same names -> dict of numpy:
    v_template [V,3], faces [F,3], shapedirs [V,3,num_shape], exprdirs [V,3,num_expression],
    posedirs [(J-1)*9, V*3], J_regressor [J,V] (dense), parents [J] (root -1), lbs_weights [V,J]."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    else:
        raw = read_flame_pickle(path)
    need = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
    missing = [k for k in need if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing FLAME arrays {missing}")
    v = np.asarray(raw["v_template"], np.float32)
    nv = v.shape[0]
    sd = np.asarray(raw["shapedirs"], np.float32)
    if sd.ndim != 3 or sd.shape[:2] != (nv, 3) or sd.shape[2] < 300 + num_expression:
        raise ValueError(f"{path}: shapedirs has shape {sd.shape}, expected [{nv}, 3, 300 + {num_expression}] "
                         "(300 shape then the expression components)")
    if not 1 <= num_shape <= 300:
        raise ValueError(f"num_shape must be in [1, 300], got {num_shape}")
    posedirs = np.asarray(raw["posedirs"], np.float32)
    if posedirs.ndim == 3:                                     # [V, 3, P] -> [P, V*3], as FLAME's torch code does
        posedirs = posedirs.reshape(nv * 3, -1).T
    kintree = np.asarray(raw["kintree_table"]).astype(np.int64)
    parents = kintree[0].copy()
    parents[0] = -1
    J = np.asarray(raw["J_regressor"], np.float32)
    if J.shape != (len(parents), nv):
        raise ValueError(f"{path}: J_regressor has shape {J.shape}, expected [{len(parents)}, {nv}]")
    return {"v_template": v, "faces": np.asarray(raw["f"]).astype(np.int32), "shapedirs": sd[:, :, :num_shape],
            "exprdirs": sd[:, :, 300:300 + num_expression], "posedirs": posedirs, "J_regressor": J,
            "parents": parents.astype(np.int32), "lbs_weights": np.asarray(raw["weights"], np.float32)}


def load_landmark_embedding(path: str) -> dict:
    """FLAME's mediapipe_landmark_embedding.npz -> {lmk_face_idx [L], lmk_b_coords [L,3], landmark_indices [L]}."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (expected FLAME's mediapipe_landmark_embedding.npz)")
        return {k: np.asarray(z[k]) for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices")}


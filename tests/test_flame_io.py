"""Tests for the safe FLAME loader: a FLAME-shaped Python-2-style pickle built without chumpy/scipy."""

import copyreg
import io
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from ggtalker_jax.head.flame_io import (
    UnsafePickleError,
    load_flame_arrays,
    load_landmark_embedding,
)

NUM_VERTICES, NUM_JOINTS, NUM_FACES = 7, 5, 6
NUM_COMPONENTS = 300 + 100


# Stand-ins named exactly like the classes a real FLAME pickle references.
class Ch:
    """Mimics chumpy.ch.Ch: pickled via copy_reg._reconstructor with a state dict holding 'x'."""

    def __init__(self, x, use_newobj=False):
        self.x = x
        self.use_newobj = use_newobj

    def __reduce_ex__(self, protocol):
        state = {"x": self.x, "_dirty_vars": set(), "_itr": None}
        if self.use_newobj:  # Python 2 protocol 2 default for new-style classes: NEWOBJ opcode
            return copyreg.__newobj__, (type(self),), state
        return copyreg._reconstructor, (type(self), object, None), state


Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"


class csc_matrix:  # noqa: N801 (mirrors scipy's name)
    def __init__(self, dense):
        cols = [np.nonzero(dense[:, j])[0] for j in range(dense.shape[1])]
        self.state = {
            "data": np.concatenate([dense[r, j] for j, r in enumerate(cols)]),
            "indices": np.concatenate(cols).astype(np.int32),
            "indptr": np.concatenate([[0], np.cumsum([len(r) for r in cols])]).astype(np.int32),
            "_shape": dense.shape,
            "maxprint": 50,
            "format": "csc",
        }

    def __reduce_ex__(self, protocol):
        return copyreg._reconstructor, (type(self), object, None), self.state


class _Py2Pickler(pickle._Pickler):
    """Pure-Python pickler that writes bytes as Python-2 str opcodes (BINSTRING), like FLAME's file."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", len(obj)) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<I", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _fake_modules(monkeypatch, sparse_module):
    """Temporarily make the stand-in classes importable under their real names, only for dumping."""
    chumpy = types.ModuleType("chumpy")
    chumpy_ch = types.ModuleType("chumpy.ch")
    chumpy_ch.Ch = Ch
    sparse = types.ModuleType(sparse_module)
    csc_matrix.__module__ = sparse_module
    sparse.csc_matrix = csc_matrix
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", chumpy_ch)
    monkeypatch.setitem(sys.modules, sparse_module, sparse)


def _flame_reference(seed=0):
    rng = np.random.default_rng(seed)
    j_regressor = np.zeros((NUM_JOINTS, NUM_VERTICES))
    j_regressor[np.arange(NUM_JOINTS), rng.integers(0, NUM_VERTICES, NUM_JOINTS)] = 0.5
    j_regressor[np.arange(NUM_JOINTS), rng.integers(0, NUM_VERTICES, NUM_JOINTS)] += 0.25
    weights = rng.random((NUM_VERTICES, NUM_JOINTS))
    return {
        "v_template": rng.normal(size=(NUM_VERTICES, 3)),
        "f": rng.integers(0, NUM_VERTICES, (NUM_FACES, 3)).astype(np.uint32),
        "shapedirs": rng.normal(size=(NUM_VERTICES, 3, NUM_COMPONENTS)),
        "posedirs": rng.normal(size=(NUM_VERTICES, 3, (NUM_JOINTS - 1) * 9)),
        "J_regressor": j_regressor,
        # FLAME's table: root parent id is uint32 max; joints 2,3,4 (neck, jaw, eyes) hang off 1.
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.uint32),
        "weights": weights / weights.sum(axis=1, keepdims=True),
    }


def _write_flame_pickle(path, reference, monkeypatch, numpy_module, sparse_module="scipy.sparse._csc",
                        pickler=_Py2Pickler):
    _fake_modules(monkeypatch, sparse_module)
    model = dict(reference)
    model["v_template"] = Ch(reference["v_template"])
    model["shapedirs"] = Ch(reference["shapedirs"], use_newobj=True)
    model["weights"] = Ch(reference["weights"])
    model["J_regressor"] = csc_matrix(reference["J_regressor"])
    model["J_regressor_prior"] = csc_matrix(reference["J_regressor"])
    model["bs_style"], model["bs_type"] = "lbs", "lrotmin"
    model["scale"] = np.float64(1.0)  # exercises numpy's `scalar` reconstructor
    buffer = io.BytesIO()
    pickler(buffer, protocol=2).dump(model)
    monkeypatch.undo()
    data = buffer.getvalue()
    assert b"numpy._core.multiarray" in data
    assert (b"_codecs\nencode\n" in data) == (pickler is not _Py2Pickler)  # Py3 stores bytes that way
    data = data.replace(b"numpy._core.multiarray", numpy_module.encode())
    with open(path, "wb") as handle:
        handle.write(data)
    return data


def _check_loaded(loaded, reference, num_shape, num_expression):
    np.testing.assert_allclose(loaded["v_template"], reference["v_template"], rtol=1e-6)
    np.testing.assert_array_equal(loaded["faces"], reference["f"].astype(np.int32))
    np.testing.assert_allclose(loaded["shapedirs"], reference["shapedirs"][:, :, :num_shape], rtol=1e-6)
    np.testing.assert_allclose(
        loaded["exprdirs"], reference["shapedirs"][:, :, 300:300 + num_expression], rtol=1e-6)
    posedirs = reference["posedirs"]
    np.testing.assert_allclose(loaded["posedirs"], posedirs.reshape(-1, posedirs.shape[-1]).T, rtol=1e-6)
    # posedirs[p, 3*v + c] is pose basis p's offset of vertex v, coordinate c.
    assert loaded["posedirs"][7, 3 * 4 + 2] == np.float32(posedirs[4, 2, 7])
    np.testing.assert_allclose(loaded["J_regressor"], reference["J_regressor"], rtol=1e-6)
    np.testing.assert_array_equal(loaded["parents"], [-1, 0, 1, 1, 1])
    np.testing.assert_allclose(loaded["lbs_weights"], reference["weights"], rtol=1e-6)
    assert loaded["faces"].dtype == np.int32 and loaded["parents"].dtype == np.int32
    for key in ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "lbs_weights"):
        assert loaded[key].dtype == np.float32, key
    assert loaded["shapedirs"].shape == (NUM_VERTICES, 3, num_shape)
    assert loaded["exprdirs"].shape == (NUM_VERTICES, 3, num_expression)
    assert loaded["posedirs"].shape == ((NUM_JOINTS - 1) * 9, NUM_VERTICES * 3)


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
@pytest.mark.parametrize("sparse_module", ["scipy.sparse._csc", "scipy.sparse.csc"])
def test_loads_flame_shaped_python2_pickle(tmp_path, monkeypatch, numpy_module, sparse_module):
    reference = _flame_reference()
    path = tmp_path / "generic_model.pkl"
    data = _write_flame_pickle(path, reference, monkeypatch, numpy_module, sparse_module)
    # The file references exactly the Python-2 names a real FLAME pickle does.
    for name in (b"chumpy.ch\nCh\n", f"{sparse_module}\ncsc_matrix\n".encode(),
                 b"copy_reg\n_reconstructor\n", b"__builtin__\nobject\n",
                 f"{numpy_module}\n_reconstruct\n".encode(), f"{numpy_module}\nscalar\n".encode(),
                 b"numpy\nndarray\n", b"numpy\ndtype\n"):
        assert name in data, name
    assert pickle.NEWOBJ in data  # the NEWOBJ path for Ch is exercised too

    loaded = load_flame_arrays(path, num_shape=20, num_expression=10)
    _check_loaded(loaded, reference, 20, 10)
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules

    full = load_flame_arrays(str(path))
    _check_loaded(full, reference, 300, 100)


def test_loads_flame_shaped_python3_protocol2_pickle(tmp_path, monkeypatch):
    """Python 3 at protocol 2 stores bytes (ndarray raw data, dtype codes) as _codecs.encode(s, 'latin1')."""
    reference = _flame_reference(seed=5)
    path = tmp_path / "generic_model_py3.pkl"
    data = _write_flame_pickle(path, reference, monkeypatch, "numpy._core.multiarray", pickler=pickle.Pickler)
    assert data[:2] == b"\x80\x02" and data.count(b"_codecs\nencode\n") == 1  # global memoised, reused
    loaded = load_flame_arrays(path, num_shape=30, num_expression=20)
    _check_loaded(loaded, reference, 30, 20)


@pytest.mark.parametrize("args", [("x", "zlib"), ("x", "rot13"), ("x", "latin1", "ignore"), (b"x", "latin1"),
                                  ("x",)])
def test_codecs_encode_only_str_latin1(tmp_path, args):
    """_codecs.encode is allowed only as pickle itself calls it; other codecs/arguments are refused."""
    items = b"".join(pickle.dumps(a, protocol=2)[2:-1] for a in args)  # each argument's opcodes
    body = b"c_codecs\nencode\n(" + items + b"tR"
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"\x80\x02}(X\x01\x00\x00\x00f" + body + b"u.")
    with pytest.raises(UnsafePickleError, match="_codecs.encode refused"):
        load_flame_arrays(path)


def test_npz_round_trip(tmp_path, monkeypatch):
    reference = _flame_reference(seed=1)
    pkl_path = tmp_path / "generic_model.pkl"
    _write_flame_pickle(pkl_path, reference, monkeypatch, "numpy.core.multiarray")
    npz_path = tmp_path / "flame.npz"
    np.savez(npz_path, **reference)
    from_npz = load_flame_arrays(npz_path, num_shape=50, num_expression=50)
    from_pkl = load_flame_arrays(pkl_path, num_shape=50, num_expression=50)
    assert from_npz.keys() == from_pkl.keys()
    for key in from_npz:
        np.testing.assert_array_equal(from_npz[key], from_pkl[key], err_msg=key)
    _check_loaded(from_npz, reference, 50, 50)


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evaluates:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return eval, (self.source,)


class _OpensProcess:
    def __init__(self, argv):
        self.argv = argv

    def __reduce__(self):
        import subprocess

        return subprocess.Popen, (self.argv,)


@pytest.mark.parametrize("make_payload, refused", [
    (lambda marker: _RunsShell(f"touch {marker}"), "system"),
    (lambda marker: _Evaluates(f"open({str(marker)!r}, 'w').close()"), "eval"),
    (lambda marker: _OpensProcess(["touch", str(marker)]), "Popen"),
])
@pytest.mark.parametrize("pickler, protocol", [(_Py2Pickler, 0), (_Py2Pickler, 2), (pickle.Pickler, 2)])
def test_hostile_pickle_refused_and_not_executed(tmp_path, make_payload, refused, pickler, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "generic_model.pkl"
    # Valid FLAME content (numpy arrays; Python-2 style bytes, or Python 3's _codecs.encode) first,
    # the hostile object after it.
    payload = {"v_template": np.zeros((3, 3)), "f": make_payload(marker)}
    buffer = io.BytesIO()
    pickler(buffer, protocol=protocol).dump(payload)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UnsafePickleError) as info:
        load_flame_arrays(path)
    message = str(info.value)
    assert str(path) in message and refused in message
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


def test_reconstructor_refuses_non_standin_class(tmp_path):
    """copy_reg._reconstructor is allowed, but only for the stand-ins; a named global is still needed."""
    path = tmp_path / "evil.pkl"
    # copy_reg._reconstructor(numpy.dtype, object, None): allowed globals, disallowed combination.
    path.write_bytes(b"\x80\x02ccopy_reg\n_reconstructor\ncnumpy\ndtype\nc__builtin__\nobject\nN\x87R.")
    with pytest.raises(UnsafePickleError, match="_reconstructor refused"):
        load_flame_arrays(path)


def test_missing_key_and_bad_shape_name_file_and_key(tmp_path):
    reference = _flame_reference(seed=2)
    missing = dict(reference)
    del missing["posedirs"]
    path = tmp_path / "missing.npz"
    np.savez(path, **missing)
    with pytest.raises(ValueError, match=r"missing\.npz.*posedirs"):
        load_flame_arrays(path)

    bad = dict(reference, weights=reference["weights"][:, :3])
    path = tmp_path / "bad.npz"
    np.savez(path, **bad)
    with pytest.raises(ValueError, match=r"bad\.npz: key 'weights' has shape \[7, 3\]"):
        load_flame_arrays(path)

    nan = dict(reference, v_template=np.full((NUM_VERTICES, 3), np.nan))
    path = tmp_path / "nan.npz"
    np.savez(path, **nan)
    with pytest.raises(ValueError, match=r"nan\.npz: key 'v_template' contains NaN"):
        load_flame_arrays(path)

    with pytest.raises(ValueError, match="num_expression=101 exceeds the 100"):
        load_flame_arrays(_save(tmp_path, reference), num_expression=101)
    with pytest.raises(FileNotFoundError, match="nowhere.pkl"):
        load_flame_arrays(tmp_path / "nowhere.pkl")


def _save(tmp_path, reference):
    path = tmp_path / "ok.npz"
    np.savez(path, **reference)
    return path


def test_corrupt_files_raise_value_error_naming_file(tmp_path):
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps({"f": np.zeros(3)}, protocol=2)[:20])
    with pytest.raises(ValueError, match="truncated.pkl"):
        load_flame_arrays(truncated)
    not_dict = tmp_path / "list.pkl"
    not_dict.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="list.pkl: expected a dict"):
        load_flame_arrays(not_dict)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="garbage.npz"):
        load_flame_arrays(garbage)


def test_load_landmark_embedding(tmp_path):
    rng = np.random.default_rng(3)
    bary = rng.random((105, 3))
    bary /= bary.sum(axis=1, keepdims=True)
    face_idx = rng.integers(0, 9976, 105)
    mp_index = rng.choice(468, 105, replace=False)
    path = tmp_path / "mediapipe_landmark_embedding.npz"
    np.savez(path, lmk_face_idx=face_idx, lmk_b_coords=bary, landmark_indices=mp_index)
    embedding = load_landmark_embedding(path)
    np.testing.assert_array_equal(embedding["lmk_face_idx"], face_idx)
    np.testing.assert_allclose(embedding["lmk_b_coords"], bary, rtol=1e-6)
    np.testing.assert_array_equal(embedding["landmark_indices"], mp_index)
    assert embedding["lmk_face_idx"].dtype == np.int32
    assert embedding["lmk_b_coords"].dtype == np.float32

    bad = tmp_path / "bad.npz"
    np.savez(bad, lmk_face_idx=face_idx, lmk_b_coords=bary[:, :2], landmark_indices=mp_index)
    with pytest.raises(ValueError, match=r"bad\.npz: key 'lmk_b_coords'"):
        load_landmark_embedding(bad)
    objects = tmp_path / "objects.npz"
    np.savez(objects, lmk_face_idx=np.array([None], dtype=object), lmk_b_coords=bary,
             landmark_indices=mp_index)
    with pytest.raises(ValueError, match="objects.npz"):
        load_landmark_embedding(objects)


class csr_matrix:  # noqa: N801 (mirrors scipy's name)
    """CSR with a duplicated entry: scipy sums duplicates when densifying, so must the loader."""

    def __reduce_ex__(self, protocol):
        state = {"data": np.array([1.0, 2.0, 0.5, 4.0]), "indices": np.array([2, 0, 0, 1]),
                 "indptr": np.array([0, 1, 1, 4]), "_shape": (3, 3), "format": "csr"}
        return copyreg._reconstructor, (type(self), object, None), state


csr_matrix.__module__, csr_matrix.__qualname__ = "scipy.sparse._csr", "csr_matrix"


def test_csr_duplicates_and_chumpy_without_x(tmp_path, monkeypatch):
    reference = _flame_reference(seed=4)
    sparse = types.ModuleType("scipy.sparse._csr")
    sparse.csr_matrix = csr_matrix
    monkeypatch.setitem(sys.modules, "scipy.sparse._csr", sparse)
    _fake_modules(monkeypatch, "scipy.sparse._csc")
    model = dict(reference, J_regressor=csr_matrix())
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(model)
    model_no_x = dict(reference, v_template=Ch(reference["v_template"]))
    buffer_no_x = io.BytesIO()
    _Py2Pickler(buffer_no_x, protocol=2).dump(model_no_x)
    monkeypatch.undo()

    path = tmp_path / "csr.pkl"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"csr\.pkl: key 'J_regressor' has shape \[3, 3\]"):
        load_flame_arrays(path)
    from ggtalker_jax.head import flame_io

    with open(path, "rb") as handle:
        raw = flame_io._FlameUnpickler(handle, str(path)).load()
    dense = raw["J_regressor"].to_array("J_regressor")
    np.testing.assert_array_equal(dense, [[0, 0, 1.0], [0, 0, 0], [2.5, 4.0, 0]])

    # A Ch whose state lacks 'x' (renamed key in the raw bytes) is a ValueError naming file and key.
    no_x = buffer_no_x.getvalue()
    marker = b"\x8c\x01x" if b"\x8c\x01x" in no_x else b"X\x01\x00\x00\x00x"
    assert no_x.count(marker) == 1
    path = tmp_path / "no_x.pkl"
    path.write_bytes(no_x.replace(marker, marker[:-1] + b"y"))
    with pytest.raises(ValueError, match=r"no_x\.pkl: key 'v_template': chumpy Ch object has no array"):
        load_flame_arrays(path)

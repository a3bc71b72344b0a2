"""FLAME files: loaded without chumpy, hostile pickles refused before anything in them runs."""
import os
import pickle
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax import head
from ggtalker_jax.head.flame_io import UnsafePickleError, load_flame_arrays

V, F, J = 12, 8, 5


def _arrays(rng):
    kintree = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64)
    weights = rng.random((V, J)).astype(np.float32)
    return {"v_template": rng.normal(size=(V, 3)), "f": rng.integers(0, V, (F, 3)).astype(np.uint32),
            "shapedirs": rng.normal(size=(V, 3, 400)) * 1e-3, "posedirs": rng.normal(size=(V, 3, 36)) * 1e-3,
            "J_regressor": (rng.random((J, V)) * (rng.random((J, V)) > 0.5)), "kintree_table": kintree,
            "weights": weights / weights.sum(1, keepdims=True)}


def _write_flame_pickle(path, arrays, monkeypatch, numpy_module="numpy._core.multiarray"):
    """A pickle that names exactly what the official file names: chumpy.ch.Ch and a scipy csc_matrix."""
    ch_mod, sp_mod = types.ModuleType("chumpy.ch"), types.ModuleType("scipy.sparse.csc")

    class Ch:
        def __init__(self, x):
            self.x = x

        def __getstate__(self):
            return {"x": self.x, "_dirty_vars": set()}
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"

    class csc_matrix:
        def __init__(self, dense):
            cols = [np.flatnonzero(dense[:, j]) for j in range(dense.shape[1])]
            self.state = {"_shape": dense.shape, "indices": np.concatenate(cols).astype(np.int32),
                          "indptr": np.cumsum([0] + [len(c) for c in cols]).astype(np.int32),
                          "data": np.concatenate([dense[c, j] for j, c in enumerate(cols)]), "maxprint": 50}

        def __getstate__(self):
            return self.state
    csc_matrix.__module__, csc_matrix.__qualname__ = "scipy.sparse.csc", "csc_matrix"
    ch_mod.Ch, sp_mod.csc_matrix = Ch, csc_matrix
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch_mod)
    monkeypatch.setitem(sys.modules, "scipy.sparse.csc", sp_mod)
    obj = {k: (csc_matrix(v) if k == "J_regressor" else Ch(v) if k in ("v_template", "shapedirs", "posedirs", "weights")
               else v) for k, v in arrays.items()}
    obj["bs_style"] = "lbs"
    blob = pickle.dumps(obj, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", numpy_module.encode()).replace(b"numpy.core.multiarray", numpy_module.encode())
    path.write_bytes(blob)
    for name in ("chumpy", "chumpy.ch", "scipy.sparse.csc"):
        monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize("numpy_module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_flame_pickle_round_trip_without_chumpy(tmp_path, monkeypatch, numpy_module):
    arrays = _arrays(np.random.default_rng(0))
    path = tmp_path / "generic_model.pkl"
    _write_flame_pickle(path, arrays, monkeypatch, numpy_module)
    assert "chumpy" not in sys.modules
    out = load_flame_arrays(str(path), num_shape=100, num_expression=100)
    assert "chumpy" not in sys.modules
    np.testing.assert_allclose(out["v_template"], arrays["v_template"], rtol=1e-6)
    np.testing.assert_allclose(out["J_regressor"], arrays["J_regressor"], rtol=1e-6)
    np.testing.assert_allclose(out["shapedirs"], arrays["shapedirs"][:, :, :100], rtol=1e-5)
    np.testing.assert_allclose(out["exprdirs"], arrays["shapedirs"][:, :, 300:400], rtol=1e-5)
    assert out["posedirs"].shape == (36, V * 3)
    np.testing.assert_array_equal(out["parents"], [-1, 0, 1, 1, 1])


def test_flame_npz_loads_as_a_head_model(tmp_path):
    arrays = _arrays(np.random.default_rng(1))
    np.savez(tmp_path / "flame.npz", **arrays)
    model = head.load(str(tmp_path / "flame.npz"), num_shape=10)
    assert model.v_template.shape == (V, 3) and model.shapedirs.shape == (V, 3, 10) and model.exprdirs.shape == (V, 3, 50)
    out = head.forward(model, expression=jnp.zeros(50), jaw_pose=jnp.zeros(3))
    np.testing.assert_allclose(out.vertices, arrays["v_template"], atol=1e-5)
    moved = head.forward(model, expression=jnp.zeros(50).at[0].set(1.0))
    np.testing.assert_allclose(moved.vertices, arrays["v_template"] + arrays["shapedirs"][:, :, 300], atol=1e-5)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, eval])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, func):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil(func, arg)}, protocol=2))
    with pytest.raises(UnsafePickleError) as e:
        head.load(str(path))
    assert str(path) in str(e.value) and isinstance(e.value, ValueError)
    assert not marker.exists()


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(ValueError, match="not a readable FLAME pickle"):
        load_flame_arrays(str(path))

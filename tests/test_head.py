"""Head-model interface, the built-in open head model, LBS and UV-bound Gaussians."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax import head
from ggtalker_jax.head import uv


@pytest.fixture(scope="module")
def model():
    return head.load("open")


def _lmk(model, out, mediapipe_index):
    pos = {int(k): i for i, k in enumerate(np.asarray(model.lmk_mediapipe_index))}
    return np.asarray(out.landmarks)[..., pos[mediapipe_index], :]


def test_public_contract(model):
    assert model.v_template.shape[1] == 3 and model.faces.shape[1] == 3
    assert np.issubdtype(np.asarray(model.faces).dtype, np.integer)
    assert len(head.OPEN_EXPRESSION_NAMES) == 50
    out = head.forward(model)
    assert out.vertices.shape == model.v_template.shape
    assert out.landmarks.shape == (model.num_landmarks, 3)


def test_zero_parameters_give_the_template(model):
    out = head.forward(model, expression=jnp.zeros(50), jaw_pose=jnp.zeros(3), global_rot=jnp.zeros(3))
    np.testing.assert_allclose(out.vertices, model.v_template, atol=1e-6)


def test_jaw_opening_opens_the_mouth(model):
    closed = head.forward(model)
    opened = head.forward(model, jaw_pose=jnp.array([0.25, 0.0, 0.0]))
    gap = lambda o: _lmk(model, o, 13)[1] - _lmk(model, o, 14)[1]       # upper inner lip above lower
    assert gap(opened) > gap(closed) + 0.008
    # The upper lip and the forehead stay put.
    np.testing.assert_allclose(_lmk(model, opened, 0), _lmk(model, closed, 0), atol=5e-4)
    np.testing.assert_allclose(_lmk(model, opened, 10), _lmk(model, closed, 10), atol=1e-6)


def test_global_rotation_rotates_every_vertex_about_the_root(model):
    r = jnp.array([0.1, -0.4, 0.2])
    out = head.forward(model, global_rot=r, translation=jnp.array([0.01, 0.02, -0.5]))
    R = np.asarray(head.rodrigues(r))
    j0 = np.asarray(head.forward(model).joints)[0]
    want = (np.asarray(model.v_template) - j0) @ R.T + j0 + np.array([0.01, 0.02, -0.5])
    np.testing.assert_allclose(out.vertices, want, atol=1e-5)
    # Rodrigues is a rotation.
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)


@pytest.mark.parametrize("name,point,axis,sign", [
    ("blink_left", 386, 1, -1),            # upper lid goes down
    ("mouth_corner_up_left", 291, 1, 1),   # corner goes up
    ("lips_pucker", 0, 2, 1),              # lips come forward
    ("brow_up_right", 105, 1, 1),
])
def test_expression_components_move_their_region(model, name, point, axis, sign):
    k = head.OPEN_EXPRESSION_NAMES.index(name)
    rest = head.forward(model)
    moved = head.forward(model, expression=jnp.zeros(50).at[k].set(1.0))
    delta = _lmk(model, moved, point)[axis] - _lmk(model, rest, point)[axis]
    assert sign * delta > 0.002
    # Far away (the chin for eye/brow motion, the forehead for the mouth) nothing moves.
    far = 152 if name.startswith(("blink", "brow")) else 10
    np.testing.assert_allclose(_lmk(model, moved, far), _lmk(model, rest, far), atol=2e-4)


def test_blink_closes_the_eye(model):
    k = head.OPEN_EXPRESSION_NAMES.index("blink_left")
    lid = lambda o: _lmk(model, o, 386)[1] - _lmk(model, o, 374)[1]
    assert lid(head.forward(model, expression=jnp.zeros(50).at[k].set(1.0))) < 0.3 * lid(head.forward(model))


def test_batches_broadcast_and_gradients_are_finite(model):
    e = jnp.zeros((2, 3, 50))
    out = head.forward(model, expression=e, jaw_pose=jnp.zeros(3))
    assert out.vertices.shape == (2, 3, model.num_vertices, 3)
    f = lambda e, j, r: jnp.sum(head.forward(model, expression=e, jaw_pose=j, global_rot=r).landmarks ** 2)
    grads = jax.grad(f, argnums=(0, 1, 2))(jnp.zeros(50), jnp.zeros(3), jnp.zeros(3))
    for g in grads:
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    with pytest.raises(ValueError, match="expression"):
        head.forward(model, expression=jnp.zeros(7))


def test_split_and_join_expression53():
    e53 = jnp.arange(2 * 53.0).reshape(2, 53)
    e, jaw = head.split_expression53(e53)
    assert e.shape == (2, 50) and jaw.shape == (2, 3)
    np.testing.assert_array_equal(head.join_expression53(e, jaw), e53)
    with pytest.raises(ValueError):
        head.split_expression53(jnp.zeros(52))


def test_uv_binding_covers_the_layout_once(model):
    b = uv.build_uv_binding(model, 64)
    assert b.num_gaussians == b.mask.sum() > 0.9 * 64 * 64
    flat = b.texel_index[:, 0] * 64 + b.texel_index[:, 1]
    assert len(np.unique(flat)) == len(flat)                    # one triangle per texel
    np.testing.assert_allclose(b.bary.sum(-1), 1.0, atol=1e-5)
    assert np.all(b.bary >= 0)


def test_bound_gaussians_sit_on_the_surface_and_follow_it(model):
    b = uv.build_uv_binding(model, 32)
    m = b.num_gaussians
    ident = jnp.tile(jnp.array([1.0, 0, 0, 0]), (m, 1))
    rest = head.forward(model)
    means, quats, scales = uv.bind_gaussians(b, rest.vertices, model.faces, jnp.zeros((m, 3)), ident, jnp.ones((m, 3)))
    tri = np.asarray(rest.vertices)[np.asarray(model.faces)[b.face]]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    dist = np.abs(np.sum((np.asarray(means) - tri[:, 0]) * n, -1))
    assert dist.max() < 1e-6                                     # on the triangle's plane
    np.testing.assert_allclose(np.linalg.norm(quats, axis=-1), 1.0, atol=1e-5)
    assert np.all(np.asarray(scales) > 0)
    # A unit offset along the local normal moves a Gaussian off the surface by one texel unit.
    off = jnp.zeros((m, 3)).at[:, 2].set(1.0)
    means_off, _, unit_scales = uv.bind_gaussians(b, rest.vertices, model.faces, off, ident, jnp.ones((m, 3)))
    np.testing.assert_allclose(np.sum((np.asarray(means_off) - np.asarray(means)) * n, -1),
                               np.asarray(unit_scales)[:, 0], rtol=1e-4)
    # Opening the jaw moves the Gaussians on the chin down, not those on the forehead.
    opened = head.forward(model, jaw_pose=jnp.array([0.3, 0.0, 0.0]))
    means_open, _, _ = uv.bind_gaussians(b, opened.vertices, model.faces, jnp.zeros((m, 3)), ident, jnp.ones((m, 3)))
    dy = np.asarray(means_open - means)[:, 1]
    canon = np.asarray(means)
    chin = (canon[:, 1] < -0.07) & (canon[:, 2] > 0.03)
    forehead = canon[:, 1] > 0.06
    assert chin.any() and dy[chin].mean() < -0.005
    np.testing.assert_allclose(dy[forehead], 0.0, atol=1e-6)


def test_rotmat_to_quat_round_trip():
    from ggtalker_jax.render.projection import quat_to_rotmat
    q = jax.random.normal(jax.random.PRNGKey(0), (64, 4))
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    q = q * jnp.where(q[:, :1] < 0, -1.0, 1.0)
    np.testing.assert_allclose(uv.rotmat_to_quat(quat_to_rotmat(q)), q, atol=1e-5)


def test_unknown_head_model_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="generic_model.pkl"):
        head.load("/nonexistent/flame.pkl")


def test_flame_npz_becomes_a_head_model_with_flame_semantics(tmp_path):
    rng = np.random.default_rng(1)
    v = 12
    arrays = {"v_template": rng.normal(size=(v, 3)), "f": rng.integers(0, v, (8, 3)).astype(np.uint32),
              "shapedirs": rng.normal(size=(v, 3, 400)) * 1e-3, "posedirs": rng.normal(size=(v, 3, 36)) * 1e-3,
              "J_regressor": rng.random((5, v)), "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
              "weights": np.full((v, 5), 0.2)}
    np.savez(tmp_path / "flame.npz", **arrays)
    model = head.load(str(tmp_path / "flame.npz"), num_shape=10)
    assert model.shapedirs.shape == (v, 3, 10) and model.exprdirs.shape == (v, 3, 50) and model.parents == (-1, 0, 1, 1, 1)
    moved = head.forward(model, expression=jnp.zeros(50).at[0].set(1.0))
    np.testing.assert_allclose(moved.vertices, arrays["v_template"] + arrays["shapedirs"][:, :, 300], atol=1e-5)


def test_open_head_embeds_every_mediapipe_point_on_its_face_mesh(model):
    from ggtalker_jax.head import open_head
    assert sorted(np.asarray(model.lmk_mediapipe_index).tolist()) == list(range(478))
    target = open_head.mediapipe_face_points()
    got = np.asarray(head.forward(model).landmarks)
    err = np.linalg.norm(got - target[np.asarray(model.lmk_mediapipe_index)], axis=-1)
    inner_lips = np.isin(np.asarray(model.lmk_mediapipe_index), open_head.LIPS_INNER_UPPER + open_head.LIPS_INNER_LOWER)
    assert np.median(err) < 2e-4 and err[~inner_lips].max() < 2e-3        # metres; inner lips meet on the lip line
    # The conformed surface keeps its orientation almost everywhere.
    proc = open_head.procedural_head_arrays()
    f = np.asarray(model.faces)
    n = lambda v: np.cross(v[f][:, 1] - v[f][:, 0], v[f][:, 2] - v[f][:, 0])
    n0, n1 = n(proc["v_template"]), n(np.asarray(model.v_template))
    flipped = np.sum(n0 * n1, -1) < 0
    assert np.linalg.norm(n0, axis=-1)[flipped].sum() < 0.005 * np.linalg.norm(n0, axis=-1).sum()
    # Eyes look along +z through the pupils.
    joints = np.asarray(head.forward(model).joints)
    pos = {int(k): i for i, k in enumerate(np.asarray(model.lmk_mediapipe_index))}
    for iris, j in ((473, 3), (468, 4)):
        d = got[pos[iris]] - joints[j]
        np.testing.assert_allclose(d / np.linalg.norm(d), [0, 0, 1], atol=1e-3)


def test_open_head_documents_its_components_and_uv_count(model):
    import re

    from ggtalker_jax.head import open_head
    assert set(open_head.EXPRESSION_DOCS) == set(head.OPEN_EXPRESSION_NAMES)
    assert len(open_head.SHAPE_NAMES) == model.num_shape
    claimed = int(re.search(r"R = 512, ([\d,]+) texels are bound", open_head.__doc__).group(1).replace(",", ""))
    assert uv.build_uv_binding(model, 512).num_gaussians == claimed


def test_face_points_refuse_a_changed_procedural_head(monkeypatch):
    from ggtalker_jax.head import open_head
    real = open_head.procedural_head_arrays()
    monkeypatch.setattr(open_head, "procedural_head_arrays", lambda: {**real, "v_template": real["v_template"] * 1.01})
    with pytest.raises(RuntimeError, match="build_open_face.py"):
        open_head.mediapipe_face_points()

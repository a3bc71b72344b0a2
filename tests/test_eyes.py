"""Eyes for every head model: blink directions (named / derived from the lids), blink curves, gaze modes,
and tracking that recovers known gaze and blinks from landmarks rendered with them."""
import jax.numpy as jnp
import numpy as np
import pytest
from flame_shaped import write_flame_shaped

from ggtalker_jax import head
from ggtalker_jax.data.track import _split_neck, project, track_landmarks
from ggtalker_jax.head import eyes
from ggtalker_jax.head import model as model_lib


@pytest.fixture(scope="module")
def open_model():
    return head.load("open")


@pytest.fixture(scope="module")
def flame_model(tmp_path_factory):
    model_path, emb_path, _ = write_flame_shaped(tmp_path_factory.mktemp("flame"))
    return head.load(str(model_path), landmark_embedding=str(emb_path))


def _lmk(model, out, mp_index):
    pos = {int(k): i for i, k in enumerate(np.asarray(model.lmk_mediapipe_index))}
    return np.asarray(out.landmarks)[..., pos[mp_index], :]


def _lid_gap(model, out, upper, lower):
    return _lmk(model, out, upper)[..., 1] - _lmk(model, out, lower)[..., 1]


def test_named_blink_basis_is_the_open_heads_blink_components(open_model):
    b = eyes.blink_basis(open_model)
    assert b.kind == "named"
    names = head.OPEN_EXPRESSION_NAMES
    assert b.directions[0, names.index("blink_left")] == 1 and b.directions[1, names.index("blink_right")] == 1
    assert np.count_nonzero(b.directions) == 2
    np.testing.assert_allclose(b.readout @ b.directions.T, np.eye(2), atol=1e-6)


def test_derived_blink_closes_one_eye_and_leaves_the_rest(flame_model):
    b = eyes.blink_basis(flame_model)
    assert b.kind == "derived" and np.all(b.closure > 0.65)
    np.testing.assert_allclose(b.readout @ b.directions.T, np.eye(2), atol=1e-4)
    rest = head.forward(flame_model)
    left = head.forward(flame_model, expression=jnp.asarray(b.directions[0, :50]))
    # The left eye (subject's left: 386 over 374) closes; the right one (159 over 145) stays open.
    assert _lid_gap(flame_model, left, 386, 374) < 0.3 * _lid_gap(flame_model, rest, 386, 374)
    np.testing.assert_allclose(_lid_gap(flame_model, left, 159, 145), _lid_gap(flame_model, rest, 159, 145), rtol=0.1)
    for far in (13, 14, 61, 291, 152):                                        # mouth and chin stay put
        np.testing.assert_allclose(_lmk(flame_model, left, far), _lmk(flame_model, rest, far), atol=5e-4)


def test_set_blinks_replaces_the_blink_amount_only(open_model, flame_model):
    rng = np.random.default_rng(0)
    for model in (open_model, flame_model):
        b = eyes.blink_basis(model)
        e = rng.normal(0, 0.3, (6, 53)).astype(np.float32)
        want = rng.uniform(0, 1, (6, 2)).astype(np.float32)
        out = eyes.set_blinks(b, e, want)
        np.testing.assert_allclose(eyes.blink_amount(b, out), want, atol=1e-4)
        change = out - e                                                          # along the directions only
        coef = np.linalg.lstsq(b.directions.T, change.T, rcond=None)[0]
        np.testing.assert_allclose(coef.T @ b.directions, change, atol=1e-4)
        both = eyes.set_blinks(b, e, want[:, 0])
        np.testing.assert_allclose(eyes.blink_amount(b, both), np.stack([want[:, 0]] * 2, -1), atol=1e-4)
    assert np.array_equal(eyes.set_blinks(None, e, want), e)
    with pytest.raises(ValueError, match="amount"):
        eyes.set_blinks(eyes.blink_basis(open_model), e, np.zeros((5, 2)))


def test_blink_curve_rate_and_shape():
    fps, minutes, rate = 25.0, 4.0, 15.0
    n = int(minutes * 60 * fps)
    c = eyes.blink_curve(n, fps, rate, seed=3)
    assert c.shape == (n,) and c.min() >= 0 and c.max() <= 1
    starts = np.flatnonzero((c[1:] > 0) & (c[:-1] == 0))
    # Poisson count around rate * minutes = 60 (+- 4 sigma), blinks never overlap.
    assert abs(len(starts) - rate * minutes) < 4 * np.sqrt(rate * minutes)
    assert np.diff(starts).min() >= 0.3 * fps
    width = np.diff(np.flatnonzero(np.diff((c > 0).astype(int)) != 0)[:2])[0]
    assert abs(width - 0.3 * fps) <= 2                                          # one 0.3 s close-open
    np.testing.assert_array_equal(c, eyes.blink_curve(n, fps, rate, seed=3))
    assert not np.array_equal(c, eyes.blink_curve(n, fps, rate, seed=4))
    assert not eyes.blink_curve(100, fps, 0.0).any()
    with pytest.raises(ValueError, match="blink_rate"):
        eyes.blink_curve(100, fps, -1.0)


@pytest.mark.parametrize("name", ["open_model", "flame_model"])
def test_camera_gaze_points_both_eyes_at_the_camera(name, request):
    model = request.getfixturevalue(name)
    rng = np.random.default_rng(1)
    t = 5
    rot = rng.normal(0, 0.2, (t, 3)).astype(np.float32)
    neck = rng.normal(0, 0.1, (t, 3)).astype(np.float32)
    trans = np.array([[0.02, -0.01, -0.8]] * t, np.float32) + rng.normal(0, 0.02, (t, 3)).astype(np.float32)
    eye_pose = eyes.gaze_eye_pose("camera", model, t, global_rot=rot, translation=trans, neck_pose=neck)
    out = head.forward(model, eye_pose=eye_pose, global_rot=rot, translation=trans, neck_pose=neck)
    joints = np.asarray(out.joints)
    R = lambda r: np.asarray(head.rodrigues(jnp.asarray(r)))
    cos_angle = lambda a, b: np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    for centre, j, col in ((473, 3, 0), (468, 4, 3)):
        to_camera = -joints[:, j]
        world = R(rot) @ R(neck) @ R(eye_pose[:, col:col + 3])               # eye's world rotation
        assert cos_angle(world[:, :, 2], to_camera).min() > np.cos(np.deg2rad(0.1))   # rest gaze +z -> camera
        if name == "open_model":                     # its iris centre sits straight in front (+z) of the joint
            assert cos_angle(_lmk(model, out, centre) - joints[:, j], to_camera).min() > np.cos(np.deg2rad(1.0))
    np.testing.assert_allclose(eye_pose[:, [2, 5]], 0.0, atol=1e-7)            # no roll


def test_gaze_modes_and_files(open_model, tmp_path):
    video = np.random.default_rng(2).normal(0, 0.1, (7, 6)).astype(np.float32)
    np.testing.assert_array_equal(eyes.gaze_eye_pose("video", open_model, 7, video_eye_pose=video), video)
    np.savez(tmp_path / "g.npz", eye_pose=np.arange(15.0).reshape(5, 3))
    g = eyes.gaze_eye_pose(str(tmp_path / "g.npz"), open_model, 12)
    assert g.shape == (12, 6)
    np.testing.assert_array_equal(g[:, :3], g[:, 3:])                          # [T, 3]: both eyes
    np.testing.assert_array_equal(g[:, 0], [0, 3, 6, 9, 12, 9, 6, 3, 0, 3, 6, 9])   # forward then back
    np.save(tmp_path / "bad.npy", np.zeros((4, 5)))
    with pytest.raises(ValueError, match="--gaze .*bad.npy"):
        eyes.gaze_eye_pose(str(tmp_path / "bad.npy"), open_model, 3)
    with pytest.raises(FileNotFoundError, match="video, camera"):
        eyes.gaze_eye_pose(str(tmp_path / "missing.npz"), open_model, 3)


def test_iris_landmarks_are_added_on_the_eyeballs(flame_model, open_model):
    idx = list(np.asarray(flame_model.lmk_mediapipe_index))
    assert 468 in idx and 473 in idx
    pos_f = np.asarray(head.forward(flame_model).landmarks)
    pos_o = np.asarray(head.forward(open_model).landmarks)
    oi = list(np.asarray(open_model.lmk_mediapipe_index))
    for k in (468, 473):
        assert np.linalg.norm(pos_f[idx.index(k)] - pos_o[oi.index(k)]) < 0.003    # at the pupil
    # Rotating an eye moves its iris landmark and not the other one.
    turned = head.forward(flame_model, eye_pose=jnp.array([0, 0.3, 0, 0, 0, 0.0]))
    radius = np.linalg.norm(pos_f[idx.index(473)] - np.asarray(head.forward(flame_model).joints)[3])
    moved = np.linalg.norm(np.asarray(turned.landmarks)[idx.index(473)] - pos_f[idx.index(473)])
    np.testing.assert_allclose(moved, 2 * radius * np.sin(0.15), rtol=0.05)    # chord of a 0.3 rad turn
    np.testing.assert_allclose(np.asarray(turned.landmarks)[idx.index(468)], pos_f[idx.index(468)], atol=1e-7)
    assert eyes.with_iris_landmarks(flame_model) is flame_model                 # already there: unchanged


def _render_landmarks(model, num=32, size=256):
    """MediaPipe-format landmarks [T, 478, 3] of the model posed with known gaze, blinks, head motion."""
    t = np.arange(num)
    rot = np.stack([0.05 * np.sin(t / 7), 0.15 * np.sin(t / 9), 0.02 * np.sin(t / 5)], -1).astype(np.float32)
    trans = np.tile(np.array([0.0, 0.0, -0.6], np.float32), (num, 1))
    gaze = np.stack([0.15 * np.sin(t / 4 + 1), 0.25 * np.sin(t / 6), 0 * t], -1).astype(np.float32)
    blink = np.zeros(num, np.float32)
    blink[8:13] = [0.4, 0.9, 1.0, 0.9, 0.4]
    blink[22:25] = [0.6, 1.0, 0.6]
    e53 = np.zeros((num, 53), np.float32)
    e53[:, 50] = 0.1 * np.clip(np.sin(t / 3), 0, None)
    e53 = eyes.set_blinks(eyes.blink_basis(model), e53, blink)
    out = head.forward(model, expression=e53[:, :50], jaw_pose=e53[:, 50:], eye_pose=np.concatenate([gaze, gaze], -1),
                       global_rot=rot, translation=trans)
    pix = np.asarray(project(out.landmarks, 0.5 * size / np.tan(np.deg2rad(10)), size))
    lm = np.full((num, 478, 3), np.nan, np.float32)
    lm[:, np.asarray(model.lmk_mediapipe_index), :2] = pix
    lm[..., 2] = 0.0
    return lm, gaze, blink


@pytest.mark.parametrize("name", ["open_model", "flame_model"])
def test_tracking_recovers_known_gaze_and_blinks(name, request):
    model = request.getfixturevalue(name)
    lm, gaze, blink = _render_landmarks(model)
    r = track_landmarks(model, lm, np.ones(len(lm), bool), 256)
    eye = r["eye_pose"]
    seen = blink < 0.3                                      # gaze is not observable behind a closed lid
    for axis, min_corr in ((0, 0.85), (1, 0.97)):                             # pitch, yaw of both eyes
        for col in (axis, axis + 3):
            assert np.corrcoef(eye[seen, col], gaze[seen, axis])[0, 1] > min_corr
            assert np.abs(eye[seen, col] - gaze[seen, axis]).mean() < 0.05     # radians
    assert np.abs(eye[:, [2, 5]]).max() < 0.02                                 # no roll
    for side in (0, 1):
        b = r["blink"][:, side]
        assert np.corrcoef(b, blink)[0, 1] > 0.9
        assert b[blink == 1].min() > 0.8 and np.abs(b[blink == 0]).max() < 0.2
    assert np.median(r["landmark_error_px"]) < 1.5


def test_neck_split_moves_fast_rotation_into_the_neck_and_keeps_the_face(open_model):
    rng = np.random.default_rng(0)
    t = 50
    slow = np.stack([0.1 * np.sin(np.arange(t) / 25)] * 3, -1)
    fast = 0.05 * rng.normal(size=(t, 3))
    params = {"rot": jnp.asarray(slow + fast, jnp.float32), "neck": jnp.zeros((t, 3)),
              "trans": jnp.asarray(np.tile([0.0, 0.0, -0.7], (t, 1)), jnp.float32),
              "shape": jnp.zeros(open_model.num_shape), "expr_total": jnp.zeros((t, 50)), "jaw_total": jnp.zeros((t, 3))}
    split = _split_neck(open_model, params, fps=25.0, seconds=1.0)
    kw = lambda p: dict(global_rot=p["rot"], neck_pose=p["neck"], translation=p["trans"])
    before, after = head.forward(open_model, **kw(params)), head.forward(open_model, **kw(split))
    corners = np.asarray(open_model.faces)[np.asarray(open_model.lmk_faces)]
    on_neck_chain = np.asarray(open_model.lbs_weights)[corners, 0].max(-1) == 0   # not skinned to the root
    assert on_neck_chain.mean() > 0.8
    np.testing.assert_allclose(np.asarray(after.landmarks)[:, on_neck_chain], np.asarray(before.landmarks)[:, on_neck_chain],
                               atol=2e-6)
    assert np.abs(np.asarray(after.landmarks) - np.asarray(before.landmarks)).max() < 1e-3   # lower face: the body
    rough = lambda x: np.abs(np.diff(np.asarray(x), axis=0)).mean()
    assert rough(split["rot"]) < 0.2 * rough(params["rot"]) and np.abs(np.asarray(split["neck"])).mean() > 0.02
    assert model_lib.JOINT_NAMES[1] == "neck"

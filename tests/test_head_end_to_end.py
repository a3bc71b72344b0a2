"""Head models through every command, with a FLAME-shaped model (no restricted file): prepare's tracking
records it, adapt takes it from the dataset into the workdir, render takes it from there; missing or other
files, priors of another head model and bad eye flags are refused with their exit codes; and a render's
eye motion (a gaze file, a blink rate) is tracked back from the head model's projected landmarks."""
import shutil
import subprocess
import types

import imageio_ffmpeg
import numpy as np
import pytest
from flame_shaped import write_flame_shaped

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax import cli, head, infer
from ggtalker_jax import priors as priors_lib
from ggtalker_jax import workdir as workdir_lib
from ggtalker_jax.audio import io as audio_io
from ggtalker_jax.data import default_subject
from ggtalker_jax.data.dataset import SubjectView
from ggtalker_jax.data.track import TrackConfig, track_dataset, track_landmarks
from ggtalker_jax.errors import DatasetError, MediaError, PriorsError, UsageError, WorkdirError
from ggtalker_jax.head import eyes
from ggtalker_jax.render.camera import head_space_to_pixels
from ggtalker_jax.train import adapt

FAST_TRACK = TrackConfig(rigid_steps=60, full_steps=80, refine_steps=20)
ONE_STEP = (adapt.Stage("1_uv_map", ("uv_delta",), minutes=60.0, steps=1),)   # binds + renders the FLAME mesh
CFG = avatar_lib.AvatarConfig.small(image_size=16)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny subject tracked with the FLAME-shaped model (what `ggtalker prepare --head --landmark_embedding`
    runs on MediaPipe's landmarks) and adapted for one step from fresh networks."""
    root = tmp_path_factory.mktemp("head_e2e")
    (root / "flame").mkdir()
    model_path, emb_path, _ = write_flame_shaped(root / "flame", posedirs_scale=1e-4, with_uv=True)
    data = root / "data"
    default_subject.make_default_subject(str(data), seconds=1.0, size=32, seed=2, uv_resolution=16,
                                         write_video=False)
    track_dataset(str(data), head=str(model_path), landmark_embedding=str(emb_path), config=FAST_TRACK)
    summary = adapt.adapt(str(data), str(root / "workdir"), None, ONE_STEP, adapt.AdaptConfig(batch_size=1),
                          avatar_config=CFG, progress=False)
    wav, sr = default_subject.default_driving_audio(seconds=1.0, seed=3)
    audio_io.write_wav(str(root / "speech.wav"), wav, sr)
    return types.SimpleNamespace(root=root, model=model_path, embedding=emb_path, data=data,
                                 workdir=root / "workdir", audio=root / "speech.wav", summary=summary)


def _cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_adapt_records_the_datasets_flame_and_render_uses_it(run, tmp_path, capsys):
    record = workdir_lib.read_record(str(run.workdir))
    assert record["head_model"] == head.read_record(str(run.data))           # the dataset's, in avatar.json
    assert record["head_model"]["kind"] == "flame"
    assert [f["role"] for f in record["head_model"]["files"]] == ["model", "uv", "landmark_embedding"]
    assert record["avatar"]["prior"]["head_model"] == str(run.model) and record["priors"] == "fresh"
    adapted = workdir_lib.load_adapted(str(run.workdir))
    flame = head.load(str(run.model), landmark_embedding=str(run.embedding))
    assert adapted.static.head_model.name == "flame"
    assert adapted.static.head_model.num_landmarks == flame.num_landmarks        # the embedding came along
    np.testing.assert_array_equal(adapted.static.head_model.faces, flame.faces)
    gaze = tmp_path / "gaze.npz"
    np.savez(gaze, eye_pose=np.stack([0.2 * np.sin(np.arange(10) / 3), 0.3 * np.cos(np.arange(10) / 4),
                                      np.zeros(10)], -1))
    out = tmp_path / "talk.mp4"
    code, err = _cli(capsys, "render", "--workdir", run.workdir, "--audio", run.audio, "--out", out,
                     "--gaze", gaze, "--blink_rate", "30", "--noprogress")
    assert code == 0, err
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(out)], capture_output=True, text=True).stderr
    assert "Video: h264" in info and "Duration: 00:00:01.00" in info


def test_moved_or_other_head_model_files_are_named(run, tmp_path, capsys):
    moved = run.root / "flame_moved"
    shutil.move(run.root / "flame", moved)
    try:
        code, err = _cli(capsys, "render", "--workdir", run.workdir, "--audio", run.audio, "--out",
                         tmp_path / "a.mp4", "--noprogress")
        assert code == WorkdirError.exit_code and "generic_model.pkl" in err and "--head" in err
        code, err = _cli(capsys, "adapt", "--data", run.data, "--workdir", tmp_path / "w", "--noprogress")
        assert code == DatasetError.exit_code and "generic_model.pkl" in err and "--landmark_embedding" in err
        again = workdir_lib.load_adapted(str(run.workdir), head=str(moved / "generic_model.pkl"),
                                         landmark_embedding=str(moved / "mediapipe_landmark_embedding.npz"))
        assert again.static.head_model.name == "flame"                       # same content at new paths
        with np.load(moved / "mediapipe_landmark_embedding.npz") as z:
            np.savez(tmp_path / "other.npz", **{k: z[k][:-1] for k in z.files})
        code, err = _cli(capsys, "render", "--workdir", run.workdir, "--audio", run.audio, "--out",
                         tmp_path / "b.mp4", "--head", moved / "generic_model.pkl", "--landmark_embedding",
                         tmp_path / "other.npz", "--noprogress")
        assert code == WorkdirError.exit_code and "other.npz" in err and "different file" in err
    finally:
        shutil.move(moved, run.root / "flame")
    code, err = _cli(capsys, "render", "--workdir", run.workdir, "--audio", run.audio, "--out", tmp_path / "c.mp4",
                     "--head", "open", "--noprogress")
    assert code == WorkdirError.exit_code and "'flame'" in err and "'open'" in err
    code, err = _cli(capsys, "eval", "--workdir", run.workdir, "--out", tmp_path / "r", "--head",
                     tmp_path / "none.pkl")
    assert code == UsageError.exit_code and "none.pkl" in err


def test_priors_of_another_head_model_are_refused(run, tmp_path, capsys):
    code, err = _cli(capsys, "adapt", "--data", run.data, "--workdir", tmp_path / "w", "--priors",
                     priors_lib.BUNDLED, "--noprogress")
    assert code == PriorsError.exit_code and "trained on head model 'open'" in err and str(run.model) in err
    assert not (tmp_path / "w" / "avatar.json").exists()
    flame_prior = avatar_lib.PriorConfig(head_model=str(run.model))
    assert priors_lib.fits_head_model(flame_prior, head.read_record(str(run.data)))
    copy = tmp_path / "copy.pkl"
    shutil.copy(run.model, copy)                                             # same content elsewhere: fits
    assert priors_lib.fits_head_model(avatar_lib.PriorConfig(head_model=str(copy)), head.read_record(str(run.data)))
    assert not priors_lib.fits_head_model(flame_prior, {"kind": "open"})


@pytest.mark.parametrize("content,code,needle", [
    (None, UsageError.exit_code, "no such file"),
    ({"eye_pose": np.zeros((4, 5))}, MediaError.exit_code, "shape"),
    ({"gaze": np.zeros((4, 6))}, MediaError.exit_code, "no array 'eye_pose'"),
    ({"eye_pose": np.full((4, 6), np.nan)}, MediaError.exit_code, "NaN"),
    ({"eye_pose": np.full((4, 3), 20.0)}, MediaError.exit_code, "radians, not degrees"),
])
def test_bad_gaze_files_are_named_before_any_work(tmp_path, capsys, content, code, needle):
    wav = tmp_path / "s.wav"
    audio_io.write_wav(str(wav), np.zeros(1600, np.float32), 16000)
    path = tmp_path / "gaze.npz"
    if content is not None:
        np.savez(path, **content)
    got, err = _cli(capsys, "render", "--workdir", tmp_path / "no_workdir", "--audio", wav, "--out",
                    tmp_path / "o.mp4", "--gaze", path)
    assert got == code and str(path) in err and needle in err


def _open_adapted(tmp_path):
    """An open-head subject as `infer.eye_motion` sees an adapted one (its head model, subject, shape)."""
    data = tmp_path / "open"
    default_subject.make_default_subject(str(data), seconds=1.0, size=32, seed=5, uv_resolution=16,
                                         write_video=False)
    subject = SubjectView(str(data), 16)
    static = avatar_lib.AvatarStatic.build(CFG)
    return workdir_lib.Adapted(static, {"head": {"shape": subject.tracking["shape"]}}, subject, {})


@pytest.mark.parametrize("kind", ["open", "flame"])
def test_render_eye_motion_is_tracked_back_from_the_model_landmarks(kind, run, tmp_path):
    adapted = workdir_lib.load_adapted(str(run.workdir)) if kind == "flame" else _open_adapted(tmp_path)
    model, subject = adapted.static.head_model, adapted.subject
    num, size = 50, 256
    t = np.arange(20)
    gaze = np.stack([0.12 * np.sin(t / 3), 0.25 * np.sin(t / 5 + 1), np.zeros(20)], -1)   # pitch, yaw [T, 3]
    np.savez(tmp_path / "gaze.npz", eye_pose=gaze)
    opts = infer.RenderOptions(gaze=str(tmp_path / "gaze.npz"), blink_rate=60.0, seed=2)
    poses, src = infer.driving_poses(subject, num, opts)
    expr, poses = infer.eye_motion(adapted, subject.expression53[src], poses, src, opts)
    want_gaze = infer.pingpong_indices(num, 0, len(gaze))
    np.testing.assert_allclose(poses["eye_pose"], np.concatenate([gaze, gaze], -1)[want_gaze], atol=1e-6)
    blink = eyes.blink_curve(num, subject.fps, 60.0, seed=2)
    assert blink.max() > 0.95 and (blink == 0).sum() > 20                   # this seed blinks, and not always
    # The render's head model, posed as the renderer poses it, projected at 256 px: what tracking sees.
    shape = np.asarray(adapted.params["head"]["shape"])
    out = head.forward(model, shape=shape, expression=expr[:, :50], jaw_pose=expr[:, 50:],
                       neck_pose=poses["neck_pose"], eye_pose=poses["eye_pose"], global_rot=poses["global_rot"],
                       translation=poses["translation"])
    K = subject.K.copy()
    K[:2] *= size / subject.image_size
    landmarks = np.zeros((num, 478, 3), np.float32)
    landmarks[:, np.asarray(model.lmk_mediapipe_index), :2] = np.asarray(head_space_to_pixels(out.landmarks, K)[0])
    r = track_landmarks(model, landmarks, np.ones(num, bool), size,
                        TrackConfig(rigid_steps=150, full_steps=250, refine_steps=0, neck_split_seconds=0.0))
    seen = blink < 0.3                                       # gaze is not observable behind a closed lid
    for axis in (0, 1):
        for col in (axis, axis + 3):
            assert np.corrcoef(r["eye_pose"][seen, col], poses["eye_pose"][seen, col])[0, 1] > 0.85
            assert np.abs(r["eye_pose"][seen, col] - poses["eye_pose"][seen, col]).mean() < 0.06   # radians
    for side in (0, 1):
        assert np.corrcoef(r["blink"][:, side], blink)[0, 1] > 0.9
        assert r["blink"][blink > 0.95, side].min() > 0.75 and np.abs(r["blink"][blink == 0, side]).max() < 0.25

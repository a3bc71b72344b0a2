"""Bad input through the `ggtalker` command line: each case ends with one line that names the file or flag,
the exit code of its kind (`ggtalker_jax.errors`), no traceback, and nothing of the user's deleted."""
import json
import os
import shutil
import stat

import numpy as np
import pytest

from ggtalker_jax import cli
from ggtalker_jax.audio import io as audio_io
from ggtalker_jax.data import dataset as ds
from ggtalker_jax.data import default_subject
from ggtalker_jax.errors import DatasetError, MediaError, PriorsError, RefusedError, UsageError, WorkdirError
from ggtalker_jax.files import DirectoryLock


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_errors") / "subject"
    default_subject.make_default_subject(str(out), seconds=1.2, size=32, seed=3, uv_resolution=16, write_video=False)
    return out


def _run(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_prepare_overwrite_never_deletes_an_unrelated_directory(tmp_path, capsys):
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0" * 100)
    code, err = _run(capsys, "prepare", "--video", str(video), "--out", str(docs), "--overwrite", "--noprogress")
    assert code == RefusedError.exit_code and "not a prepared dataset" in err and str(docs) in err
    assert (docs / "thesis.txt").read_text() == "years of work"
    code, err = _run(capsys, "prepare", "--video", str(video), "--out", str(docs), "--noprogress")
    assert code == RefusedError.exit_code and "already exists" in err


def test_prepare_rejects_bad_flags_before_any_work(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0" * 100)
    code, err = _run(capsys, "prepare", "--video", str(video), "--out", str(tmp_path / "o"), "--size", "4")
    assert code == UsageError.exit_code and "--size" in err
    code, err = _run(capsys, "prepare", "--video", str(video), "--out", str(tmp_path / "o"), "--fps", "nan")
    assert code == UsageError.exit_code and "--fps" in err
    target = tmp_path / "file_not_dir"
    target.write_text("x")
    code, err = _run(capsys, "prepare", "--video", str(video), "--out", str(target / "sub"))
    assert code == UsageError.exit_code and "file_not_dir" in err


def test_render_refuses_to_overwrite_inputs_and_existing_files(tmp_path, capsys, subject):
    wav = tmp_path / "speech.wav"
    audio_io.write_wav(str(wav), np.zeros(16000, np.float32), 16000)
    before = wav.read_bytes()
    code, err = _run(capsys, "render", "--workdir", str(tmp_path / "w"), "--audio", str(wav), "--out", str(wav))
    assert code == RefusedError.exit_code and "also an input" in err
    assert wav.read_bytes() == before
    existing = tmp_path / "talk.mp4"
    existing.write_bytes(b"keep me")
    code, err = _run(capsys, "render", "--workdir", str(tmp_path / "w"), "--audio", str(wav), "--out", str(existing))
    assert code == RefusedError.exit_code and "--overwrite" in err and existing.read_bytes() == b"keep me"


@pytest.mark.parametrize("flag,value", [("--blink_rate", "-5"), ("--blink_rate", "nan"), ("--blink_rate", "inf"),
                                        ("--blink_rate", "1e9"), ("--batch_size", "0"), ("--diffusion_steps", "0"),
                                        ("--guidance", "nan")])
def test_render_rejects_invalid_numbers(tmp_path, capsys, flag, value):
    wav = tmp_path / "speech.wav"
    audio_io.write_wav(str(wav), np.zeros(1600, np.float32), 16000)
    code, err = _run(capsys, "render", "--workdir", str(tmp_path), "--audio", str(wav), "--out",
                     str(tmp_path / "o.mp4"), flag, value)
    assert code == UsageError.exit_code and flag in err


@pytest.mark.parametrize("content,needle", [
    ("nan", "NaN"), ("empty", "missing array"), ("shape", "[T, 3]"), ("bytes", "not a readable .npz")])
def test_render_rejects_bad_pose_files(tmp_path, capsys, content, needle):
    pose = tmp_path / "pose.npz"
    if content == "nan":
        np.savez(pose, global_rot=np.full((4, 3), np.nan), translation=np.zeros((4, 3)))
    elif content == "empty":
        np.savez(pose)
    elif content == "shape":
        np.savez(pose, global_rot=np.zeros((4,)), translation=np.zeros((4, 3)))
    else:
        pose.write_bytes(os.urandom(300))
    wav = tmp_path / "speech.wav"
    audio_io.write_wav(str(wav), np.zeros(1600, np.float32), 16000)
    code, err = _run(capsys, "render", "--workdir", str(tmp_path), "--audio", str(wav), "--out",
                     str(tmp_path / "o.mp4"), "--pose", str(pose))
    assert code == MediaError.exit_code and "pose.npz" in err and needle in err


def test_adapt_rejects_bad_numbers(tmp_path, capsys, subject):
    for flag, value in (("--steps_per_stage", "0"), ("--learning_rate", "nan"),
                        ("--uv_map_learning_rate", "-1"), ("--uv_map_steps", "0"), ("--batch_size", "0"),
                        ("--uv_resolution", "4"), ("--image_size", "50")):
        code, err = _run(capsys, "adapt", "--data", str(subject), "--workdir", str(tmp_path / "w"), flag, value)
        assert code == UsageError.exit_code and flag in err


def test_adapt_refuses_another_identity_in_a_workdir_and_a_locked_one(tmp_path, capsys, subject):
    workdir = tmp_path / "w"
    workdir.mkdir()
    record = {"format": 2, "avatar": {"image_size": 64}, "data": "/elsewhere/other_person",
              "data_digest": "0" * 64, "stages_done": 5}
    (workdir / "avatar.json").write_text(json.dumps(record))
    code, err = _run(capsys, "adapt", "--data", str(subject), "--workdir", str(workdir), "--noprogress")
    assert code == RefusedError.exit_code and "other_person" in err and "--overwrite" in err
    assert json.loads((workdir / "avatar.json").read_text()) == record          # untouched
    with DirectoryLock(str(workdir), "a test"):
        code, err = _run(capsys, "adapt", "--data", str(subject), "--workdir", str(workdir), "--noprogress")
    assert code == RefusedError.exit_code and "in use by a test" in err


def test_broken_dataset_files_name_the_file(tmp_path, capsys, subject):
    broken = tmp_path / "broken"
    shutil.copytree(subject, broken)
    (broken / ds.TRACKING).write_bytes((broken / ds.TRACKING).read_bytes()[:200])   # truncated
    code, err = _run(capsys, "adapt", "--data", str(broken), "--workdir", str(tmp_path / "w"))
    assert code == DatasetError.exit_code and "tracking.npz" in err and "unreadable" in err
    with np.load(subject / ds.TRACKING) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["translation"][3, 1] = np.nan
    np.savez(broken / ds.TRACKING, **arrays)
    code, err = _run(capsys, "adapt", "--data", str(broken), "--workdir", str(tmp_path / "w"))
    assert code == DatasetError.exit_code and "translation contains NaN" in err
    (broken / ds.META).write_text("{ not json")
    code, err = _run(capsys, "adapt", "--data", str(broken), "--workdir", str(tmp_path / "w"))
    assert code == DatasetError.exit_code and "meta.json" in err
    shutil.copy(subject / ds.META, broken / ds.META)
    (broken / ds.AUDIO_FEATURES).unlink()
    code, err = _run(capsys, "adapt", "--data", str(broken), "--workdir", str(tmp_path / "w"))
    assert code == DatasetError.exit_code and "audio_features.npy" in err


def test_render_of_a_workdir_whose_dataset_moved_says_so(tmp_path, capsys):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "avatar.json").write_text(json.dumps({"format": 2, "avatar": {"image_size": 64},
                                                     "data": str(tmp_path / "gone"), "style_id": 1}))
    wav = tmp_path / "speech.wav"
    audio_io.write_wav(str(wav), 0.1 * np.sin(np.arange(16000) * 0.05).astype(np.float32), 16000)
    code, err = _run(capsys, "render", "--workdir", str(workdir), "--audio", str(wav), "--out", str(tmp_path / "o.mp4"))
    assert code == WorkdirError.exit_code and "no longer exists" in err and "--data" in err


@pytest.mark.parametrize("damage", ["truncated", "random", "json"])
def test_corrupt_priors_are_reported(tmp_path, damage):
    from ggtalker_jax import priors
    src = priors.BUNDLED
    bad = tmp_path / "priors"
    shutil.copytree(src, bad)
    if damage == "truncated":
        (bad / priors.WEIGHTS).write_bytes((bad / priors.WEIGHTS).read_bytes()[:1000])
    elif damage == "random":
        (bad / priors.WEIGHTS).write_bytes(os.urandom(5000))
    else:
        info = json.loads((bad / priors.INFO).read_text())
        info["prior"]["a2e_window"] = "thirty-two"
        (bad / priors.INFO).write_text(json.dumps(info))
    with pytest.raises(PriorsError, match="priors"):
        priors.load_priors(str(bad))


def test_what_the_cli_writes_is_private(tmp_path, capsys):
    from ggtalker_jax import files
    with files.private_umask():
        path = tmp_path / "made"
        path.mkdir()
        (path / "f").write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700 and stat.S_IMODE((path / "f").stat().st_mode) == 0o600

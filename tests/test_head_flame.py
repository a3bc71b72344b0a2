"""FLAME end to end with a FLAME-shaped model and embedding (no restricted file): the landmark-embedding
reader, the head-model record and its check, tracking a prepared dataset, and `ggtalker prepare --head`."""
import json
import shutil

import numpy as np
import pytest
from flame_shaped import write_flame_shaped

from ggtalker_jax import cli, head
from ggtalker_jax.data import default_subject
from ggtalker_jax.data.dataset import PreparedDataset
from ggtalker_jax.data.track import TrackConfig, track_dataset
from ggtalker_jax.head import landmark_embedding as emb_lib
from ggtalker_jax.head.record import HeadModelMismatchError, check_head_model, load_recorded_head, read_record

FAST = TrackConfig(rigid_steps=60, full_steps=80, refine_steps=20)


@pytest.fixture(scope="module")
def flame_files(tmp_path_factory):
    model_path, emb_path, _ = write_flame_shaped(tmp_path_factory.mktemp("flame"), posedirs_scale=1e-4)
    return model_path, emb_path


@pytest.fixture(scope="module")
def flame(flame_files):
    return head.load(str(flame_files[0]), landmark_embedding=str(flame_files[1]))


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    out = tmp_path_factory.mktemp("subject")
    default_subject.make_default_subject(str(out), seconds=1.0, size=64, seed=2, uv_resolution=16, write_video=False)
    return out


# ------------------------------------------------------------------------------------- embedding reader
def _reference(flame_files):
    with np.load(flame_files[1]) as z:
        return z["lmk_face_idx"], z["lmk_b_coords"], z["landmark_indices"]


def test_embedding_accepts_common_spellings(flame_files, tmp_path):
    faces, bary, index = _reference(flame_files)
    np.savez(tmp_path / "alt.npz", lmk_faces_idx=faces.astype(np.int64), lmk_bary_coords=bary.T, mediapipe_indices=index)
    got = emb_lib.load_landmark_embedding(tmp_path / "alt.npz", num_faces=20000)
    np.testing.assert_array_equal(got["lmk_faces"], faces)
    np.testing.assert_allclose(got["lmk_bary"], bary)
    np.testing.assert_array_equal(got["lmk_mediapipe_index"], index)
    full = np.zeros(478, np.int32)
    np.savez(tmp_path / "full.npz", face_idx=full, b_coords=np.tile([[1.0, 0, 0]], (478, 1)))
    np.testing.assert_array_equal(emb_lib.load_landmark_embedding(tmp_path / "full.npz")["lmk_mediapipe_index"],
                                  np.arange(478))


@pytest.mark.parametrize("arrays,match", [
    ({"lmk_b_coords": np.full((3, 3), 1 / 3)}, "no face indices"),
    ({"lmk_face_idx": np.zeros(3, int), "lmk_b_coords": np.full((3, 3), 1 / 3)}, "no MediaPipe index array"),
    ({"lmk_face_idx": np.zeros(3, int), "lmk_b_coords": np.full((3, 3), 0.5), "landmark_indices": np.arange(3)},
     "barycentric"),
    ({"lmk_face_idx": np.zeros(3, int), "lmk_b_coords": np.full((2, 3), 1 / 3), "landmark_indices": np.arange(3)},
     r"must be \[3, 3\]"),
    ({"lmk_face_idx": np.zeros(3, int), "lmk_b_coords": np.full((3, 3), 1 / 3), "landmark_indices": [1, 1, 2]},
     "distinct"),
    ({"lmk_face_idx": np.array([0, 5, 99]), "lmk_b_coords": np.full((3, 3), 1 / 3), "landmark_indices": np.arange(3)},
     "another mesh"),
])
def test_embedding_errors_name_the_file_and_the_problem(tmp_path, arrays, match):
    path = tmp_path / "emb.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match) as err:
        emb_lib.load_landmark_embedding(path, num_faces=10)
    assert str(path) in str(err.value)


def test_embedding_refuses_pickles_and_missing_files(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"lmk_face_idx": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        emb_lib.load_landmark_embedding(tmp_path / "obj.npy")
    with pytest.raises(FileNotFoundError, match="--landmark_embedding"):
        emb_lib.load_landmark_embedding(tmp_path / "missing.npz")


# -------------------------------------------------------------------------------------------- the model
def test_flame_model_has_the_embedding_irises_and_a_derived_blink(flame, flame_files):
    faces, bary, index = _reference(flame_files)
    n = len(index)
    np.testing.assert_array_equal(np.asarray(flame.lmk_mediapipe_index)[:n], index)
    assert {468, 473} <= set(np.asarray(flame.lmk_mediapipe_index)[n:].tolist())     # irises added
    assert flame.name == "flame" and [s[0] for s in flame.source] == ["model", "landmark_embedding"]
    from ggtalker_jax.head import eyes
    assert eyes.blink_basis(flame).kind == "derived"


# ------------------------------------------------------------------------------------------------ record
def test_record_check_accepts_moved_files_and_refuses_other_models(flame, flame_files, tmp_path):
    record = head.head_model_record(flame)
    json.dumps(record)                                                              # JSON-able
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in flame_files:
        shutil.copy(f, moved / f.name)
    again = head.load(str(moved / flame_files[0].name), landmark_embedding=str(moved / flame_files[1].name))
    check_head_model(again, record)                                                 # same content, new paths
    check_head_model(again, None)                                                   # nothing recorded: no check
    with pytest.raises(HeadModelMismatchError, match="'flame'.*given is 'open'"):
        check_head_model(head.load("open"), record, where="/data/x/tracking.npz")
    faces, bary, index = _reference(flame_files)
    np.savez(moved / "other.npz", lmk_face_idx=faces[:-1], lmk_b_coords=bary[:-1], landmark_indices=index[:-1])
    other = head.load(str(moved / flame_files[0].name), landmark_embedding=str(moved / "other.npz"))
    with pytest.raises(HeadModelMismatchError, match="landmark_embedding .*mediapipe_landmark_embedding.npz"):
        check_head_model(other, record)
    with pytest.raises(HeadModelMismatchError, match="shape components"):
        check_head_model(head.load(str(moved / flame_files[0].name), num_shape=20,
                                   landmark_embedding=str(moved / flame_files[1].name)), record)
    open_record = head.head_model_record(head.load("open"))
    with pytest.raises(HeadModelMismatchError, match="version"):
        check_head_model(head.load("open"), {**open_record, "version": -1})
    bent = {**open_record, "geometry": {**open_record["geometry"], "exprdirs_rms": 1.01 * open_record["geometry"]["exprdirs_rms"]}}
    with pytest.raises(HeadModelMismatchError, match="geometry"):
        check_head_model(head.load("open"), bent)


def test_track_dataset_with_flame_records_the_model(subject, flame, flame_files, tmp_path):
    data_dir = tmp_path / "d"
    shutil.copytree(subject, data_dir)
    result = track_dataset(str(data_dir), head=str(flame_files[0]), landmark_embedding=str(flame_files[1]), config=FAST)
    assert result["eye_pose"].shape == (25, 6) and result["blink"].shape == (25, 2)
    assert np.abs(result["neck_pose"]).max() > 0                                     # neck split ran
    record = read_record(str(data_dir))
    assert record == json.loads(json.dumps(head.head_model_record(flame)))
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["tracking"]["head_model"]["files"][0]["sha256"] == record["files"][0]["sha256"]
    assert PreparedDataset(data_dir).tracking()["expression"].shape == (25, 50)
    model = load_recorded_head(record, where=str(data_dir))                          # from the recorded paths
    assert model.num_landmarks == flame.num_landmarks
    with pytest.raises(HeadModelMismatchError):
        load_recorded_head(record, head="open")
    gone = dict(record, files=[dict(f, path=str(tmp_path / "nowhere" / "x.pkl")) for f in record["files"]])
    with pytest.raises(FileNotFoundError, match="--head"):
        load_recorded_head(gone, where=str(data_dir))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    np.savez(legacy / "tracking.npz", head_model=np.array("open"), expression=np.zeros((2, 50)))
    assert read_record(str(legacy)) == {"kind": "open"}


# ---------------------------------------------------------------------------------------------- prepare
def test_prepare_refuses_bad_head_flags_before_reading_the_video(flame_files, tmp_path, capsys):
    video = str(tmp_path / "not_read.mp4")
    base = ["prepare", "--video", video, "--out", str(tmp_path / "o"), "--noprogress"]
    assert cli.main(base + ["--head", "open", "--landmark_embedding", str(flame_files[1])]) == 1
    assert "only for a FLAME --head" in capsys.readouterr().err
    assert cli.main(base + ["--head", str(flame_files[0])]) == 1
    assert "--landmark_embedding" in capsys.readouterr().err
    assert cli.main(base + ["--head", str(flame_files[0]), "--landmark_embedding", str(tmp_path / "no.npz")]) == 1
    assert "no.npz" in capsys.readouterr().err
    assert cli.main(base + ["--head", str(tmp_path / "none.pkl")]) == 1
    assert "none.pkl" in capsys.readouterr().err


def test_prepare_cli_tracks_a_real_clip_with_flame(shared_data, flame, flame_files, tmp_path, capsys):
    out = tmp_path / "ds"
    rc = cli.main(["prepare", "--video", str(shared_data / "retalking_face3_5s.mp4"), "--out", str(out), "--size", "96",
                   "--max_seconds", "1.0", "--noprogress", "--head", str(flame_files[0]),
                   "--landmark_embedding", str(flame_files[1])])
    assert rc == 0, capsys.readouterr().err
    t = PreparedDataset(out).tracking()
    assert t["eye_pose"].shape[1] == 6 and np.isfinite(t["landmark_error_px"]).all()
    assert np.median(t["landmark_error_px"]) < 6.0                                  # pixels at 96 px
    check_head_model(flame, read_record(str(out)), where=str(out))

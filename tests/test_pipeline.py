"""End to end on a tiny default subject: priors -> 5-stage adaptation (resumable) -> render -> eval -> watermark."""
import json
import subprocess

import imageio_ffmpeg
import jax
import numpy as np
import pytest

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax.audio import io as audio_io
from ggtalker_jax.data import default_subject
from ggtalker_jax.train import adapt, ev_prior, priors

CFG = avatar_lib.AvatarConfig.small(image_size=32)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    subject = root / "subject"
    default_subject.make_default_subject(str(subject), seconds=1.2, size=64, seed=1, uv_resolution=24,
                                         write_video=False)
    prior_dir = root / "priors"
    ev_prior.train_small_priors(str(prior_dir), [str(subject)], CFG, num_steps=2, progress=False)
    stages = adapt.small_schedule(2)
    summary = adapt.adapt(str(subject), str(root / "workdir"), str(prior_dir), stages,
                          adapt.AdaptConfig(stages=stages, window=8), progress=False)
    return root, summary


def test_priors_round_trip(adapted):
    root, _ = adapted
    params, cfg, trained = priors.load_priors(str(root / "priors"))
    assert cfg == CFG and "ev" in trained and "a2e" in trained
    fresh = avatar_lib.init_network_params(jax.random.PRNGKey(0), CFG)
    assert jax.tree.structure(params) == jax.tree.structure(fresh)


def test_adaptation_runs_every_stage_and_freezes_the_rest(adapted):
    root, summary = adapted
    names = [s["name"] for s in summary["stages"]]
    assert names == ["1_uv_map", "2_generator_head", "3_a2e", "4_a2e_generator_head", "5_all"]
    assert all(s["steps"] == 2 and np.isfinite(s["final"]["loss"]) for s in summary["stages"])
    assert (root / "workdir" / "avatar.json").exists()


def test_stage_masks_touch_only_their_groups(adapted):
    root, _ = adapted
    static, params, data, _ = adapt.load_adapted(str(root / "workdir"))
    stage = adapt.Stage("only_uv", ("uv_delta",), minutes=1.0, steps=1, learning_rate=1e-2)
    cfg = adapt.AdaptConfig(stages=(stage,), window=8)
    init_opt, step = adapt.make_step(static, data, cfg)
    new, _ = adapt.run_stage(params, data, stage, cfg, jax.random.PRNGKey(0), init_opt, step, progress=False)
    for group in adapt.PARAM_GROUPS:
        changed = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params[group]), jax.tree.leaves(new[group])))
        assert changed == (group == "uv_delta"), group


def test_rerun_resumes_after_the_last_stage(adapted, capsys):
    root, _ = adapted
    stages = adapt.small_schedule(2)
    summary = adapt.adapt(str(root / "subject"), str(root / "workdir"), str(root / "priors"), stages,
                          adapt.AdaptConfig(stages=stages, window=8), progress=False)
    assert "resuming adaptation after stage 5" in capsys.readouterr().out
    assert len(summary["stages"]) == 5


def test_render_writes_a_watermarked_mp4_as_long_as_the_audio(adapted, tmp_path):
    from ggtalker_jax import cli
    root, _ = adapted
    import soundfile
    wav, sr = default_subject.default_driving_audio(seconds=1.0, seed=3)
    wav_44k = np.interp(np.arange(44100) / 44100 * sr, np.arange(len(wav)), wav)
    soundfile.write(tmp_path / "drive.wav", np.stack([wav_44k, wav_44k], -1), 44100)   # any rate, stereo
    out = tmp_path / "talk.mp4"
    assert cli.main(["render", "--workdir", str(root / "workdir"), "--audio", str(tmp_path / "drive.wav"),
                     "--out", str(out), "--output_size", "64"]) == 0
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(out)], capture_output=True, text=True).stderr
    assert "Video: h264" in info and "Audio: aac" in info
    assert "Duration: 00:00:01.00" in info
    assert cli.main(["watermark", "detect", str(out)]) == 0


def test_eval_writes_metrics_report_and_plots(adapted, tmp_path):
    from ggtalker_jax import cli
    root, _ = adapted
    wav, sr = default_subject.default_driving_audio(seconds=1.0, seed=4, voice="other_language")
    audio_io.write_wav(str(tmp_path / "lang.wav"), wav, sr)
    out = tmp_path / "report"
    assert cli.main(["eval", "--workdir", str(root / "workdir"), "--out", str(out),
                     "--cross_language_audio", str(tmp_path / "lang.wav"), "--mouth_source", "model"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "lmd", "sync_offset_frames", "sync_confidence", "fps"):
        assert key in metrics
    assert 0 < metrics["psnr"] < 100 and 0 <= metrics["ssim"] <= 1 and metrics["fps"] > 0
    for png in ("psnr_over_time.png", "mouth_vs_audio.png", "frame_grid.png"):
        assert (out / png).stat().st_size > 1000
    assert "Cross-language" in (out / "report.md").read_text()


def test_mouth_track_bridges_frames_without_a_face(monkeypatch):
    """MediaPipe losing the face in some frames must not crash eval: those frames are interpolated and the
    count is reported; with no face at all the opening is NaN (never an exception)."""
    from ggtalker_jax.eval import metrics, protocol
    t = 6
    lmk = np.zeros((t, 478, 3))
    lmk[:, metrics.LEFT_INNER_CORNER, 0] = 0.0
    lmk[:, metrics.RIGHT_INNER_CORNER, 0] = 10.0
    gaps = np.array([1.0, 2.0, 0.0, 4.0, 0.0, 6.0])
    lmk[:, metrics.LOWER_INNER_LIP, 1] = gaps
    lmk[[2, 4]] = np.nan                                     # no face in frames 2 and 4
    monkeypatch.setattr(metrics, "face_mesh_landmarks", lambda frames: lmk.copy())
    frames = np.zeros((t, 8, 8, 3), np.uint8)
    opening, _, src = protocol._mouth_track(frames, None, None, None, None, None, source="mediapipe")
    np.testing.assert_allclose(opening, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert "4/6" in src
    monkeypatch.setattr(metrics, "face_mesh_landmarks", lambda frames: np.full((t, 478, 3), np.nan))
    opening, _, src = protocol._mouth_track(frames, None, None, None, None, None, source="mediapipe")
    assert np.isnan(opening).all() and "0/6" in src

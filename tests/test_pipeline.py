"""End to end on a tiny default subject: priors -> 5-stage adaptation (resumable) -> render -> eval -> watermark."""
import dataclasses
import json
import subprocess

import imageio_ffmpeg
import jax
import numpy as np
import pytest

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax.audio import io as audio_io
from ggtalker_jax.data import default_subject
from ggtalker_jax import priors
from ggtalker_jax import workdir as workdir_lib
from ggtalker_jax.train import adapt, ev_prior

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
    summary = adapt.adapt(str(subject), str(root / "workdir"), str(prior_dir), stages, adapt.AdaptConfig(),
                          avatar_config=CFG, progress=False)
    return root, summary


def test_priors_round_trip(adapted):
    root, _ = adapted
    params, cfg, trained = priors.load_priors(str(root / "priors"))
    assert cfg.models_preset == CFG.prior.models_preset and "ev" in trained and "a2e" in trained
    fresh = avatar_lib.init_network_params(jax.random.PRNGKey(0), CFG)
    assert jax.tree.structure(params) == jax.tree.structure(fresh)


def test_adaptation_runs_every_stage_and_freezes_the_rest(adapted):
    root, summary = adapted
    names = [s["name"] for s in summary["stages"]]
    assert names == ["1_uv_map", "2_generator_head", "3_a2e", "4_a2e_generator_head", "5_all"]
    assert all(s["steps"] == 2 and np.isfinite(s["final"]["loss"]) for s in summary["stages"])
    assert (root / "workdir" / "avatar.json").exists()


def test_each_paper_stage_changes_exactly_its_groups(adapted, tmp_path):
    root, _ = adapted
    a = workdir_lib.load_adapted(str(root / "workdir"))
    stats = {k: a.params[k] for k in ("generator_stats", "inpainter_stats")}
    params = {k: v for k, v in a.params.items() if k not in stats}
    uv_input = avatar_lib.subject_uv_input(a.static, a.subject)
    for i, stage in enumerate(adapt.paper_schedule()):
        one_step = dataclasses.replace(stage, steps=1, learning_rate=1e-2)
        new, record = adapt.run_stage(a.static, a.subject, uv_input, params, stats, one_step, adapt.AdaptConfig(),
                                      str(tmp_path / f"run{i}"), i, progress=False)
        assert record["steps"] == 1
        for group in adapt.PARAM_GROUPS:
            changed = any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params[group]),
                                                                   jax.tree.leaves(new[group])))
            assert changed == (group in stage.trainable), (stage.name, group)


def test_rerun_resumes_after_the_last_stage(adapted, capsys):
    root, _ = adapted
    stages = adapt.small_schedule(2)
    summary = adapt.adapt(str(root / "subject"), str(root / "workdir"), str(root / "priors"), stages,
                          adapt.AdaptConfig(), avatar_config=CFG, progress=False)
    assert "all 5 stages are already finished; nothing to do" in capsys.readouterr().out
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
    opening, _, src = protocol._mouth_track(frames, None, None, None, None, source="mediapipe")
    np.testing.assert_allclose(opening, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert "4/6" in src
    monkeypatch.setattr(metrics, "face_mesh_landmarks", lambda frames: np.full((t, 478, 3), np.nan))
    opening, _, src = protocol._mouth_track(frames, None, None, None, None, source="mediapipe")
    assert np.isnan(opening).all() and "0/6" in src

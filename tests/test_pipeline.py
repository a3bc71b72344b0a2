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
    assert [s["steps"] for s in summary["stages"]] == [st.steps for st in adapt.small_schedule(2)]
    assert summary["stages"][0]["steps"] == adapt.UV_MAP_STEPS_FACTOR * 2      # stage 1 runs its own count
    assert all(np.isfinite(s["final"]["loss"]) for s in summary["stages"])
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
        for part in ("shape", "pose_delta", "expr_delta"):     # each head parameter, not just the group
            changed = not np.array_equal(params["head"][part], new["head"][part])
            assert changed == ("head" in stage.trainable), (stage.name, part)


def test_stage_gradients_reach_every_trained_group_and_images_reach_the_a2e(adapted):
    """Per stage of Table 1, the objective gives every trained group (and each head parameter: shape, pose
    and expression corrections) a non-zero gradient; in stages 4-5 the image loss alone reaches the A2E
    (frames rendered from expressions it generated from the audio)."""
    from ggtalker_jax.train import objectives
    root, _ = adapted
    a = workdir_lib.load_adapted(str(root / "workdir"))
    stats = {k: a.params[k] for k in ("generator_stats", "inpainter_stats")}
    params = {k: v for k, v in a.params.items() if k not in stats}
    uv_input = avatar_lib.subject_uv_input(a.static, a.subject)
    cfg = adapt.AdaptConfig()
    batch = next(adapt.subject_loader(a.subject, a.static, cfg, seed=0))
    assert batch["window_prev_expression53"].shape == (2, a.static.config.prior.a2e_context, 53)

    def norms(stage, w_a2e=1.0):
        loss_fn = objectives.adaptation_objective(a.static, uv_input, 0, stage.terms(2), w_a2e=w_a2e)
        grads = jax.grad(lambda p: loss_fn(p, batch, jax.random.PRNGKey(1), stats)[0])(params)
        out = {g: float(optax_norm(grads[g])) for g in adapt.PARAM_GROUPS if g != "head"}
        out.update({f"head.{k}": float(optax_norm(grads["head"][k])) for k in ("shape", "pose_delta", "expr_delta")})
        return out

    for stage in adapt.paper_schedule():
        got = norms(stage)
        for name, value in got.items():
            if name.split(".")[0] in stage.trainable:
                assert value > 0, (stage.name, name, got)
        if stage.name == "3_a2e":              # the A2E's objective alone: no image terms
            assert all(v == 0 for k, v in got.items() if k != "a2e"), got
    images_only = norms(adapt.paper_schedule()[3], w_a2e=0.0)
    assert images_only["a2e"] > 0, images_only
    # The rows rendered from generated expressions (row 0 of 2) teach the A2E only: with the tracked row
    # out of the photometric loss (its face "lost") and no landmark term, the head gets no gradient.
    lost = {**batch, "found": np.array([True, False])}
    loss_fn = objectives.adaptation_objective(a.static, uv_input, 0, adapt.paper_schedule()[3].terms(2),
                                              objectives.ImageWeights(w_landmark=0.0), w_a2e=0.0)
    grads = jax.grad(lambda p: loss_fn(p, lost, jax.random.PRNGKey(1), stats)[0])(params)
    assert float(optax_norm(grads["head"])) == 0.0 and float(optax_norm(grads["a2e"])) > 0


def optax_norm(tree):
    import optax
    return optax.tree.norm(tree)


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


def _rest_opening(a):
    from ggtalker_jax import infer
    return float(avatar_lib.mouth_opening(a.static.head_model, infer.rest_expression(a)[None],
                                          a.params["head"]["shape"])[0])


def _duration(path):
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True).stderr
    return info.split("Duration: ")[1].split(",")[0]


def test_silent_audio_renders_a_resting_mouth_as_long_as_the_audio(adapted, tmp_path, capsys):
    from ggtalker_jax import cli, infer
    root, _ = adapted
    audio_io.write_wav(str(tmp_path / "silence.wav"), np.zeros(3 * 16000, np.float32), 16000)
    summary = infer.render_video(str(root / "workdir"), str(tmp_path / "silence.wav"), str(tmp_path / "s.mp4"),
                                 infer.RenderOptions(output_size=64), progress=False)
    assert summary["frames"] == 75 and _duration(tmp_path / "s.mp4") == "00:00:03.00"
    assert any("no speech found" in n for n in summary["notes"])
    a = workdir_lib.load_adapted(str(root / "workdir"))
    opening = avatar_lib.mouth_opening(a.static.head_model, summary["expression53"], a.params["head"]["shape"])
    np.testing.assert_allclose(opening, _rest_opening(a), atol=1e-6)
    # the command line accepts it too, with a one-line note
    assert cli.main(["render", "--workdir", str(root / "workdir"), "--audio", str(tmp_path / "silence.wav"),
                     "--out", str(tmp_path / "cli.mp4"), "--output_size", "64", "--noprogress"]) == 0
    assert "note: no speech found" in capsys.readouterr().out


def test_a_pause_inside_speech_rests_the_mouth(adapted, tmp_path):
    from ggtalker_jax import infer
    root, _ = adapted
    speech, sr = default_subject.default_driving_audio(seconds=2.0, seed=5)
    wav = np.concatenate([speech[:sr], np.zeros(2 * sr, np.float32), speech[sr:2 * sr]])
    audio_io.write_wav(str(tmp_path / "pause.wav"), wav, sr)
    summary = infer.render_video(str(root / "workdir"), str(tmp_path / "pause.wav"), str(tmp_path / "p.mp4"),
                                 infer.RenderOptions(output_size=64), progress=False)
    assert summary["frames"] == 100 and not summary["notes"]
    a = workdir_lib.load_adapted(str(root / "workdir"))
    opening = avatar_lib.mouth_opening(a.static.head_model, summary["expression53"], a.params["head"]["shape"])
    rest = _rest_opening(a)
    np.testing.assert_allclose(opening[38:63], rest, atol=1e-6)           # the middle second: at rest
    speaking = np.r_[opening[:20], opening[80:]]
    assert np.abs(speaking - rest).max() > 1e-3                            # the speech itself moves the mouth
    # without the rest, the A2E's own output in the pause is not the resting mouth
    raw = infer.render_video(str(root / "workdir"), str(tmp_path / "pause.wav"), str(tmp_path / "r.mp4"),
                             infer.RenderOptions(output_size=64, rest_in_pauses=False), progress=False)
    raw_open = avatar_lib.mouth_opening(a.static.head_model, raw["expression53"], a.params["head"]["shape"])
    assert np.abs(raw_open[38:63] - rest).max() > 1e-4


def test_render_still_refuses_audio_it_cannot_use(adapted, tmp_path, capsys):
    import soundfile
    from ggtalker_jax import cli
    root, _ = adapted
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    soundfile.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    soundfile.write(tmp_path / "blip.wav", np.zeros(100, np.float32), 16000)      # 6 ms: under one frame
    for name, message in (("empty.wav", "file is empty"), ("junk.wav", "cannot decode"),
                          ("zero.wav", "empty (0 samples)"), ("blip.wav", "shorter than one video frame")):
        rc = cli.main(["render", "--workdir", str(root / "workdir"), "--audio", str(tmp_path / name),
                       "--out", str(tmp_path / f"{name}.mp4"), "--noprogress"])
        err = capsys.readouterr().err
        assert rc == 3 and message in err and name in err, (name, rc, err)


def test_external_features_of_another_width_from_prepare_to_render(adapted, tmp_path, capsys):
    """Features that are not log-mel (here 24 per row at 50 Hz, as an external model would give) travel
    from the prepared subject through the A2E prior (priors.json), adaptation and render."""
    import shutil

    from ggtalker_jax import cli
    from ggtalker_jax.errors import DatasetError
    from ggtalker_jax.train import a2e_prior, trainer
    root, _ = adapted
    rng = np.random.default_rng(0)
    speech, sr = default_subject.speech_wav(seconds=1.2, seed=2)

    def features_of(wav, path):            # a stand-in feature extractor: 24 band energies at 50 Hz
        hop = sr // 50
        frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
        spec = np.abs(np.fft.rfft(frames * np.hanning(hop), axis=1))[:, :96]
        np.save(path, np.log(spec.reshape(len(frames), 24, 4).mean(-1) + 1e-4).astype(np.float32))

    features_of(speech, tmp_path / "subject.npy")
    subject = tmp_path / "subject"
    default_subject.make_default_subject(str(subject), seconds=1.2, size=64, seed=2, uv_resolution=24,
                                         write_video=False, features=str(tmp_path / "subject.npy"), feature_fps=50)
    meta = json.loads((subject / "meta.json").read_text())
    assert meta["features"]["kind"] == "external" and meta["features"]["dim"] == 24
    prior_dir = tmp_path / "priors"
    shutil.copytree(root / "priors", prior_dir)
    prior = dataclasses.replace(CFG.prior, a2e_window=8, a2e_context=2)
    params, prior = a2e_prior.train_a2e_prior([str(subject)], str(tmp_path / "a2e"), prior,
                                              trainer.TrainConfig(num_steps=2, checkpoint_every=2, warmup_steps=0),
                                              a2e_prior.A2ETrainConfig(batch_size=2))
    a2e_prior.export_prior(str(prior_dir), prior, params, {"steps": 2})
    stored = json.loads((prior_dir / "priors.json").read_text())["prior"]
    assert stored["audio"]["kind"] == "external" and stored["audio"]["dim"] == 24
    assert priors.load_priors(str(prior_dir))[1].models.a2e.audio_dim == 24
    workdir = tmp_path / "workdir"
    adapt.adapt(str(subject), str(workdir), str(prior_dir), adapt.small_schedule(1), adapt.AdaptConfig(),
                avatar_config=CFG, progress=False)
    drive, _ = default_subject.default_driving_audio(seconds=1.0, seed=6)
    audio_io.write_wav(str(tmp_path / "drive.wav"), drive, sr)
    features_of(drive, tmp_path / "drive.npy")
    out = tmp_path / "ext.mp4"
    assert cli.main(["render", "--workdir", str(workdir), "--audio", str(tmp_path / "drive.wav"), "--out", str(out),
                     "--features", str(tmp_path / "drive.npy"), "--feature_fps", "50", "--output_size", "64",
                     "--noprogress"]) == 0
    assert _duration(out) == "00:00:01.00"
    capsys.readouterr()
    # without the features, or with features of another width, render says what to pass
    assert cli.main(["render", "--workdir", str(workdir), "--audio", str(tmp_path / "drive.wav"),
                     "--out", str(tmp_path / "no.mp4"), "--noprogress"]) == 2
    assert "--features FILE.npy --feature_fps" in capsys.readouterr().err
    np.save(tmp_path / "wide.npy", rng.normal(size=(50, 30)).astype(np.float32))
    assert cli.main(["render", "--workdir", str(workdir), "--audio", str(tmp_path / "drive.wav"),
                     "--out", str(tmp_path / "wide.mp4"), "--features", str(tmp_path / "wide.npy"),
                     "--noprogress"]) == 2
    assert "30 values per row" in capsys.readouterr().err
    # a log-mel subject cannot adapt these priors, and the log-mel avatar refuses --features
    with pytest.raises(DatasetError, match="external features"):
        adapt.adapt(str(root / "subject"), str(tmp_path / "other"), str(prior_dir), adapt.small_schedule(1),
                    adapt.AdaptConfig(), avatar_config=CFG, progress=False)
    assert cli.main(["render", "--workdir", str(root / "workdir"), "--audio", str(tmp_path / "drive.wav"),
                     "--out", str(tmp_path / "lm.mp4"), "--features", str(tmp_path / "drive.npy"),
                     "--noprogress"]) == 2
    assert "leave --features out" in capsys.readouterr().err

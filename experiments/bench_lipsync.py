"""Lip-sync benchmark on real clips: does the mouth follow the audio, for the clip's own voice, for other
speakers and for other languages? Prints tables and writes JSON. A sibling of bench_fidelity.py.

    python experiments/bench_lipsync.py --prep_dir /tmp/lipsync/prep --work_dir /tmp/lipsync/bench \
        --out /tmp/bench_lipsync.json

Per real clip (prepared at --size, prepared into --prep_dir when missing):
1. the prior alone (before adaptation, generic style 0) and the adapted avatar (all 5 stages, --steps_per_stage
   steps each, on the clip's train split) generate expressions for the clip's held-out test split from the
   test audio alone (features computed from that stretch of audio, as `ggtalker render` does);
2. mouth opening of the render vs the real test frames: Pearson correlation, against the same with the test
   audio's frames shuffled in time (the control). The real frames' opening is MediaPipe's (inner-lip gap over
   mouth width, `eval.metrics.mouth_opening`, from the landmarks `prepare` stored); the render's is the same
   measure on the head model's lip landmarks of the rendered expressions (`avatar.mouth_opening`): at the
   small avatar size MediaPipe cannot see the render reliably, and the geometry is what the A2E controls.
   --mouth_source mediapipe renders the frames and runs MediaPipe on them instead (upscaled to 256 px);
3. sync offset (frames; > 0: the mouth lags the audio) and confidence (`eval.metrics.sync_score`) of the
   rendered mouth against the audio energy, next to the same for the real frames (what real speech gives);
4. the adapted avatar driven by other speakers' English (speech_en_60s.wav, speech_b_20s.wav) and by Chinese
   (speech_zh_22s.wav), first --cross_seconds seconds: mouth-vs-audio-energy correlation (at the best offset
   within +-2 frames) and sync, against shuffled audio.
Then the prior alone on the same voices it never saw (generic style), against shuffled audio.

--sweep additionally measures the prior alone over DDIM steps x guidance on the held-out audio (what the
render defaults are chosen by).

Measured 2026-12-02 (`--steps_per_stage 0 --sweep --seeds 2`, the bundled prior, 5 clips, 104 test frames;
142 s on 2 CPU cores): corr with the real mouth, frame-weighted mean (shuffled control):
steps 5/10/25/50 at guidance 1: 0.305/0.313/0.317/0.318 (0.068/0.073/0.076/0.078); at guidance 2:
0.310/0.314/0.316/0.316 (0.030/0.036/0.047/0.053); guidance 1.5 and 3 in between. Steps and guidance barely
move the correlation (the prior is the limit); guidance 2 halves the control. Defaults kept (10, 1.0).
Prior alone per clip at the defaults: german 0.15 (-0.02), latentsync 0.68 (-0.25), face1 0.11 (0.01),
face2 0.28 (0.53), face3 0.50 (0.75) (face2/face3: 11 test frames); other voices' mouth-vs-energy corr:
speech_en 0.34 (0.02), speech_b 0.22 (0.01), speech_zh 0.30 (-0.03).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "/work/shared/data", "folder with the sample clips and speech")
flags.DEFINE_list("clips", ["german_anchor_20s", "latentsync_fullbody_10s", "retalking_face1_6s",
                            "retalking_face2_5s", "retalking_face3_5s"], "clips (without .mp4)")
flags.DEFINE_list("cross_audio", ["speech_en_60s.wav", "speech_b_20s.wav", "speech_zh_22s.wav"],
                  "other speakers' audio in --data_dir (English, English, Chinese)")
flags.DEFINE_float("cross_seconds", 20.0, "seconds of each cross audio used")
flags.DEFINE_string("prep_dir", "/tmp/lipsync/prep", "prepared clips (made here with --size when missing)")
flags.DEFINE_integer("size", 128, "prepare crop size")
flags.DEFINE_string("work_dir", "/tmp/lipsync/bench", "adapted workdirs go here")
flags.DEFINE_string("priors", None, "priors folder (default: the bundled ones)")
flags.DEFINE_integer("image_size", 64, "avatar render size")
flags.DEFINE_integer("steps_per_stage", 30, "adaptation steps per stage (0: the prior alone only)")
flags.DEFINE_integer("diffusion_steps", None, "DDIM steps (default: render's)")
flags.DEFINE_float("guidance", None, "classifier-free guidance (default: render's)")
flags.DEFINE_enum("mouth_source", "model", ["model", "mediapipe"], "how the render's mouth opening is measured")
flags.DEFINE_integer("seeds", 2, "sampler seeds averaged")
flags.DEFINE_boolean("sweep", False, "also sweep DDIM steps x guidance for the prior alone")
flags.DEFINE_string("out", "/tmp/bench_lipsync.json", "JSON output path")


def corr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 1e-12 else 0.0


def best_corr(energy, mouth, max_offset=2) -> float:
    """Pearson correlation of audio energy and mouth opening at the best offset within +-max_offset."""
    n = len(energy)
    out = []
    for k in range(-max_offset, max_offset + 1):
        a, m = (energy[:n - k], mouth[k:]) if k >= 0 else (energy[-k:], mouth[:n + k])
        out.append(corr(a, m))
    return float(max(out))


def sync(energy, mouth):
    from ggtalker_jax.eval import metrics
    s = metrics.sync_score(energy, mouth, max_offset=min(10, max(0, (len(energy) - 3) // 2)))
    return int(s.best_offset_frames), float(s.confidence)


def ensure_prepared(name: str) -> str:
    from ggtalker_jax.data import ingest
    out = os.path.join(FLAGS.prep_dir, name)
    if not os.path.exists(os.path.join(out, "tracking.npz")):
        ingest.prepare(os.path.join(FLAGS.data_dir, name + ".mp4"), out, size=FLAGS.size, progress=False,
                       track_fn=ingest.tracker("open"))
    return out


@dataclasses.dataclass(frozen=True)
class Driver:
    """Generates expressions for audio with one A2E (a prior's or an adapted avatar's): its prior config,
    A2E params, style row, the head model and identity shape the mouth is measured with, the resting mouth
    (None: no rest in pauses) and the sampler options."""
    prior: object
    params: object
    style: int
    head: object
    shape: object
    rest: object
    opts: object

    def expressions(self, feats, wav, sr, fps, seed):
        import jax

        from ggtalker_jax.audio import features as audio_features
        from ggtalker_jax.infer import rest_in_pauses
        from ggtalker_jax.models import diffusion
        expr = np.asarray(diffusion.predict_expressions(
            self.prior.models.a2e, self.params, feats, jax.random.PRNGKey(seed), window=self.prior.a2e_window,
            context=self.prior.a2e_context, num_steps=self.opts.num_diffusion_steps, style_id=self.style,
            guidance=self.opts.guidance, norm=self.prior.expression_norm))
        if wav is not None and self.rest is not None:
            expr = rest_in_pauses(expr, audio_features.speech_activity(wav, sr, fps, len(feats)), self.rest)
        return expr

    def mouth(self, feats, wav, sr, fps, seed):
        from ggtalker_jax import avatar
        return avatar.mouth_opening(self.head, self.expressions(feats, wav, sr, fps, seed), self.shape)


def segment_features(prior, wav, sr, fps, a, b):
    """Features of frames [a, b) computed from that stretch of audio alone (as render computes them)."""
    seg = wav[int(round(a / fps * sr)):int(round(b / fps * sr))]
    return prior.audio.compute(seg, sr, fps, b - a), seg


def measure_test_split(driver, prior, wav, sr, fps, a, b, real_mouth, energy, seeds, frames_fn=None):
    feats, seg = segment_features(prior, wav, sr, fps, a, b)
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        if frames_fn is None:
            mouth = driver.mouth(feats, seg, sr, fps, seed)
            ctrl = driver.mouth(feats[rng.permutation(len(feats))], None, sr, fps, seed)
        else:
            mouth = frames_fn(driver.expressions(feats, seg, sr, fps, seed))
            ctrl = frames_fn(driver.expressions(feats[rng.permutation(len(feats))], None, sr, fps, seed))
        off, conf = sync(energy, mouth)
        rows.append({"corr_real": corr(mouth, real_mouth), "corr_real_shuffled": corr(ctrl, real_mouth),
                     "energy_corr": best_corr(energy, mouth), "energy_corr_shuffled": best_corr(energy, ctrl),
                     "sync_offset": off, "sync_confidence": conf})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def measure_cross(driver, prior, wav, sr, fps, seeds):
    from ggtalker_jax.audio import features as audio_features
    num = audio_features.num_video_frames(len(wav), sr, fps)
    feats = prior.audio.compute(wav, sr, fps, num)
    energy = audio_features.audio_energy_per_frame(wav, sr, fps, num)
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        mouth = driver.mouth(feats, wav, sr, fps, seed)
        ctrl = driver.mouth(feats[rng.permutation(num)], None, sr, fps, seed)
        off, conf = sync(energy, mouth)
        rows.append({"energy_corr": best_corr(energy, mouth), "energy_corr_shuffled": best_corr(energy, ctrl),
                     "sync_offset": off, "sync_confidence": conf})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main(_):
    from ggtalker_jax import avatar as avatar_lib
    from ggtalker_jax import head as head_lib
    from ggtalker_jax import priors as priors_lib
    from ggtalker_jax.audio import features as audio_features
    from ggtalker_jax.audio import io as audio_io
    from ggtalker_jax.data.dataset import SubjectView
    from ggtalker_jax.eval import metrics
    from ggtalker_jax.infer import RenderOptions, rest_expression
    from ggtalker_jax.train import adapt
    from ggtalker_jax.workdir import load_adapted

    opts = RenderOptions()
    opts = dataclasses.replace(opts, num_diffusion_steps=FLAGS.diffusion_steps or opts.num_diffusion_steps,
                               guidance=opts.guidance if FLAGS.guidance is None else FLAGS.guidance)
    network, prior, source = priors_lib.load_or_init(FLAGS.priors)
    model = head_lib.load(prior.head_model)
    fps = 25.0
    cross = {}
    for name in FLAGS.cross_audio:
        wav, sr = audio_io.load_audio(os.path.join(FLAGS.data_dir, name), sr=16000)
        cross[name] = (wav[:int(FLAGS.cross_seconds * sr)], sr)
    results = {"priors": source, "prior": {k: v for k, v in prior.to_dict().items() if not k.startswith("expr_")},
               "diffusion_steps": opts.num_diffusion_steps, "guidance": opts.guidance, "seeds": FLAGS.seeds,
               "mouth_source_render": ("head-model lip landmarks of the rendered expressions" if FLAGS.mouth_source
                                       == "model" else "MediaPipe on rendered frames (256 px)"),
               "mouth_source_real": "MediaPipe landmarks of the real frames (from prepare)", "clips": {}}
    prior_driver = Driver(prior, network["a2e"], 0, model, None, None, opts)
    t_start = time.time()
    for name in FLAGS.clips:
        t0 = time.time()
        data_dir = ensure_prepared(name)
        subject = SubjectView(data_dir, FLAGS.image_size)
        wav, sr = subject.dataset.audio()
        a, b, c = subject.split
        real = metrics.mouth_opening(subject.dataset.landmarks)
        energy_all = audio_features.audio_energy_per_frame(wav, sr, fps, subject.num_frames)
        real_test, energy = real[b:c], energy_all[b:c]
        off, conf = sync(energy, real_test)
        row = {"test_frames": [b, c], "real": {"energy_corr": best_corr(energy, real_test), "sync_offset": off,
                                               "sync_confidence": conf}}
        shape = subject.tracking["shape"]
        pd = dataclasses.replace(prior_driver, shape=shape)
        row["prior_alone"] = measure_test_split(pd, prior, wav, sr, fps, b, c, real_test, energy, FLAGS.seeds)
        if FLAGS.sweep:
            row["sweep"] = {}
            for steps in (5, 10, 25, 50):
                for g in (1.0, 1.5, 2.0, 3.0):
                    d = Driver(prior, network["a2e"], 0, model, shape, None,
                               dataclasses.replace(opts, num_diffusion_steps=steps, guidance=g))
                    row["sweep"][f"steps{steps}_g{g:g}"] = measure_test_split(d, prior, wav, sr, fps, b, c, real_test,
                                                                             energy, FLAGS.seeds)
        if FLAGS.steps_per_stage > 0:
            workdir = os.path.join(FLAGS.work_dir, name)
            t1 = time.time()
            adapt.adapt(data_dir, workdir, FLAGS.priors, adapt.small_schedule(FLAGS.steps_per_stage),
                        adapt.AdaptConfig(), avatar_config=avatar_lib.AvatarConfig.small(FLAGS.image_size),
                        progress=False)
            row["adapt_seconds"] = round(time.time() - t1, 1)
            adapted = load_adapted(workdir)
            ad = Driver(adapted.static.config.prior, adapted.params["a2e"], adapted.style_id, model,
                        adapted.params["head"]["shape"], rest_expression(adapted), opts)
            frames_fn = None
            if FLAGS.mouth_source == "mediapipe":
                frames_fn = _mediapipe_mouth(adapted, b)
            row["adapted"] = measure_test_split(ad, adapted.static.config.prior, wav, sr, fps, b, c, real_test,
                                                energy, FLAGS.seeds, frames_fn)
            row["adapted_cross"] = {n: measure_cross(ad, adapted.static.config.prior, w, s, fps, FLAGS.seeds)
                                    for n, (w, s) in cross.items()}
        row["seconds"] = round(time.time() - t0, 1)
        results["clips"][name] = row
        print(json.dumps({name: row}, indent=1), flush=True)
    results["prior_alone_cross"] = {n: measure_cross(Driver(prior, network["a2e"], 0, model, None, None, opts),
                                                     prior, w, s, fps, FLAGS.seeds) for n, (w, s) in cross.items()}
    results["seconds"] = round(time.time() - t_start, 1)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(results, f, indent=1)
    _print_tables(results)


def _mediapipe_mouth(adapted, start):
    """expressions [T, 53] of the test split -> MediaPipe mouth opening of their render (frames with no face
    bridged by interpolation; NaN-free or all zeros when MediaPipe sees nothing)."""
    import cv2

    from ggtalker_jax.data.dataset import POSE_KEYS
    from ggtalker_jax.eval import metrics
    from ggtalker_jax.infer import render_sequence

    def fn(expr):
        idx = np.arange(start, start + len(expr))
        poses = {k: adapted.subject.tracking[k][idx] for k in POSE_KEYS}
        frames = np.concatenate(list(render_sequence(adapted, expr, poses, idx, 8)))
        u8 = np.stack([cv2.resize((f * 255).astype(np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
                       for f in frames])
        lmk = metrics.face_mesh_landmarks(u8)
        found = np.isfinite(lmk).all(axis=(1, 2))
        if not found.any():
            return np.zeros(len(expr))
        opening = np.full(len(expr), np.nan)
        opening[found] = metrics.mouth_opening(lmk[found])
        i = np.arange(len(expr))
        return np.interp(i, i[found], opening[found])
    return fn


def _print_tables(r):
    print(f"\nlip sync ({r['diffusion_steps']} DDIM steps, guidance {r['guidance']:g}, {r['seeds']} seeds; render "
          f"mouth: {r['mouth_source_render']}; real mouth: {r['mouth_source_real']})")
    print("\n| clip | test frames | prior: corr real (shuffled) | adapted: corr real (shuffled) | adapted sync "
          "offset / conf | real sync offset / conf |")
    print("|---|---|---|---|---|---|")
    for name, row in r["clips"].items():
        p, ad, re = row["prior_alone"], row.get("adapted"), row["real"]
        ad_s = f"{ad['corr_real']:.2f} ({ad['corr_real_shuffled']:.2f})" if ad else "-"
        ad_y = f"{ad['sync_offset']:+.1f} / {ad['sync_confidence']:.2f}" if ad else "-"
        print(f"| {name} | {row['test_frames'][1] - row['test_frames'][0]} | {p['corr_real']:.2f} "
              f"({p['corr_real_shuffled']:.2f}) | {ad_s} | {ad_y} | {re['sync_offset']:+d} / "
              f"{re['sync_confidence']:.2f} |")
    print("\n| driving audio | prior alone: energy corr (shuffled) | adapted avatars (mean): energy corr (shuffled) "
          "| adapted sync offset / conf |")
    print("|---|---|---|---|")
    for n, p in r["prior_alone_cross"].items():
        ads = [row["adapted_cross"][n] for row in r["clips"].values() if "adapted_cross" in row]
        if ads:
            m = {k: np.mean([x[k] for x in ads]) for k in ads[0]}
            a_s = f"{m['energy_corr']:.2f} ({m['energy_corr_shuffled']:.2f}) | {m['sync_offset']:+.1f} / " \
                  f"{m['sync_confidence']:.2f}"
        else:
            a_s = "- | -"
        print(f"| {n} | {p['energy_corr']:.2f} ({p['energy_corr_shuffled']:.2f}) | {a_s} |")
    print(f"\ntotal {r['seconds']:.0f} s")


if __name__ == "__main__":
    app.run(main)

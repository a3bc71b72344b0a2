"""`ggtalker demo --out DIR`: the whole system, end to end, on the built-in default subject, on a CPU.

1. generate the procedural default subject (video + speech + ground-truth tracking) as a prepared dataset;
2. take the bundled small priors, or train small ones quickly when none are bundled;
3. adapt them to the subject with the 5-stage schedule (steps, not minutes, on a CPU);
4. render the subject speaking audio it never said (another voice), watermarked, to DIR/demo.mp4.

Writes DIR/subject (prepared data), DIR/priors (when trained here), DIR/workdir (adapted subject: a valid
--workdir for `ggtalker render` and `ggtalker eval`), DIR/driving.wav and DIR/demo.mp4.
"""
from __future__ import annotations

import os
import time


def run_demo(out_dir: str, seconds: float = 8.0, steps_per_stage: int = 60, prior_steps: int = 400,
             image_size: int = 256, seed: int = 0, progress: bool = True, uv_resolution: int = 128) -> dict:
    from ggtalker_jax import priors as priors_lib
    from ggtalker_jax.audio import io as audio_io
    from ggtalker_jax.data import default_subject
    from ggtalker_jax.infer import RenderOptions, render_video
    from ggtalker_jax.train import adapt as adapt_lib

    os.makedirs(out_dir, exist_ok=True)
    times = {}
    t0 = time.perf_counter()
    subject = os.path.join(out_dir, "subject")
    if not os.path.exists(os.path.join(subject, "tracking.npz")):
        default_subject.make_default_subject(subject, seconds=seconds, size=max(128, image_size), seed=seed)
    times["subject_s"] = time.perf_counter() - t0
    print(f"[1/4] default subject: {subject} ({times['subject_s']:.1f} s)")

    t0 = time.perf_counter()
    avatar_cfg = adapt_lib.default_avatar_config("small", image_size, uv_resolution)     # as `ggtalker adapt`
    priors_dir = None
    bundled = os.path.join(priors_lib.BUNDLED, priors_lib.WEIGHTS)
    if not os.path.exists(bundled) or not priors_lib.same_networks(priors_lib.read_prior_config(priors_lib.BUNDLED)[0],
                                                                  avatar_cfg.prior):
        from ggtalker_jax.train import ev_prior
        priors_dir = os.path.join(out_dir, "priors")
        if not os.path.exists(os.path.join(priors_dir, priors_lib.WEIGHTS)):
            ev_prior.train_small_priors(priors_dir, [subject], avatar_cfg, num_steps=prior_steps,
                                        progress=progress)
        src = priors_dir
    else:
        src = "bundled"
    times["priors_s"] = time.perf_counter() - t0
    print(f"[2/4] priors: {src} ({times['priors_s']:.1f} s)")

    t0 = time.perf_counter()
    workdir = os.path.join(out_dir, "workdir")
    stages = adapt_lib.small_schedule(steps_per_stage)
    adapt_lib.adapt(subject, workdir, priors_dir, stages, adapt_lib.AdaptConfig(), avatar_config=avatar_cfg,
                    progress=progress)
    times["adapt_s"] = time.perf_counter() - t0
    steps = "+".join(str(s.steps) for s in stages)
    print(f"[3/4] adapted (5 stages, {steps} steps): {workdir} ({times['adapt_s']:.1f} s)")

    t0 = time.perf_counter()
    wav, sr = default_subject.default_driving_audio(seconds=min(seconds, 6.0), seed=seed + 1)
    driving = os.path.join(out_dir, "driving.wav")
    audio_io.write_wav(driving, wav, sr)
    video = os.path.join(out_dir, "demo.mp4")
    summary = render_video(workdir, driving, video, RenderOptions(), progress=progress)
    times["render_s"] = time.perf_counter() - t0
    print(f"[4/4] rendered {summary['frames']} frames ({times['render_s']:.1f} s)")
    return {"video": os.path.abspath(video), "workdir": os.path.abspath(workdir), "times": times,
            "render": summary}

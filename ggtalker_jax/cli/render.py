"""`ggtalker render --workdir DIR --audio speech.wav --out out.mp4 [--pose video|static|FILE.npz]
[--blink_rate PER_MIN] [--gaze video|camera|FILE] [--diffusion_steps N] [--guidance G]
[--features FILE.npy --feature_fps 50] [--frames_dir DIR] [--novisible_watermark]`: an adapted subject says
new audio (`ggtalker_jax.infer.render_video`), with the head model it was adapted with (`--head` /
`--landmark_embedding` when its files moved). Silent audio, or long pauses, render a resting mouth."""
from __future__ import annotations

from ggtalker_jax.cli import flags as cli_flags


def define_flags():
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "adapted subject (from `ggtalker adapt` or `ggtalker demo`)", flag_values=fv)
    flags.DEFINE_string("audio", None, "driving speech: wav/mp3/m4a/..., any sample rate, mono or stereo",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "output mp4", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace --out when it exists", flag_values=fv)
    flags.DEFINE_string("data", None, "the prepared dataset the subject was adapted on, when it moved",
                        flag_values=fv)
    flags.DEFINE_string("pose", "video", "head pose: video | static | FILE.npz (global_rot, translation [T,3])",
                        flag_values=fv)
    flags.DEFINE_float("blink_rate", None, "blinks per minute, 0-120 (default: eye motion from the video)",
                       flag_values=fv)
    flags.DEFINE_string("gaze", "video", "eye direction: video (the subject's tracked gaze) | camera (look into "
                        "the camera) | FILE (.npz with eye_pose [T, 6] left/right axis-angle in radians, or [T, 3] "
                        "for both eyes)", flag_values=fv)
    from ggtalker_jax.infer import DEFAULT_DIFFUSION_STEPS, DEFAULT_GUIDANCE

    flags.DEFINE_integer("diffusion_steps", DEFAULT_DIFFUSION_STEPS, "DDIM steps of the A2E sampler",
                         flag_values=fv)
    flags.DEFINE_alias("steps", "diffusion_steps", flag_values=fv)
    flags.DEFINE_float("guidance", DEFAULT_GUIDANCE, "classifier-free guidance of the A2E (1 = the conditional "
                       "model alone; larger follows the audio more strongly)", flag_values=fv)
    flags.DEFINE_string("features", None, "precomputed audio features of --audio (.npy [S, D]); needed when the "
                        "avatar's A2E reads external features (e.g. HuBERT), refused for log-mel avatars",
                        flag_values=fv)
    flags.DEFINE_float("feature_fps", 50.0, "rows per second of --features", flag_values=fv)
    flags.DEFINE_boolean("rest_in_pauses", True, "close and relax the mouth in long pauses and silence",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "frames rendered per batch", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "sampler seed", flag_values=fv)
    flags.DEFINE_integer("output_size", None, "mp4 frame size (default and minimum 512: the watermark needs it to "
                         "survive re-encoding)", flag_values=fv)
    flags.DEFINE_string("frames_dir", None, "also write the frames as PNG here", flag_values=fv)
    flags.DEFINE_bool("visible_watermark", True, "draw the visible 'AI-generated' mark (turning it off with "
                      "--novisible_watermark is recorded in the invisible watermark)", flag_values=fv)
    flags.DEFINE_boolean("progress", True, "show progress bars", flag_values=fv)
    cli_flags.define_head_model_flags(fv)
    return fv


def main(argv: list[str]) -> int:
    fv = define_flags()
    cli_flags.no_positional(cli_flags.parse_flags(fv, argv))
    cli_flags.require(fv, "workdir", "audio", "out")
    cli_flags.existing_file("audio", fv.audio, "audio file")
    cli_flags.writable_output_file("out", fv.out, fv.overwrite, inputs=(fv.audio, fv.pose, fv.gaze))
    cli_flags.head_model_files(fv)
    if fv.frames_dir:
        cli_flags.writable_output_dir("frames_dir", fv.frames_dir)

    from ggtalker_jax.infer import RECORDED_POSES, RenderOptions, load_gaze, load_pose_file, render_video

    if fv.features:
        cli_flags.existing_file("features", fv.features, ".npy feature file")
    opts = RenderOptions(pose=fv.pose, blink_rate=fv.blink_rate, num_diffusion_steps=fv.diffusion_steps,
                         guidance=fv.guidance, batch_size=fv.batch_size, seed=fv.seed, output_size=fv.output_size,
                         visible_watermark=fv.visible_watermark, features=fv.features, feature_fps=fv.feature_fps,
                         rest_in_pauses=fv.rest_in_pauses, gaze=fv.gaze)
    if fv.pose not in RECORDED_POSES:
        load_pose_file(fv.pose)                            # a bad pose file fails now, before any work
    if fv.gaze not in ("video", "camera"):
        load_gaze(fv.gaze, 1)                              # so does a bad gaze file
    summary = render_video(fv.workdir, fv.audio, fv.out, opts, fv.frames_dir, progress=fv.progress,
                           data_dir=fv.data, head=fv.head, landmark_embedding=fv.landmark_embedding)
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"rendered {summary['frames']} frames ({summary['seconds']:.2f} s) at {summary['render_fps']:.1f} fps "
          f"(A2E {summary['a2e_s']:.1f} s)")
    print(f"video: {summary['out']}")
    return 0

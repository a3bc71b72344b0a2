"""`ggtalker eval --workdir ADAPTED_DIR --out DIR [--cross_id_audio a.wav,b.wav] [--cross_language_audio ...]`:
the field's evaluation protocols (`ggtalker_jax.eval.protocol.evaluate`) -> metrics.json, report.md, plots."""
from __future__ import annotations

import os

from ggtalker_jax.cli import flags as cli_flags


def define_flags():
    from absl import flags

    from ggtalker_jax.eval.protocol import MOUTH_SOURCES

    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "adapted subject directory", flag_values=fv)
    flags.DEFINE_string("out", None, "report directory", flag_values=fv)
    flags.DEFINE_string("data", None, "the prepared dataset the subject was adapted on, when it moved",
                        flag_values=fv)
    flags.DEFINE_list("cross_id_audio", [], "other speakers' audio files", flag_values=fv)
    flags.DEFINE_list("cross_language_audio", [], "audio in other languages", flag_values=fv)
    flags.DEFINE_string("lpips_weights", None, "LPIPS weights .npz (see ggtalker_jax/eval/lpips.py); never "
                        "downloaded", flag_values=fv)
    flags.DEFINE_integer("max_test_frames", None, "cap the number of test frames", flag_values=fv)
    flags.DEFINE_enum("mouth_source", "auto", list(MOUTH_SOURCES), "mouth opening of the renders from MediaPipe, "
                      "from the head model's lip landmarks (deterministic), or auto (MediaPipe when it finds "
                      "the face in >= 80% of frames)", flag_values=fv)
    cli_flags.define_head_model_flags(fv)
    return fv


def main(argv: list[str]) -> int:
    fv = define_flags()
    cli_flags.no_positional(cli_flags.parse_flags(fv, argv))
    cli_flags.require(fv, "workdir", "out")
    for path in (*fv.cross_id_audio, *fv.cross_language_audio):
        cli_flags.existing_file("cross_id_audio/--cross_language_audio", path, "audio file")
    cli_flags.existing_file("lpips_weights", fv.lpips_weights, ".npz weights file")
    cli_flags.positive("max_test_frames", fv.max_test_frames, 2, inclusive=True, integer=True)
    cli_flags.writable_output_dir("out", fv.out)
    cli_flags.head_model_files(fv)

    from ggtalker_jax.eval.protocol import evaluate

    r = evaluate(fv.workdir, fv.out, fv.cross_id_audio, fv.cross_language_audio, fv.lpips_weights,
                 fv.max_test_frames, fv.mouth_source, data_dir=fv.data,
                 head=fv.head, landmark_embedding=fv.landmark_embedding)
    s = r["self_reconstruction"]
    print(f"PSNR {s['psnr']:.2f}  SSIM {s['ssim']:.4f}  LMD {s['lmd']:.3f}  sync offset {s['sync_offset_frames']} "
          f"conf {s['sync_confidence']:.3f}  FPS {s['fps']:.1f}")
    print(f"report: {os.path.join(os.path.abspath(fv.out), 'report.md')}")
    return 0

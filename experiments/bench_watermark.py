"""Watermark benchmark on real clips: robustness to re-encodes, rescales, crops and brightness at every
output size, invisibility (PSNR), forgery rejection, concatenated clips and false positives on unmarked
clips. Prints a table and writes JSON.

    python experiments/bench_watermark.py --data_dir /work/shared/data --sizes 256,512 --frames 50 \
        --out /tmp/bench_watermark.json

Each clip's first `--frames` frames are resized to size x size (the product writes square frames, at
least 256 px), marked as `ggtalker render` does (visible overlay + invisible record), attacked, and
detected with the record as the mp4 comment would give it. "ok" = status valid.

Measured (`--sizes 256,512 --frames 50`, 2 CPU cores shared with other jobs; clips german_anchor_20s,
retalking_face2_5s, retalking_face3_5s; valid detections of 3): "before" = plain band weights (mark
format 2, this session's run at 256 px; 512 px as last recorded in issue #13), "after" = host-clipped
carrier weights (format 3, `InvisibleConfig.host_clip` 2.0), per-(block, band) survival gains.

    attack                256 before  256 after  512 before  512 after
    none, crf18/23/28          3/3       3/3        3/3         3/3
    crf35                      1/3       1/3        3/3         3/3
    0.5x+crf23                 3/3       3/3        3/3         3/3
    0.5x+crf28                 1/3       1/3        3/3         3/3   (256: only retalking_face2 decodes)
    crop78 tl / tr / br        3/3       3/3        3/3         3/3
    crop78_bl+crf18            2/3       3/3        3/3         3/3   (face3 fixed)
    crop90_centre, bright+-20  3/3       3/3        3/3         3/3
    PSNR (dB)            40.52-40.58  40.51-40.58  40.5-40.6  40.60
    forgeries rejected         3/3       3/3        3/3         3/3   (with and without the record)
    concatenations             3/3       3/3        3/3         3/3   (two segments each)
    false positives on unmarked clips: before 0/26 (this run, 256 px only; 0/52 recorded), after 0/52

Confidence after the change is higher throughout (e.g. crop78_bl at 256: 1.20 / 1.54 / - before,
2.7 / 2.8 / 1.8 after). Still failing: 0.5x+crf28 and crf35 at 256 px on german_anchor and
retalking_face3 (see the known limit in ggtalker_jax/watermark/invisible.py).
"""
import json
import pathlib
import time

import cv2
import numpy as np
from absl import app, flags

from ggtalker_jax import media
from ggtalker_jax.watermark import (HmacSigner, InvisibleConfig, Payload, attacks, coding, detect_frames,
                                    draw_visible_mark, invisible, mark_frames)
from ggtalker_jax.watermark.payload import FRAME_MESSAGE_BYTES

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "/work/shared/data", "folder with the sample clips")
flags.DEFINE_list("clips", ["german_anchor_20s.mp4", "retalking_face2_5s.mp4", "retalking_face3_5s.mp4"],
                  "clips to mark (talking heads, as the product renders)")
flags.DEFINE_list("clean_clips", ["german_anchor_20s.mp4", "retalking_face1_6s.mp4", "retalking_face2_5s.mp4",
                                  "retalking_face3_5s.mp4", "latentsync_fullbody_10s.mp4"],
                  "unmarked clips scanned for false positives")
flags.DEFINE_list("sizes", ["256", "512"], "output sizes (square) to test")
flags.DEFINE_integer("frames", 50, "frames per clip (2 s at 25 fps)")
flags.DEFINE_integer("fp_seconds", 6, "seconds of each clean clip scanned for false positives")
flags.DEFINE_float("min_psnr", InvisibleConfig().min_psnr_db, "InvisibleConfig.min_psnr_db")
flags.DEFINE_string("out", "/tmp/bench_watermark.json", "JSON output path")

KEY = HmacSigner(b"bench-watermark-key-0123456789ab")


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def load(path, frames, size=None, start=0):
    clip = np.stack(list(media.read_video(path, fps=25, max_frames=start + frames)))[start:]
    if size is None:
        return clip
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in clip])


ATTACKS = {
    "none": lambda x: x,
    "crf18": lambda x: attacks.h264(x, 18),
    "crf23": lambda x: attacks.h264(x, 23),
    "crf28": lambda x: attacks.h264(x, 28),
    "crf35": lambda x: attacks.h264(x, 35),
    "0.5x+crf23": attacks.Reencode(0.5, 23),
    "0.5x+crf28": attacks.Reencode(0.5, 28),
    "crop78_tl+crf18": lambda x: attacks.h264(attacks.corner_crop(x, 0.78, "top-left"), 18),
    "crop78_tr+crf18": lambda x: attacks.h264(attacks.corner_crop(x, 0.78, "top-right"), 18),
    "crop78_bl+crf18": lambda x: attacks.h264(attacks.corner_crop(x, 0.78, "bottom-left"), 18),
    "crop78_br+crf18": lambda x: attacks.h264(attacks.corner_crop(x, 0.78, "bottom-right"), 18),
    "crop90_centre+crf18": lambda x: attacks.h264(x[:, int(0.05 * x.shape[1]):int(0.05 * x.shape[1]) + int(0.9 * x.shape[1]) // 2 * 2,
                                                    int(0.05 * x.shape[2]):int(0.05 * x.shape[2]) + int(0.9 * x.shape[2]) // 2 * 2], 18),
    "bright+20+crf18": lambda x: attacks.h264(attacks.brightness(x, 20), 18),
    "bright-20+crf18": lambda x: attacks.h264(attacks.brightness(x, -20), 18),
}


def main(_):
    data = pathlib.Path(FLAGS.data_dir)
    config = InvisibleConfig(min_psnr_db=FLAGS.min_psnr)
    clips = [c for c in FLAGS.clips if (data / c).is_file()]
    rows, quality, forgeries, concatenations = [], [], [], []
    for size in (int(s) for s in FLAGS.sizes):
        marked_clips = {}
        for clip in clips:
            clean = load(data / clip, FLAGS.frames, size)
            payload = Payload.create(clip, None, visible_mark=True)
            t0 = time.perf_counter()
            marked, record = mark_frames(clean, payload, KEY, config=config)
            embed_s = time.perf_counter() - t0
            marked_clips[clip] = (clean, marked, record)
            quality.append(dict(clip=clip, size=size, psnr_db=round(psnr(marked, draw_visible_mark(clean)), 2),
                                embed_s=round(embed_s, 1)))
            for name, attack in ATTACKS.items():
                attacked = attack(marked)
                t0 = time.perf_counter()
                result = detect_frames(attacked, KEY, record, config)
                rows.append(dict(clip=clip, size=size, attack=name, status=result.status, ok=result.valid,
                                 confidence=round(result.confidence, 2), raw_ber=round(result.bit_error_rate, 3),
                                 detect_s=round(time.perf_counter() - t0, 1), reason=result.reason[:90]))
                print(f"{clip[:22]:22s} {size:4d} {name:20s} {result.status:16s} conf {result.confidence:5.2f} "
                      f"{rows[-1]['detect_s']:5.1f}s {rows[-1]['reason']}", flush=True)
        names = list(marked_clips)
        for a, c in zip(names, names[1:] + names[:1]):  # forge a's mark + record onto c's real frames
            _, marked_a, record_a = marked_clips[a]
            message = invisible.detect_codeword(marked_a, FRAME_MESSAGE_BYTES, config).message
            real = marked_clips[c][0]
            forged = invisible.embed_codeword(real, coding.encode_codeword(message), config)
            with_record = detect_frames(forged, KEY, record_a, config).status
            frames_only = detect_frames(forged, KEY, None, config).status
            forgeries.append(dict(size=size, mark_of=a, onto=c, with_record=with_record, frames_only=frames_only))
            _, marked_c, _ = marked_clips[c]
            joined = attacks.h264(np.concatenate([marked_a, marked_c]), 18)
            result = detect_frames(joined, KEY, record_a, config)
            concatenations.append(dict(size=size, clips=[a, c], status=result.status,
                                       segments=[[s.start, s.end, s.status] for s in result.segments]))
    false_positives, trials = [], 0
    for clip in FLAGS.clean_clips:
        if not (data / clip).is_file():
            continue
        clean = load(data / clip, 25 * FLAGS.fp_seconds)
        for start in range(0, len(clean) - FLAGS.frames + 1, FLAGS.frames):
            window = clean[start:start + FLAGS.frames]
            side = min(window.shape[1:3])
            for size in (int(s) for s in FLAGS.sizes):
                square = window[:, :side, :side]
                for frames in (np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in square]),
                               window):  # square at the output size, and the clip as it is
                    trials += 1
                    status = detect_frames(frames, KEY, None, config).status
                    if status != "no_mark":
                        false_positives.append(dict(clip=clip, start=start, shape=list(frames.shape), status=status))

    print("\ninvisibility (PSNR of the invisible mark, dB) and embed time:")
    for q in quality:
        print(f"  {q['clip']:28s} {q['size']:4d} px  PSNR {q['psnr_db']:6.2f}  embed {q['embed_s']:5.1f} s")
    print("\nvalid detections per attack (clips):")
    header = f"  {'attack':22s}" + "".join(f"{s + ' px':>10s}" for s in FLAGS.sizes)
    print(header)
    for name in ATTACKS:
        cells = []
        for size in (int(s) for s in FLAGS.sizes):
            hits = [r["ok"] for r in rows if r["attack"] == name and r["size"] == size]
            cells.append(f"{sum(hits)}/{len(hits)}")
        print(f"  {name:22s}" + "".join(f"{c:>10s}" for c in cells))
    print("\nforgeries (a's in-frame message re-embedded into c's real frames):")
    for f in forgeries:
        print(f"  {f['size']:4d} px {f['mark_of'][:20]:20s} -> {f['onto'][:20]:20s} with record: "
              f"{f['with_record']:16s} frames only: {f['frames_only']}")
    print("\nconcatenated renders (all frames):")
    for c in concatenations:
        print(f"  {c['size']:4d} px {c['clips'][0][:20]} + {c['clips'][1][:20]}: {c['status']} {c['segments']}")
    print(f"\nfalse positives on unmarked real clips: {len(false_positives)}/{trials} {false_positives or ''}")
    summary = dict(sizes=[int(s) for s in FLAGS.sizes], frames=FLAGS.frames, min_psnr_db=config.min_psnr_db,
                   quality=quality, rows=rows, forgeries=forgeries, concatenations=concatenations,
                   false_positive_trials=trials, false_positives=false_positives)
    pathlib.Path(FLAGS.out).write_text(json.dumps(summary, indent=2))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)

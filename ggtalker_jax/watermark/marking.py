"""Public watermark API: mark frames (visible overlay + invisible signed record bound to the content),
detect and verify marks in frames and mp4 files.

Verification of one decoded piece of a clip (a segment), in order:
  1. the frame tag verifies with the key (HMAC: from the frames alone; ed25519: needs the metadata
     record), and the metadata record, when it belongs to these frames, has a valid signature;
     otherwise status "bad_signature";
  2. the frames' perceptual hash matches the signed one (all bits of the record's hash when the record
     belongs to these frames, else the 32 in-frame bits); otherwise "content_mismatch";
  3. a record that claims a visible overlay shows it where it was drawn (unless a crop removed that
     corner); otherwise "content_mismatch".
A clip is "valid" when every segment is; "no_mark" when nothing decodes.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from ggtalker_jax import media
from ggtalker_jax.watermark import coding, content, invisible
from ggtalker_jax.watermark.keys import Signer
from ggtalker_jax.watermark.payload import FRAME_MESSAGE_BYTES, Payload, SignedRecord
from ggtalker_jax.watermark.visible import (VisibleMarkConfig, draw_visible_mark, mark_box, overlay_layers,
                                            overlay_score)

VALID, NO_MARK, BAD_SIGNATURE, CONTENT_MISMATCH = "valid", "no_mark", "bad_signature", "content_mismatch"
VISIBLE_MIN_SCORE = 0.4  # overlay_score: <= 0.25 without the overlay, >= 0.5 with it (sample clips)


@dataclasses.dataclass(frozen=True)
class SegmentResult:
    """One decoded piece: frames [start, end) of the frames read.

    status: VALID, BAD_SIGNATURE or CONTENT_MISMATCH; reason: one line ("" when valid).
    frame_hash: hex of the 32-bit in-frame content hash. record_matched: the metadata record was made
    for these frames. content: the perceptual-hash comparison (None when not reached).
    visible: {"claimed": bool, "checked": bool, "found": bool | None, "score": float | None} when the
    matched record claims an overlay, else None.
    """
    start: int
    end: int
    status: str
    reason: str
    frame_hash: str
    record_matched: bool
    content: content.ContentMatch | None
    visible: dict | None
    bit_error_rate: float
    confidence: float

    def to_json_dict(self) -> dict:
        return {"frames": [self.start, self.end], "status": self.status, "reason": self.reason,
                "content_hash": self.frame_hash, "record_matched": self.record_matched,
                "content": self.content.to_json_dict() if self.content else None, "visible_mark": self.visible,
                "bit_error_rate": round(self.bit_error_rate, 4), "confidence": round(self.confidence, 2)}


@dataclasses.dataclass(frozen=True)
class DetectionResult:
    """status: VALID / NO_MARK / BAD_SIGNATURE / CONTENT_MISMATCH for the whole clip (the worst segment).
    payload: the metadata record's payload when it belongs to a segment and everything verified, else None.
    segments: the decoded pieces in frame order. bit_error_rate: per-frame raw (pre-aggregation) bit error
    rate; confidence: SNR of the aggregated bits (whole clip). alignment: crop alignment used. mark_format:
    the detector weighting that decoded (`invisible.mark_format`: 3 = this version's, 2 = the band weighting
    earlier versions designed for, tried when 3 finds nothing), None with no mark."""
    status: str
    reason: str
    payload: Payload | None
    segments: tuple[SegmentResult, ...]
    bit_error_rate: float
    confidence: float
    signature_alg: str = ""
    frames: int = 0
    alignment: invisible.Alignment = invisible.IDENTITY
    mark_format: int | None = None  # weighting that decoded (`invisible.mark_format`); None: no mark

    @property
    def present(self) -> bool:
        return self.status != NO_MARK

    @property
    def valid(self) -> bool:
        return self.status == VALID

    def to_json_dict(self) -> dict:
        sy, sx, oy, ox = self.alignment
        return {"present": self.present, "valid": self.valid, "status": self.status, "reason": self.reason,
                "signature_alg": self.signature_alg, "frames_read": self.frames, "mark_format": self.mark_format,
                "bit_error_rate": round(self.bit_error_rate, 4), "confidence": round(self.confidence, 2),
                "crop": None if self.alignment == invisible.IDENTITY else
                {"kept_fraction": [sy, sx], "offset_working_px": [oy, ox]},
                "segments": [s.to_json_dict() for s in self.segments],
                "payload": self.payload.to_dict() if self.payload else None}


def _design(shown: np.ndarray, payload: Payload, key: Signer, visible: bool, visible_config: VisibleMarkConfig,
            config: invisible.InvisibleConfig) -> tuple[np.ndarray, SignedRecord]:
    """(invisible pattern, signed record) from the first frames [t, H, W, 3] as shown (overlay drawn)."""
    design = shown[:config.design_frames]
    mean_luma = np.mean([invisible.luma(f) for f in design], axis=0)
    bits = content.content_features(mean_luma, config.work_size).bits()
    payload = dataclasses.replace(payload, content_hash=content.bits_to_hex(bits), frame_size=shown.shape[1:3],
                                  visible_overlay=visible_config.to_record() if visible else ())
    record = key.sign(payload)
    frame_hash = content.frame_hash(bits)
    codeword = coding.encode_codeword(frame_hash + key.frame_tag(frame_hash, record))
    return invisible.design_pattern(design, codeword, config), record


def _check_visible_choice(payload: Payload, visible: bool) -> None:
    if payload.visible_mark != visible:
        raise ValueError(f"visible={visible} but payload.visible_mark={payload.visible_mark}; "
                         f"build the payload with visible_mark={visible} so the choice is recorded")


def mark_frames(frames: np.ndarray, payload: Payload, key: Signer, visible: bool = True,
                visible_config: VisibleMarkConfig = VisibleMarkConfig(),
                config: invisible.InvisibleConfig = invisible.InvisibleConfig()) -> tuple[np.ndarray, SignedRecord]:
    """Watermark frames [T, H, W, 3] uint8 -> (marked frames, same shape; the signed record).

    The record is signed here because it holds the frames' content hash, frame size and overlay
    placement; write `record.to_metadata()` into the mp4 comment. `visible=False` is only accepted when
    the payload records it (`payload.visible_mark` is False), so a video without the overlay says so.
    The content hash and the invisible pattern come from the first `config.design_frames` frames
    (`StreamMarker` marks a stream of frames the same way with bounded memory).
    """
    frames = invisible.check_frames(frames)
    _check_visible_choice(payload, visible)
    shown = draw_visible_mark(frames, visible_config) if visible else frames
    pattern, record = _design(shown, payload, key, visible, visible_config, config)
    return invisible.apply_pattern(shown, pattern), record


class StreamMarker:
    """`mark_frames` for a stream: feed batches [b, H, W, 3] uint8 in order, get marked frames back. The
    first `config.design_frames` frames are held until the pattern and record are designed from them
    (so `feed` may return an empty batch), then every frame is marked as it comes; `finish()` returns
    what is still held, and `record` is the signed record (known once the design frames were seen, or after
    `finish`). Marks exactly what `mark_frames` marks on the concatenated frames."""

    def __init__(self, payload: Payload, key: Signer, visible: bool = True,
                 visible_config: VisibleMarkConfig = VisibleMarkConfig(),
                 config: invisible.InvisibleConfig = invisible.InvisibleConfig()):
        _check_visible_choice(payload, visible)
        self._args = (payload, key, visible, visible_config, config)
        self._held: list[np.ndarray] = []
        self._pattern: np.ndarray | None = None
        self._frame_shape: tuple[int, ...] = (0, 0, 3)
        self.record: SignedRecord | None = None

    def _shown(self, frames: np.ndarray) -> np.ndarray:
        _, _, visible, visible_config, _ = self._args
        frames = invisible.check_frames(frames)
        self._frame_shape = frames.shape[1:]
        return draw_visible_mark(frames, visible_config) if visible else frames

    def _design_now(self) -> np.ndarray:
        shown = np.concatenate(self._held)
        self._held = []
        self._pattern, self.record = _design(shown, *self._args)
        return invisible.apply_pattern(shown, self._pattern)

    def feed(self, frames: np.ndarray) -> np.ndarray:
        shown = self._shown(frames)
        if self._pattern is not None:
            return invisible.apply_pattern(shown, self._pattern)
        self._held.append(shown)
        if sum(len(h) for h in self._held) >= self._args[4].design_frames:
            return self._design_now()
        return shown[:0]

    def finish(self) -> np.ndarray:
        if self._pattern is None and self._held:
            return self._design_now()
        return np.zeros((0, *self._frame_shape), np.uint8)


def _record_frame_hash(record: SignedRecord) -> bytes | None:
    try:
        return content.frame_hash(content.hex_to_bits(record.payload.content_hash))
    except ValueError:
        return None


def _check_visible(frames: np.ndarray, payload: Payload, alignment, work_size: int) -> dict:
    """Is the overlay the payload describes visible in frames [T, h, w, 3] observed at `alignment`?"""
    h0, w0 = payload.frame_size
    overlay = VisibleMarkConfig.from_record(payload.visible_overlay)
    box_alpha, text_alpha = overlay_layers(h0, w0, overlay)
    x0, y0, x1, y1, _, _ = mark_box(h0, w0, overlay)
    box_mask = np.zeros((h0, w0), np.float32)
    box_mask[y0:y1, x0:x1] = 1.0
    canvas_box = invisible.resize(box_mask, work_size, work_size) > 0.5
    _, coverage = invisible.to_canvas(np.zeros(frames.shape[1:3], np.float32), work_size, alignment)
    if not canvas_box.any() or coverage[canvas_box].min() < 1.0:
        return {"claimed": True, "checked": False, "found": None, "score": None,
                "note": "the overlay's corner is outside the observed (cropped) frames"}
    h, w = frames.shape[1:3]
    expected_text = invisible.from_canvas(invisible.resize(text_alpha, work_size, work_size), h, w, alignment)
    expected_box = invisible.from_canvas(invisible.resize(box_alpha, work_size, work_size), h, w, alignment)
    step = max(1, len(frames) // 25)
    median = np.median(np.stack([invisible.luma(f) for f in frames[::step]]), axis=0)
    score = overlay_score(median, expected_text, expected_box)
    if np.isnan(score):
        return {"claimed": True, "checked": False, "found": None, "score": None,
                "note": "the frames are too small to check the overlay"}
    return {"claimed": True, "checked": True, "found": bool(score >= VISIBLE_MIN_SCORE), "score": round(score, 3)}


def _verify_segment(frames: np.ndarray, segment: invisible.CodewordSegment, key: Signer,
                    record: SignedRecord | None, alignment, config: invisible.InvisibleConfig) -> SegmentResult:
    frame_hash, tag = segment.message[:4], segment.message[4:]
    matched = record is not None and _record_frame_hash(record) == frame_hash
    base = dict(start=segment.start, end=segment.end, frame_hash=frame_hash.hex(), record_matched=matched,
                bit_error_rate=segment.raw_bit_error_rate, confidence=segment.confidence)
    if matched and not key.verify(record):
        return SegmentResult(status=BAD_SIGNATURE, reason=f"the metadata record's signature does not verify "
                             f"with this {key.alg} key", content=None, visible=None, **base)
    if not key.verify_frame_tag(frame_hash, tag, record if matched else None):
        why = ("the frame tag does not verify with this key" if matched or key.alg == "hmac-sha256"
               else "ed25519 needs the metadata record to verify and it is missing or made for other frames")
        return SegmentResult(status=BAD_SIGNATURE, reason=why, content=None, visible=None, **base)
    seen = frames[segment.start:segment.end]
    mean_luma = np.mean([invisible.luma(f) for f in seen], axis=0)
    features = content.content_features(mean_luma, config.work_size, alignment)
    if matched:
        match = content.compare(features, content.hex_to_bits(record.payload.content_hash))
    else:
        match = content.compare(features, np.unpackbits(np.frombuffer(frame_hash, np.uint8)), content.FRAME_PAIRS)
    if not match.matches:
        why = (f"the frames do not match the signed content hash ({match.mismatches} of {match.compared} "
               f"compared bits differ): the mark was copied from other frames" if match.compared >= 8 else
               f"too little of the picture is left to check the signed content hash ({match.compared} bits)")
        return SegmentResult(status=CONTENT_MISMATCH, reason=why, content=match, visible=None, **base)
    visible = None
    if matched and record.payload.visible_mark and record.payload.frame_size and record.payload.visible_overlay:
        visible = _check_visible(seen, record.payload, alignment, config.work_size)
        if visible["checked"] and not visible["found"]:
            return SegmentResult(status=CONTENT_MISMATCH, reason="the record says a visible mark was drawn, but "
                                 "the frames do not show it", content=match, visible=visible, **base)
    elif matched:
        visible = {"claimed": bool(record.payload.visible_mark), "checked": False, "found": None, "score": None}
    return SegmentResult(status=VALID, reason="", content=match, visible=visible, **base)


def detect_frames(frames: np.ndarray, key: Signer, record: SignedRecord | None = None,
                  config: invisible.InvisibleConfig = invisible.InvisibleConfig()) -> DetectionResult:
    """Blind detection and verification in [T, H, W, 3] uint8 frames; `record` is the metadata record
    when there is one (`SignedRecord.from_metadata` of the mp4 comment)."""
    frames = invisible.check_frames(frames)
    found = invisible.detect_codeword(frames, FRAME_MESSAGE_BYTES, config)
    common = dict(bit_error_rate=found.raw_bit_error_rate, confidence=found.confidence, signature_alg=key.alg,
                  frames=len(frames), alignment=found.alignment)
    if not found.segments:
        return DetectionResult(NO_MARK, "no ggtalker watermark found in the frames", None, (), **common)
    common["mark_format"] = found.mark_format
    segments = tuple(_verify_segment(frames, s, key, record, found.alignment, config) for s in found.segments)
    for status in (BAD_SIGNATURE, CONTENT_MISMATCH):
        bad = [s for s in segments if s.status == status]
        if bad:
            return DetectionResult(status, f"frames {bad[0].start}-{bad[0].end}: {bad[0].reason}", None,
                                   segments, **common)
    matched = any(s.record_matched for s in segments)
    if record is not None and not matched:
        return DetectionResult(CONTENT_MISMATCH, "the metadata record was made for other frames (re-muxed or "
                               "edited metadata); the in-frame marks verify", None, segments, **common)
    reason = "" if matched else "valid in-frame marks; no metadata record (full payload unknown)"
    if len(segments) > 1:
        reason = (reason + "; " if reason else "") + f"{len(segments)} separately marked pieces"
    return DetectionResult(VALID, reason, record.payload if matched else None, segments, **common)


def mark_video(in_mp4: str | os.PathLike, out_mp4: str | os.PathLike, payload: Payload, key: Signer,
               visible: bool = True, crf: int = 18, visible_config: VisibleMarkConfig = VisibleMarkConfig(),
               config: invisible.InvisibleConfig = invisible.InvisibleConfig()) -> SignedRecord:
    """Watermark a video file. If `in_mp4` already carries a record that belongs to its frames, its
    digest is appended to the payload's chain (origin/modification tracking), whichever key signed it.
    Audio is copied (re-encoded as AAC); returns the signed record."""
    info = media.probe_video(in_mp4)
    frames = np.stack(list(media.read_video(in_mp4, fps=None)))
    try:
        prior = SignedRecord.from_metadata(info.comment)
    except ValueError:
        prior = None
    if prior is not None and prior.digest() not in payload.chain:
        detected = invisible.detect_codeword(frames, FRAME_MESSAGE_BYTES, config)
        prior_hash = _record_frame_hash(prior)
        if any(s.message[:4] == prior_hash for s in detected.segments):
            payload = dataclasses.replace(payload, chain=(*prior.payload.chain, prior.digest(), *payload.chain))
    marked, record = mark_frames(frames, payload, key, visible=visible, visible_config=visible_config, config=config)
    media.write_mp4(out_mp4, marked, fps=info.fps, audio=in_mp4 if info.has_audio else None, crf=crf,
                    comment=record.to_metadata())
    return record


def detect_video(path: str | os.PathLike, key: Signer, max_frames: int | None = 75,
                 config: invisible.InvisibleConfig = invisible.InvisibleConfig()) -> DetectionResult:
    """Detect in an mp4 (first `max_frames` frames, all when None) using its metadata record if any."""
    info = media.probe_video(path)
    frames = np.stack(list(media.read_video(path, fps=None, max_frames=max_frames)))
    try:
        record = SignedRecord.from_metadata(info.comment)
    except ValueError:
        record = None
    return detect_frames(frames, key, record, config)

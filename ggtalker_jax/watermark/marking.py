"""Public watermark API: sign a payload, draw the visible mark, embed / detect the invisible record in
frames and mp4 files."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from ggtalker_jax.watermark import _video_io, coding, invisible
from ggtalker_jax.watermark.keys import Signer
from ggtalker_jax.watermark.payload import FRAME_MESSAGE_BYTES, Payload, SignedRecord
from ggtalker_jax.watermark.visible import VisibleMarkConfig, draw_visible_mark


@dataclasses.dataclass(frozen=True)
class DetectionResult:
    """present: a CRC-valid in-frame record was found. valid: its tag (and, when the metadata record is
    there, the record's hash and signature) verify with the key. payload: the full record from the
    metadata when it matches the frames, else None. record_id: hex 32-bit id in the frames.
    bit_error_rate: per-frame raw (pre-aggregation) bit error rate. confidence: aggregated SNR per bit.
    reason: one line saying why something is not present/valid ("" when valid)."""
    present: bool
    valid: bool
    payload: Payload | None
    bit_error_rate: float
    confidence: float
    record_id: str = ""
    signature_alg: str = ""
    reason: str = ""

    def to_json_dict(self) -> dict:
        return {"present": self.present, "valid": self.valid, "record_id": self.record_id,
                "signature_alg": self.signature_alg, "bit_error_rate": round(self.bit_error_rate, 4),
                "confidence": round(self.confidence, 2), "reason": self.reason,
                "payload": self.payload.to_dict() if self.payload else None}


def frame_message(record: SignedRecord, key: Signer) -> bytes:
    """8-byte in-frame message: 4-byte record id + 4-byte frame tag."""
    return record.payload.record_id() + key.frame_tag(record)


def embed_frames(frames: np.ndarray, payload: Payload | SignedRecord, key: Signer, visible: bool = True,
                 strength: float | None = None, visible_config: VisibleMarkConfig = VisibleMarkConfig(),
                 config: invisible.InvisibleConfig = invisible.InvisibleConfig()) -> np.ndarray:
    """Watermark [T, H, W, 3] uint8 frames; returns the same shape.

    `visible=False` is only accepted when the payload records it (`payload.visible_mark` is False), so
    a video without the overlay always says so in its signed record.
    """
    record = payload if isinstance(payload, SignedRecord) else key.sign(payload)
    if record.payload.visible_mark != visible:
        raise ValueError(f"visible={visible} but payload.visible_mark={record.payload.visible_mark}; "
                         f"build the payload with visible_mark={visible} so the choice is recorded")
    if strength is not None:
        config = dataclasses.replace(config, strength=strength)
    marked = draw_visible_mark(frames, visible_config) if visible else np.asarray(frames)
    return invisible.embed_codeword(marked, coding.encode_codeword(frame_message(record, key)), config)


def detect_frames(frames: np.ndarray, key: Signer, record: SignedRecord | None = None,
                  config: invisible.InvisibleConfig = invisible.InvisibleConfig()) -> DetectionResult:
    """Blind detection in [T, H, W, 3] uint8 frames; `record` is the metadata record when available."""
    found = invisible.detect_codeword(frames, FRAME_MESSAGE_BYTES, config)
    common = dict(bit_error_rate=found.raw_bit_error_rate, confidence=found.confidence)
    if found.message is None:
        return DetectionResult(False, False, None, reason="no ggtalker watermark found in the frames", **common)
    record_id, tag = found.message[:4], found.message[4:]
    base = dict(record_id=record_id.hex(), signature_alg=key.alg, **common)
    if record is not None and record.payload.record_id() != record_id:
        return DetectionResult(True, False, None, reason="metadata record does not match the frames "
                               "(edited metadata or re-muxed from another video)", **base)
    if record is not None and not key.verify(record):
        return DetectionResult(True, False, None, reason=f"metadata record signature does not verify "
                               f"with this {key.alg} key", **base)
    if not key.verify_frame_tag(record_id, tag, record):
        why = ("frame tag does not verify with this key" if record is not None or key.alg == "hmac-sha256"
               else "ed25519 needs the metadata record to verify and it is missing")
        return DetectionResult(True, False, None, reason=why, **base)
    return DetectionResult(True, True, record.payload if record else None,
                           reason="" if record else "valid in-frame tag; full record missing from metadata",
                           **base)


def mark_video(in_mp4: str | os.PathLike, out_mp4: str | os.PathLike, payload: Payload, key: Signer,
               visible: bool = True, crf: int = 18, strength: float | None = None,
               visible_config: VisibleMarkConfig = VisibleMarkConfig()) -> SignedRecord:
    """Watermark a video file. If `in_mp4` already carries a valid record, its digest is appended to the
    payload's chain (origin/modification tracking). Audio is copied; returns the signed record."""
    frames, info = _video_io.read_video(in_mp4)
    prior = SignedRecord.from_metadata(info.comment) if info.comment else None
    if prior is not None and prior.digest() not in payload.chain:
        previous = detect_frames(frames, key)  # chain the prior record whenever the frames carry it,
        if previous.record_id == prior.payload.record_id().hex():  # even when signed by another key
            payload = dataclasses.replace(payload, chain=(*prior.payload.chain, prior.digest(), *payload.chain))
    record = key.sign(payload)
    marked = embed_frames(frames, record, key, visible=visible, strength=strength, visible_config=visible_config)
    _video_io.write_video(out_mp4, marked, info.fps, crf=crf, audio_from=in_mp4, comment=record.to_metadata())
    return record


def detect_video(path: str | os.PathLike, key: Signer, max_frames: int | None = 75) -> DetectionResult:
    """Detect in an mp4 (first `max_frames` frames, all when None) using its metadata record if any."""
    frames, info = _video_io.read_video(path, max_frames=max_frames)
    try:
        record = SignedRecord.from_metadata(info.comment)
    except ValueError:
        record = None
    return detect_frames(frames, key, record)

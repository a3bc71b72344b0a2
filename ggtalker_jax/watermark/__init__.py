"""ggtalker_jax.watermark: visible "AI-generated" overlay plus an invisible, signed record bound to the
frames' content.

    key = load_key(create=True)                        # HMAC (env var / ~/.config key file) or ed25519
    payload = Payload.create("subject-42", "speech.wav", visible_mark=True)
    marked, record = mark_frames(frames, payload, key) # [T, H, W, 3] uint8; record -> mp4 comment tag
    result = detect_frames(marked, key, record)        # DetectionResult(status, segments, payload, ...)
    mark_video("in.mp4", "out.mp4", payload, key); detect_video("out.mp4", load_key())
"""
from ggtalker_jax.watermark.invisible import InvisibleConfig
from ggtalker_jax.watermark.keys import Ed25519Signer, HmacSigner, KeyNotConfiguredError, Signer, load_key
from ggtalker_jax.watermark.marking import (BAD_SIGNATURE, CONTENT_MISMATCH, NO_MARK, VALID, DetectionResult,
                                            SegmentResult, StreamMarker, detect_frames, detect_video, mark_frames,
                                            mark_video)
from ggtalker_jax.watermark.payload import Payload, SignedRecord
from ggtalker_jax.watermark.visible import VisibleMarkConfig, draw_visible_mark

__all__ = ["BAD_SIGNATURE", "CONTENT_MISMATCH", "DetectionResult", "Ed25519Signer", "HmacSigner", "InvisibleConfig",
           "KeyNotConfiguredError", "NO_MARK", "Payload", "SegmentResult", "SignedRecord", "Signer", "StreamMarker", "VALID",
           "VisibleMarkConfig", "detect_frames", "detect_video", "draw_visible_mark", "load_key", "mark_frames",
           "mark_video"]

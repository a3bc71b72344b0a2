"""ggtalker_jax.watermark: visible "AI-generated" overlay plus an invisible, signed, robust record.

    key = load_key()                                   # HMAC (env var / ~/.config key file) or ed25519
    payload = Payload.create("subject-42", "speech.wav", visible_mark=True)
    marked = embed_frames(frames, payload, key)        # [T, H, W, 3] uint8
    result = detect_frames(marked, key)                # DetectionResult(present, valid, payload, ...)
    mark_video("in.mp4", "out.mp4", payload, key); detect_video("out.mp4", key)
"""
from ggtalker_jax.watermark.invisible import InvisibleConfig
from ggtalker_jax.watermark.keys import Ed25519Signer, HmacSigner, Signer, load_key
from ggtalker_jax.watermark.marking import (DetectionResult, detect_frames, detect_video, embed_frames,
                                            mark_video)
from ggtalker_jax.watermark.payload import Payload, SignedRecord
from ggtalker_jax.watermark.visible import VisibleMarkConfig, draw_visible_mark

__all__ = ["DetectionResult", "Ed25519Signer", "HmacSigner", "InvisibleConfig", "Payload", "SignedRecord",
           "Signer", "VisibleMarkConfig", "detect_frames", "detect_video", "draw_visible_mark",
           "embed_frames", "load_key", "mark_video"]

"""The watermark record: what was rendered, by what, from which audio, what it looks like, and what it
was edited from.

Two forms:
  * `Payload` -> canonical JSON (sorted keys, no spaces) -> `SignedRecord` (signature over that JSON),
    stored in full in the mp4 metadata (comment tag). The payload holds the content hash of the frames
    (`content.PAIRS` bits) and where the visible overlay was drawn, so the signature covers the pixels'
    coarse layout too: a record copied onto other frames no longer matches them.
  * the compact in-frame message (`FRAME_MESSAGE_BYTES` = 8 bytes = 64 bits): the 32-bit in-frame content
    hash (`content.frame_hash`, a subset of the payload's) and a 32-bit frame tag from the signer
    (`keys.Signer.frame_tag`, which covers that content hash).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import os

import ggtalker_jax

FRAME_MESSAGE_BYTES = 8
METADATA_PREFIX = "ggtalker-wm:v2:"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (e.g. the driving audio)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise FileNotFoundError(f"cannot hash {path!r}: {err}; pass an existing audio file") from err
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Payload:
    """What a watermark says about a video.

    subject_hash: hex SHA-256 of the subject / model identifier (never the identifier itself).
    audio_sha256: hex SHA-256 of the driving audio ("" when unknown, e.g. re-marking a foreign video).
    render_time: ISO-8601 UTC time of the render.
    visible_mark: whether the visible "AI-generated" overlay was drawn (turning it off is recorded here).
    chain: hex SHA-256 digests of the prior signed records this video was derived from, oldest first.
    content_hash: hex of the frames' perceptual hash (`content.PAIRS` bits; "" until the frames are marked).
    frame_size: (height, width) of the marked frames (() until marked).
    visible_overlay: the overlay's `VisibleMarkConfig` fields as (name, value) pairs (() when none drawn),
        so a detector can check that a claimed visible mark is where it was drawn.
    """
    subject_hash: str
    audio_sha256: str
    render_time: str
    visible_mark: bool = True
    chain: tuple[str, ...] = ()
    tool: str = "ggtalker-jax"
    tool_version: str = ggtalker_jax.__version__
    content_hash: str = ""
    frame_size: tuple[int, ...] = ()
    visible_overlay: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "chain", tuple(self.chain))
        object.__setattr__(self, "frame_size", tuple(int(v) for v in self.frame_size))
        overlay = self.visible_overlay.items() if isinstance(self.visible_overlay, dict) else self.visible_overlay
        object.__setattr__(self, "visible_overlay", tuple(sorted((str(k), v) for k, v in overlay)))
        if self.frame_size and (len(self.frame_size) != 2 or min(self.frame_size) < 1):
            raise ValueError(f"Payload.frame_size must be (height, width), got {self.frame_size}")
        if self.content_hash and (len(self.content_hash) % 2 or self.content_hash.strip("0123456789abcdef")):
            raise ValueError(f"Payload.content_hash must be lowercase hex, got {self.content_hash!r}")
        named = [("subject_hash", self.subject_hash), ("audio_sha256", self.audio_sha256)]
        named += [(f"chain[{i}]", digest) for i, digest in enumerate(self.chain)]
        for name, value in named:
            if value and (len(value) != 64 or value.strip("0123456789abcdef")):
                raise ValueError(f"Payload.{name} must be a lowercase hex SHA-256 (64 chars), got {value!r}")

    @classmethod
    def create(cls, subject_id: str, audio_path: str | os.PathLike | None = None, visible_mark: bool = True,
               chain: tuple[str, ...] = (), render_time: datetime.datetime | None = None) -> "Payload":
        """Build a payload from a subject/model id and the driving audio file (hashed, not stored)."""
        when = render_time or datetime.datetime.now(datetime.timezone.utc)
        return cls(subject_hash=sha256_hex(subject_id.encode("utf-8")),
                   audio_sha256=file_sha256(audio_path) if audio_path is not None else "",
                   render_time=when.astimezone(datetime.timezone.utc).isoformat(timespec="seconds"),
                   visible_mark=visible_mark, chain=tuple(chain))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["chain"] = list(self.chain)
        d["frame_size"] = list(self.frame_size)
        d["visible_overlay"] = dict(self.visible_overlay)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Payload":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown payload fields {sorted(unknown)}")
        return cls(**{**d, "chain": tuple(d.get("chain", ())), "frame_size": tuple(d.get("frame_size", ())),
                      "visible_overlay": dict(d.get("visible_overlay") or {})})

    def canonical_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")

    def digest(self) -> str:
        """Hex SHA-256 of the canonical JSON (what a later re-mark puts in its chain)."""
        return sha256_hex(self.canonical_json())

    def derived(self, **changes) -> "Payload":
        """A payload for a video edited from this one: its digest appended to the chain (the content
        fields are filled in again when the edited frames are marked)."""
        return dataclasses.replace(self, chain=(*self.chain, self.digest()), content_hash="", frame_size=(),
                                   visible_overlay=(), **changes)


@dataclasses.dataclass(frozen=True)
class SignedRecord:
    """Payload + signature; `alg` is "hmac-sha256" or "ed25519" (then `public_key` is the raw hex key)."""
    payload: Payload
    alg: str
    signature: str
    public_key: str = ""

    def to_metadata(self) -> str:
        """Single-line ASCII string for the mp4 comment tag (base64url JSON, no padding)."""
        body = json.dumps({"payload": self.payload.to_dict(), "alg": self.alg, "sig": self.signature,
                           "public_key": self.public_key}, sort_keys=True, separators=(",", ":"))
        return METADATA_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def from_metadata(cls, text: str) -> "SignedRecord | None":
        """Parse a comment tag; None when it is not a ggtalker record, ValueError when it is corrupt."""
        text = (text or "").strip()
        if not text.startswith(METADATA_PREFIX):
            return None
        body = text[len(METADATA_PREFIX):]
        try:
            raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            return cls(Payload.from_dict(raw["payload"]), raw["alg"], raw["sig"], raw.get("public_key", ""))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"corrupt ggtalker watermark record in metadata: {err}") from err

    def digest(self) -> str:
        return self.payload.digest()

"""Signing keys: HMAC-SHA256 (default) or ed25519 (via `cryptography`).

HMAC key source, first found: the `GGTALKER_WATERMARK_KEY` environment variable (any string; hex is
decoded), else the key file (`key_file`, default `~/.config/ggtalker/watermark.key`). ed25519 keys live in
`~/.config/ggtalker/watermark_ed25519.key` (raw 32-byte private key); detection needs only the public key,
which is stored in the metadata record and can be pinned with `Ed25519Signer.from_public_hex`.

Only marking creates a key (`load_key(..., create=True)`: 32 random bytes, file mode 0600, directory
0700). Detecting never does: with no key configured, or a key file that does not exist, `load_key`
raises `KeyNotConfiguredError` instead of inventing a key that could never verify anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import pathlib
import secrets

from ggtalker_jax.watermark.payload import Payload, SignedRecord

ENV_VAR = "GGTALKER_WATERMARK_KEY"
CONFIG_DIR = pathlib.Path("~/.config/ggtalker")
FRAME_TAG_CONTEXT = b"ggtalker-wm-frame-tag:v2:"


class KeyNotConfiguredError(FileNotFoundError):
    """No watermark key is configured (no env var, no key file), or the given key file does not exist."""


@dataclasses.dataclass(frozen=True, repr=False)
class HmacSigner:
    secret: bytes
    alg: str = "hmac-sha256"

    def __post_init__(self):
        if len(self.secret) < 16:
            raise ValueError("HMAC watermark key must be at least 16 bytes; use a longer GGTALKER_WATERMARK_KEY")

    def __repr__(self):
        return f"HmacSigner(fingerprint={hashlib.sha256(self.secret).hexdigest()[:8]})"

    def sign(self, payload: Payload) -> SignedRecord:
        sig = hmac.new(self.secret, payload.canonical_json(), hashlib.sha256).hexdigest()
        return SignedRecord(payload, self.alg, sig)

    def verify(self, record: SignedRecord) -> bool:
        if record.alg != self.alg:
            return False
        expected = hmac.new(self.secret, record.payload.canonical_json(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, record.signature)

    def frame_tag(self, frame_hash: bytes, record: SignedRecord) -> bytes:
        """4-byte tag in the frames: HMAC over the in-frame content hash, so frames alone verify with the
        key, and only on content that hashes alike."""
        return hmac.new(self.secret, FRAME_TAG_CONTEXT + frame_hash, hashlib.sha256).digest()[:4]

    def verify_frame_tag(self, frame_hash: bytes, tag: bytes, record: SignedRecord | None) -> bool:
        expected = hmac.new(self.secret, FRAME_TAG_CONTEXT + frame_hash, hashlib.sha256).digest()[:4]
        return hmac.compare_digest(expected, tag)


@dataclasses.dataclass(frozen=True, repr=False)
class Ed25519Signer:
    """private_key: raw 32 bytes or None (verify-only); public_key: raw 32 bytes."""
    public_key: bytes
    private_key: bytes | None = None
    alg: str = "ed25519"

    def __repr__(self):
        return f"Ed25519Signer(public={self.public_key.hex()[:16]}..., private={self.private_key is not None})"

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "Ed25519Signer":
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.hazmat.primitives import serialization
        priv = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
        pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(public_key=pub, private_key=raw)

    @classmethod
    def from_public_hex(cls, hex_key: str) -> "Ed25519Signer":
        return cls(public_key=bytes.fromhex(hex_key))

    def sign(self, payload: Payload) -> SignedRecord:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        if self.private_key is None:
            raise ValueError("this ed25519 key is verify-only (no private key); cannot sign")
        sig = ed25519.Ed25519PrivateKey.from_private_bytes(self.private_key).sign(payload.canonical_json())
        return SignedRecord(payload, self.alg, sig.hex(), self.public_key.hex())

    def verify(self, record: SignedRecord) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ed25519
        if record.alg != self.alg or record.public_key != self.public_key.hex():
            return False
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                bytes.fromhex(record.signature), record.payload.canonical_json())
            return True
        except (InvalidSignature, ValueError):
            return False

    def frame_tag(self, frame_hash: bytes, record: SignedRecord) -> bytes:
        """4 bytes binding the frames to the (deterministic) ed25519 signature in the metadata, which
        covers the payload's content hash (the in-frame hash is checked against it by the detector)."""
        return hashlib.sha256(FRAME_TAG_CONTEXT + frame_hash + bytes.fromhex(record.signature)).digest()[:4]

    def verify_frame_tag(self, frame_hash: bytes, tag: bytes, record: SignedRecord | None) -> bool:
        if record is None:  # a public-key scheme cannot verify 32 bits without the signature
            return False
        return hmac.compare_digest(self.frame_tag(frame_hash, record), tag)


Signer = HmacSigner | Ed25519Signer


def _create_private_file(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _read_key_file(path: pathlib.Path, n_bytes: int, create: bool) -> bytes:
    """The key bytes in `path`; with `create`, a missing file is made (random bytes, 0600) first."""
    if create:
        try:
            _create_private_file(path, secrets.token_bytes(n_bytes))
        except FileExistsError:
            pass
    elif not path.is_file():
        raise KeyNotConfiguredError(
            f"watermark key file {path} does not exist; check --key_file, or set {ENV_VAR}. Keys are "
            f"created only when marking (`ggtalker render`, `ggtalker watermark embed`)")
    data = path.read_bytes()
    if len(data) < n_bytes:
        raise ValueError(f"watermark key file {path} is truncated ({len(data)} bytes, need {n_bytes}); "
                         f"delete it to create a new key (old marks then stop verifying)")
    return data[:n_bytes]


def default_key_path(key_type: str = "hmac") -> pathlib.Path:
    names = {"hmac": "watermark.key", "ed25519": "watermark_ed25519.key"}
    if key_type not in names:
        raise ValueError(f"key_type must be 'hmac' or 'ed25519', got {key_type!r}")
    return (CONFIG_DIR / names[key_type]).expanduser()


def load_key(key_type: str = "hmac", key_file: str | os.PathLike | None = None,
             environ: dict | None = None, create: bool = False) -> Signer:
    """The user's watermark key: `key_type` "hmac" (env var, else key file) or "ed25519" (key file).

    create: make the key file when it does not exist (marking only). Without it a missing key raises
    `KeyNotConfiguredError` naming the file and the fix.
    """
    environ = os.environ if environ is None else environ
    default = default_key_path(key_type)  # also validates key_type
    path = pathlib.Path(key_file).expanduser() if key_file is not None else default
    if key_type == "hmac":
        if key_file is None and environ.get(ENV_VAR):
            value = environ[ENV_VAR]
            try:
                secret = bytes.fromhex(value)
            except ValueError:
                secret = value.encode("utf-8")
            return HmacSigner(secret)
        if key_file is None and not create and not path.is_file():
            raise KeyNotConfiguredError(
                f"no watermark key is configured: set {ENV_VAR} or pass --key_file (the default key "
                f"{path} does not exist; it is created by `ggtalker render` or `ggtalker watermark embed`)")
        return HmacSigner(_read_key_file(path, 32, create))
    return Ed25519Signer.from_private_bytes(_read_key_file(path, 32, create))

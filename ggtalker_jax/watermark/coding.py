"""Channel coding for the in-frame record: sync word + message + CRC-16, bits as {0, 1} arrays.

The codeword is `SYNC_BITS` (a fixed, key-independent word that also drives the alignment search)
followed by the message bits and a CRC-16/CCITT-FALSE over the message. The repetition part of the
error correction is done by the spread-spectrum carrier (every bit is spread over hundreds of DCT
coefficients per frame and soft-combined over all frames, i.e. a soft majority vote); the CRC turns a
wrong decode or an unmarked video into a rejection instead of a garbage payload.
"""
from __future__ import annotations

import numpy as np

SYNC_WORD = 0xB5E3  # fixed 16-bit sync word, public (detection of presence needs no key)
SYNC_BITS = np.array([(SYNC_WORD >> (15 - i)) & 1 for i in range(16)], dtype=np.uint8)
CRC_BITS = 16


def bytes_to_bits(data: bytes) -> np.ndarray:
    """bytes -> [8 * len] uint8 bits, most significant bit first."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def bits_to_bytes(bits: np.ndarray) -> bytes:
    """[8 * n] {0, 1} bits (MSB first) -> n bytes."""
    bits = np.asarray(bits, dtype=np.uint8)
    if bits.ndim != 1 or bits.size % 8:
        raise ValueError(f"bits must be a 1-D array with a multiple of 8 entries, got shape {bits.shape}")
    return np.packbits(bits).tobytes()


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); crc16(b"123456789") == 0x29B1."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def encode_codeword(message: bytes) -> np.ndarray:
    """message bytes -> codeword bits [16 + 8 * len + 16] = sync | message | crc16(message)."""
    crc = crc16(message).to_bytes(2, "big")
    return np.concatenate([SYNC_BITS, bytes_to_bits(message), bytes_to_bits(crc)])


def codeword_length(message_bytes: int) -> int:
    return len(SYNC_BITS) + 8 * message_bytes + CRC_BITS


def decode_codeword(bits: np.ndarray, message_bytes: int) -> bytes | None:
    """Hard codeword bits -> message bytes, or None when the CRC does not match.

    The sync bits are not required to match exactly (they are only used for alignment); the CRC over
    the message is the acceptance test.
    """
    bits = np.asarray(bits, dtype=np.uint8)
    expected = codeword_length(message_bytes)
    if bits.shape != (expected,):
        raise ValueError(f"codeword must have shape ({expected},), got {bits.shape}")
    start = len(SYNC_BITS)
    message = bits_to_bytes(bits[start:start + 8 * message_bytes])
    crc = int.from_bytes(bits_to_bytes(bits[start + 8 * message_bytes:]), "big")
    return message if crc16(message) == crc else None

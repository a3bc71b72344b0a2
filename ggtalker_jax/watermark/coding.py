"""Channel coding for the in-frame record, bits as {0, 1} arrays.

Codeword = `SYNC_BITS` (a fixed, key-independent word, uncoded, that also drives the alignment search)
followed by the rate-1/2, constraint-length-7 convolutional code (generators 171, 133 octal, the
NASA/802.11 code with the newest input at the register LSB, i.e. its mirror image with the same
free distance 10, zero-tail terminated) of message | CRC-16/CCITT-FALSE(message). Decoding is soft
Viterbi. On top of that the spread-spectrum carrier repeats every coded bit over ~50-100 DCT
coefficients per frame and the detector averages the soft values over all frames (a soft majority
vote); the CRC turns a wrong decode or an unmarked video into a rejection instead of a garbage payload.
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


CONV_GENERATORS = (0o171, 0o133)
CONV_MEMORY = 6  # constraint length 7 -> 64 states
_STATES = 1 << CONV_MEMORY


def _parity(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    out = np.zeros_like(x)
    for shift in range(CONV_MEMORY + 1):
        out ^= (x >> shift) & 1
    return out


def conv_encode(bits: np.ndarray) -> np.ndarray:
    """[L] bits -> [2 * (L + 6)] coded bits (zero tail appended, encoder ends in state 0)."""
    reg, out = 0, []
    for u in np.concatenate([np.asarray(bits, dtype=np.int64), np.zeros(CONV_MEMORY, np.int64)]):
        reg = ((reg << 1) | int(u)) & 0x7F
        out.extend(int(_parity(np.array(reg & g))) for g in CONV_GENERATORS)
    return np.array(out, dtype=np.uint8)


def viterbi_decode(soft: np.ndarray) -> np.ndarray:
    """Soft values [2 * (L + 6)] (> 0 means bit 1, magnitude = reliability) -> [L] most likely bits."""
    soft = np.asarray(soft, dtype=np.float64).reshape(-1, 2)
    next_state = np.arange(_STATES)
    inputs = next_state & 1
    preds = np.stack([(next_state >> 1) | (b << (CONV_MEMORY - 1)) for b in (0, 1)])  # [2, 64]
    regs = (preds << 1) | inputs[None]                                                 # [2, 64]
    signs = np.stack([2 * _parity(regs & g) - 1 for g in CONV_GENERATORS], axis=-1)   # [2, 64, 2]
    metric = np.full(_STATES, -np.inf)
    metric[0] = 0.0
    choices = []
    for r in soft:
        cand = metric[preds] + signs @ r                                                # [2, 64]
        pick = np.argmax(cand, axis=0)
        choices.append(pick)
        metric = cand[pick, next_state]
    state, decoded = 0, []
    for pick in reversed(choices):
        decoded.append(state & 1)
        state = int(preds[pick[state], state])
    return np.array(decoded[::-1][:len(soft) - CONV_MEMORY], dtype=np.uint8)


def encode_codeword(message: bytes) -> np.ndarray:
    """message bytes -> codeword bits [16 + 2 * (8 * len + 16 + 6)] = sync | conv(message | crc16)."""
    crc = crc16(message).to_bytes(2, "big")
    return np.concatenate([SYNC_BITS, conv_encode(bytes_to_bits(message + crc))])


def codeword_length(message_bytes: int) -> int:
    return len(SYNC_BITS) + 2 * (8 * message_bytes + CRC_BITS + CONV_MEMORY)


def decode_codeword(soft: np.ndarray, message_bytes: int) -> bytes | None:
    """Codeword soft values (> 0 means 1; hard {0, 1} bits also work) -> message bytes, or None when
    the CRC does not match after Viterbi decoding.

    The sync bits are not decoded (they serve alignment and the presence test in the detector).
    """
    soft = np.asarray(soft, dtype=np.float64)
    expected = codeword_length(message_bytes)
    if soft.shape != (expected,):
        raise ValueError(f"codeword must have shape ({expected},), got {soft.shape}")
    if np.all((soft == 0) | (soft == 1)):
        soft = 2.0 * soft - 1.0
    decoded = viterbi_decode(soft[len(SYNC_BITS):])
    message = bits_to_bytes(decoded[:8 * message_bytes])
    crc = int.from_bytes(bits_to_bytes(decoded[8 * message_bytes:]), "big")
    return message if crc16(message) == crc else None

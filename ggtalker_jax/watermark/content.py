"""Robust perceptual hash of a clip's content, so a signed record cannot be moved onto other frames.

The frames' mean luma (over time) is put on the watermark's working canvas `[S, S]` and cut into a
`GRID x GRID` grid of cells; every pair of side-by-side cells gives one bit, "the first cell is brighter"
(`PAIRS` = 2 * GRID * (GRID - 1) = 112 bits for GRID = 8). Cell means survive re-encoding, rescaling and
brightness changes; a crop only removes the pairs whose cells it cuts (the detector knows the crop from
the watermark's alignment), so hashes are compared on the pairs both sides saw.

The signed record stores all `PAIRS` bits; the in-frame message carries `FRAME_BITS` = 32 of them (a
public subset) so that frames without their metadata are bound to their content too.

Matching (`compare`) counts, over the pairs that are fully observed and whose observed difference is at
least `min_difference` luma levels (near-ties flip under noise), how many disagree with the claimed bits.
Two different clips disagree on about half of them; the same clip after the edits above on a few.
A perceptual hash can be collided on purpose by editing a clip towards the claimed layout: the binding
stops copying a record onto unrelated footage, not an adversary who also repaints the target.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ggtalker_jax.watermark.invisible import IDENTITY, Alignment, to_canvas

GRID = 8
PAIRS = 2 * GRID * (GRID - 1)
FRAME_BITS = 32
FRAME_PAIRS = np.sort(np.random.default_rng(0x68617368).permutation(PAIRS)[:FRAME_BITS])  # public subset


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    """Cell indices (a, b) [PAIRS] of side-by-side cells: horizontal pairs first, then vertical."""
    idx = np.arange(GRID * GRID).reshape(GRID, GRID)
    a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    return a, b


_PAIR_A, _PAIR_B = _pairs()


@dataclasses.dataclass(frozen=True)
class ContentFeatures:
    """difference: [PAIRS] cell-mean luma differences (first minus second cell, luma levels);
    observed: [PAIRS] bool, both cells fully inside the observed frames."""
    difference: np.ndarray
    observed: np.ndarray

    def bits(self) -> np.ndarray:
        """[PAIRS] uint8, 1 where the first cell is brighter."""
        return (self.difference > 0).astype(np.uint8)


def content_features(mean_luma: np.ndarray, work_size: int, alignment: Alignment = IDENTITY) -> ContentFeatures:
    """Mean luma over the frames [H, W] (placed on the canvas by `alignment`) -> ContentFeatures."""
    canvas, coverage = to_canvas(mean_luma, work_size, alignment)
    cell = work_size // GRID
    area = coverage[:cell * GRID, :cell * GRID].reshape(GRID, cell, GRID, cell).sum(axis=(1, 3)).ravel()
    total = canvas[:cell * GRID, :cell * GRID].reshape(GRID, cell, GRID, cell).sum(axis=(1, 3)).ravel()
    means = total / np.maximum(area, 1.0)
    full = area >= 0.98 * cell * cell
    return ContentFeatures((means[_PAIR_A] - means[_PAIR_B]).astype(np.float32), full[_PAIR_A] & full[_PAIR_B])


def bits_to_hex(bits: np.ndarray) -> str:
    bits = np.asarray(bits, dtype=np.uint8)
    padded = np.concatenate([bits, np.zeros(-bits.size % 8, np.uint8)])
    return np.packbits(padded).tobytes().hex()


def hex_to_bits(text: str, n_bits: int = PAIRS) -> np.ndarray:
    """Inverse of `bits_to_hex`; ValueError when `text` is not hex of the right length."""
    raw = bytes.fromhex(text)
    if len(raw) != (n_bits + 7) // 8:
        raise ValueError(f"content hash must be {(n_bits + 7) // 8} bytes of hex, got {len(raw)}")
    return np.unpackbits(np.frombuffer(raw, np.uint8))[:n_bits]


def frame_hash(bits: np.ndarray) -> bytes:
    """[PAIRS] bits -> the 4 bytes of the in-frame message (the `FRAME_PAIRS` subset)."""
    return np.packbits(np.asarray(bits, np.uint8)[FRAME_PAIRS]).tobytes()


@dataclasses.dataclass(frozen=True)
class ContentMatch:
    """compared: pairs observed with a clear difference; mismatches: how many of those disagree."""
    matches: bool
    compared: int
    mismatches: int

    def to_json_dict(self) -> dict:
        return {"matches": self.matches, "compared_bits": self.compared, "mismatched_bits": self.mismatches}


def compare(observed: ContentFeatures, claimed_bits: np.ndarray, pairs: np.ndarray | None = None,
            min_difference: float = 2.0, max_mismatch_fraction: float = 0.15, min_compared: int = 8) -> ContentMatch:
    """Claimed bits (all PAIRS, or the ones at indices `pairs`) against observed features."""
    pairs = np.arange(PAIRS) if pairs is None else np.asarray(pairs)
    claimed_bits = np.asarray(claimed_bits, np.uint8)
    if claimed_bits.shape != pairs.shape:
        raise ValueError(f"claimed bits {claimed_bits.shape} do not match pairs {pairs.shape}")
    diff = observed.difference[pairs]
    usable = observed.observed[pairs] & (np.abs(diff) >= min_difference)
    compared = int(usable.sum())
    mismatches = int(np.sum(usable & ((diff > 0).astype(np.uint8) != claimed_bits)))
    ok = compared >= min_compared and mismatches <= max_mismatch_fraction * compared
    return ContentMatch(bool(ok), compared, mismatches)

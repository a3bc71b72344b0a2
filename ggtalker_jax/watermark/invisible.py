"""Invisible, blind spread-spectrum watermark in a resolution-normalised block-DCT luma domain.

Embedding (per frame, `embed_codeword`):
  1. luma `Y = 0.299 R + 0.587 G + 0.114 B` of the frame `[H, W]`, resized to the working size
     `[S, S]` (default 256): the pattern lives in this normalised domain, so a rescaled copy of the
     video maps back onto the same grid.
  2. 8x8 orthonormal block DCT; a low/mid-frequency band of coefficients per block (default
     `max(u, v) <= 3`, `u + v >= 2`: 13 per block, at most 3/16 cycles per working pixel, below the
     Nyquist limit of a 0.5x rescale) are the carriers, `M = (S/8)^2 * 13` of them.
  3. Every carrier belongs to one codeword bit (a public random interleaving) with a public random
     chip sign. The per-bit projection `p_k = mean_{j in k} chip_j * x_j` is pushed to at least
     `strength` in the direction of the bit (improved spread spectrum: the host's own projection is
     used, so blind detection does not fight the image content; `host_rejection` = lambda).
  4. The coefficient change is inverse-DCT'd to a `[S, S]` residual, resized to `[H, W]` and added to
     R, G and B alike (which adds it to luma and leaves chroma alone). `passes` > 1 re-measures the
     rounded, clipped result and tops up the bits that fell short.

Detection (`detect_codeword`) is blind and key-free (the key only signs the record): per-bit soft
projections are averaged over all frames (a soft majority vote over `T x M / n_bits` carriers), the
hard bits go through the CRC. When the identity alignment fails it searches crops: for a grid of
scales the frames are resized by the scale, the sync-word pattern is located by FFT cross-correlation
and the best-scoring alignments are decoded with the missing blocks masked out.
"""
from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from ggtalker_jax.watermark import coding

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _default_band() -> tuple[tuple[int, int], ...]:
    return tuple((u, v) for u in range(4) for v in range(4) if u + v >= 2)


@dataclasses.dataclass(frozen=True)
class InvisibleConfig:
    """Parameters of the invisible mark; embedder and detector must use the same values."""
    work_size: int = 256          # side of the normalised working domain [S, S]
    block: int = 8                # DCT block side
    band: tuple[tuple[int, int], ...] = dataclasses.field(default_factory=_default_band)
    strength: float = 3.0         # minimum per-bit projection after embedding (luma levels)
    host_rejection: float = 0.5   # ISS lambda: 0 = plain spread spectrum, 1 = full host rejection
    passes: int = 2               # embed passes (later ones top up bits lost to rounding/clipping)
    seed: int = 0x6774616C        # public seed of the carrier interleaving and chips
    crop_scales: tuple[float, ...] = (0.95, 0.9, 0.85, 0.8)  # per-axis kept fraction searched
    candidates_decoded: int = 4   # best sync peaks decoded per detection when identity fails
    min_sync_agreement: int = 13  # of 16 sync bits that must decode right to call a mark present

    def __post_init__(self):
        if self.work_size % self.block:
            raise ValueError(f"work_size {self.work_size} must be a multiple of block {self.block}")
        if any(not (0 <= u < self.block and 0 <= v < self.block) for u, v in self.band):
            raise ValueError(f"band entries must lie in [0, {self.block}), got {self.band}")
        if self.strength <= 0:
            raise ValueError(f"strength must be > 0, got {self.strength}")


@dataclasses.dataclass(frozen=True)
class CarrierLayout:
    """Which codeword bit and chip sign every band coefficient carries.

    bit_of: [M] int, chip: [M] float32 (+-1), count: [n_bits] carriers per bit.
    Carrier order is (block_row, block_col, band_index), row-major.
    """
    bit_of: np.ndarray
    chip: np.ndarray
    count: np.ndarray


@functools.lru_cache(maxsize=8)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix [n, n]: coeffs = D @ x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


@functools.lru_cache(maxsize=8)
def carrier_layout(config: InvisibleConfig, n_bits: int) -> CarrierLayout:
    nb = config.work_size // config.block
    m = nb * nb * len(config.band)
    if m < 8 * n_bits:
        raise ValueError(f"only {m} carriers for {n_bits} bits; raise work_size or widen band")
    rng = np.random.default_rng(config.seed)
    bit_of = np.empty(m, dtype=np.int64)
    bit_of[rng.permutation(m)] = np.arange(m) % n_bits
    chip = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=m)
    return CarrierLayout(bit_of, chip, np.bincount(bit_of, minlength=n_bits))


def block_dct(image: np.ndarray, block: int) -> np.ndarray:
    """[S, S] -> [S/b, S/b, b, b] orthonormal block DCT."""
    d = _dct_matrix(block)
    nb_y, nb_x = image.shape[0] // block, image.shape[1] // block
    blocks = image.reshape(nb_y, block, nb_x, block).transpose(0, 2, 1, 3)
    return np.einsum("uk,yxkl,vl->yxuv", d, blocks, d, optimize=True)


def block_idct(coeffs: np.ndarray) -> np.ndarray:
    """[S/b, S/b, b, b] -> [S, S]; inverse of `block_dct`."""
    nb_y, nb_x, block, _ = coeffs.shape
    d = _dct_matrix(block)
    blocks = np.einsum("uk,yxuv,vl->yxkl", d, coeffs, d, optimize=True)
    return blocks.transpose(0, 2, 1, 3).reshape(nb_y * block, nb_x * block)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area filter when shrinking, bicubic when enlarging (float32 in, float32 out)."""
    if image.shape[:2] == (height, width):
        return image.astype(np.float32, copy=False)
    shrinking = height * width < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image.astype(np.float32, copy=False), (width, height), interpolation=interp)


def luma(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB (any dtype) -> [H, W] float32 luma (BT.601 weights)."""
    return frame.astype(np.float32) @ LUMA_WEIGHTS


def _band_coefficients(coeffs: np.ndarray, band) -> np.ndarray:
    """[nb, nb, b, b] -> [M] carriers in layout order."""
    us, vs = np.array(band).T
    return coeffs[:, :, us, vs].reshape(-1)


def _bit_projection(x: np.ndarray, layout: CarrierLayout, weight: np.ndarray | None = None):
    """Carriers [M] -> per-bit mean de-spread projection [n_bits] (weighted by carrier weight [M])."""
    n_bits = layout.count.size
    w = np.ones_like(x) if weight is None else weight
    num = np.bincount(layout.bit_of, weights=layout.chip * x * w, minlength=n_bits)
    den = np.bincount(layout.bit_of, weights=w, minlength=n_bits)
    return num / np.maximum(den, 1e-9), den


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [T, H, W, 3], got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {frames.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    if frames.shape[0] == 0:
        raise ValueError(f"{name} is empty (T = 0)")
    return frames


def embed_codeword(frames: np.ndarray, codeword: np.ndarray, config: InvisibleConfig = InvisibleConfig()) -> np.ndarray:
    """Embed codeword bits [n_bits] {0,1} into every frame of [T, H, W, 3] uint8; returns the same shape."""
    frames = _check_frames(frames)
    codeword = np.asarray(codeword)
    layout = carrier_layout(config, int(codeword.size))
    signs = 2.0 * codeword.astype(np.float32) - 1.0
    s, b = config.work_size, config.block
    nb = s // b
    us, vs = np.array(config.band).T
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        h, w = frame.shape[:2]
        current = frame
        accumulated = np.zeros((h, w), dtype=np.float32)
        for _ in range(config.passes):
            x = _band_coefficients(block_dct(resize(luma(current), s, s), b), config.band)
            proj, _ = _bit_projection(x, layout)
            push = signs * np.maximum(0.0, config.strength - config.host_rejection * signs * proj)
            if not np.any(push):
                break
            delta = np.zeros((nb, nb, b, b), dtype=np.float32)
            delta[:, :, us, vs] = (push[layout.bit_of] * layout.chip).reshape(nb, nb, -1)
            accumulated += resize(block_idct(delta), h, w)
            current = np.clip(np.rint(frame.astype(np.float32) + accumulated[..., None]), 0, 255).astype(np.uint8)
        out[t] = current
    return out


@dataclasses.dataclass(frozen=True)
class CodewordDetection:
    """Result of `detect_codeword`.

    message: decoded message bytes (CRC verified and sync word matched) or None.
    soft: [n_bits] frame-averaged per-bit projections (sign = bit) at the chosen alignment.
    raw_bit_error_rate: mean over frames of the per-frame hard-decision (pre-Viterbi) error rate
        against the re-encoded decoded codeword (against the frame-averaged hard bits when nothing
        decoded).
    confidence: mean |soft| / (per-bit noise std), a signal-to-noise ratio of the aggregated bits.
    alignment: (scale_y, scale_x, offset_y, offset_x) in working pixels; (1, 1, 0, 0) = no crop.
    """
    message: bytes | None
    soft: np.ndarray
    raw_bit_error_rate: float
    confidence: float
    alignment: tuple[float, float, int, int]


def _observed_carriers(lumas: np.ndarray, config: InvisibleConfig, alignment) -> tuple[np.ndarray, np.ndarray]:
    """Place resized observed lumas [T, H, W] on the working canvas -> carriers [T, M], weights [M]."""
    s, b = config.work_size, config.block
    sy, sx, oy, ox = alignment
    hh, ww = int(round(s * sy)), int(round(s * sx))
    covered = np.zeros((s, s), dtype=np.float32)
    covered[oy:oy + hh, ox:ox + ww] = 1.0
    block_full = covered.reshape(s // b, b, s // b, b).min(axis=(1, 3))
    weight = np.repeat(block_full.reshape(-1), len(config.band))
    carriers = []
    for y in lumas:
        canvas = np.zeros((s, s), dtype=np.float32)
        canvas[oy:oy + hh, ox:ox + ww] = resize(y, hh, ww)
        carriers.append(_band_coefficients(block_dct(canvas, b), config.band))
    return np.stack(carriers), weight


def _decode_at(lumas, config, layout, message_bytes, alignment) -> CodewordDetection:
    carriers, weight = _observed_carriers(lumas, config, alignment)
    per_frame = np.stack([_bit_projection(x, layout, weight)[0] for x in carriers])  # [T, n_bits]
    soft = per_frame.mean(axis=0)
    hard = (soft > 0).astype(np.uint8)
    sync_ok = int(np.sum(hard[:coding.SYNC_BITS.size] == coding.SYNC_BITS)) >= config.min_sync_agreement
    message = coding.decode_codeword(soft / (np.abs(soft).mean() + 1e-9), message_bytes)
    if message is not None:  # raw error rates are measured against the re-encoded decoded codeword
        hard = coding.encode_codeword(message)
    if not sync_ok:
        message = None
    raw_ber = float(np.mean((per_frame > 0).astype(np.uint8) != hard[None]))
    # Noise per bit: spread of the frame-averaged projection estimated from the carrier residuals.
    _, den = _bit_projection(carriers[0], layout, weight)
    resid = carriers * layout.chip - soft[layout.bit_of]
    noise = np.sqrt(np.sum(weight * resid.var(axis=0) + weight * np.mean(resid, axis=0) ** 2)
                    / max(np.sum(weight), 1.0))
    per_bit_std = noise / np.sqrt(np.maximum(den, 1.0) * len(lumas))
    confidence = float(np.mean(np.abs(soft) / np.maximum(per_bit_std, 1e-9)))
    return CodewordDetection(message, soft, raw_ber, confidence, tuple(alignment))


def _sync_template(config: InvisibleConfig, layout: CarrierLayout) -> np.ndarray:
    """Spatial pattern [S, S] of the sync-word carriers alone."""
    s, b = config.work_size, config.block
    nb = s // b
    n_sync = coding.SYNC_BITS.size
    signs = 2.0 * coding.SYNC_BITS.astype(np.float32) - 1.0
    is_sync = layout.bit_of < n_sync
    values = np.where(is_sync, signs[np.minimum(layout.bit_of, n_sync - 1)] * layout.chip, 0.0)
    coeffs = np.zeros((nb, nb, b, b), dtype=np.float32)
    us, vs = np.array(config.band).T
    coeffs[:, :, us, vs] = values.reshape(nb, nb, -1)
    return block_idct(coeffs)


def _search_alignments(lumas, config, layout) -> list[tuple[float, tuple[float, float, int, int]]]:
    """Score crop alignments by sync-pattern cross-correlation; returns [(z_score, alignment)] best first."""
    s = config.work_size
    template_f = np.fft.rfft2(_sync_template(config, layout))
    mean_luma = lumas.mean(axis=0)
    scored = []
    for sy in (1.0, *config.crop_scales):
        for sx in (1.0, *config.crop_scales):
            if sy == 1.0 and sx == 1.0:
                continue
            hh, ww = int(round(s * sy)), int(round(s * sx))
            z = resize(mean_luma, hh, ww)
            z = z - cv2.GaussianBlur(z, (0, 0), 3.0)
            canvas = np.zeros((s, s), dtype=np.float32)
            canvas[:hh, :ww] = z
            corr = np.fft.irfft2(np.conj(np.fft.rfft2(canvas)) * template_f, s=(s, s))
            valid = corr[:s - hh + 1, :s - ww + 1]
            oy, ox = np.unravel_index(int(np.argmax(valid)), valid.shape)
            scored.append((float(valid[oy, ox] / (corr.std() + 1e-9)), (sy, sx, int(oy), int(ox))))
    return sorted(scored, key=lambda item: -item[0])


def detect_codeword(frames: np.ndarray, message_bytes: int, config: InvisibleConfig = InvisibleConfig(),
                    search_crops: bool = True) -> CodewordDetection:
    """Blind detection over all frames [T, H, W, 3] uint8 of a codeword carrying `message_bytes` bytes."""
    frames = _check_frames(frames)
    n_bits = coding.codeword_length(message_bytes)
    layout = carrier_layout(config, n_bits)
    lumas = np.stack([luma(f) for f in frames])
    best = _decode_at(lumas, config, layout, message_bytes, (1.0, 1.0, 0, 0))
    if best.message is not None or not search_crops:
        return best
    for _, alignment in _search_alignments(lumas, config, layout)[:config.candidates_decoded]:
        found = _decode_at(lumas, config, layout, message_bytes, alignment)
        if found.message is not None:
            return found
    return best

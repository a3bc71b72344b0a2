"""Invisible, blind spread-spectrum watermark in a resolution-normalised block-DCT luma domain.

Domain: the luma `Y = 0.299 R + 0.587 G + 0.114 B` of a frame `[H, W]` resized to the working canvas
`[S, S]` (default 256), cut into 8x8 blocks, orthonormal DCT; a low/mid-frequency band of each block
(`max(u, v) <= 3`, `2 <= u + v <= 4`: 10 coefficients, what H.264 at CRF 28 keeps best, also after a
0.5x rescale of a 512 px render; see the known limit below for 256 px) are the carriers, `M = (S / 8)^2 * 10` of them. Every
carrier belongs to one codeword bit (public random interleaving, `carrier_layout`) with a public random
chip sign. A bit's statistic in one frame is the weighted mean `p_k = sum_j w_j chip_j x_j / sum_j w_j`
over its carriers (`carrier_weights`): `w_j` = the band's weight (1 / typical size of band `(u, v)` in the
frame, so that no band's host content dominates) divided by `|x_j| + c` (x_j band-scaled, c = `host_clip`
times its median), which bounds every carrier's host term, so the few carriers on strong edges no longer
dominate a bit's host interference (mark format 3; format 2, written by earlier versions on the same
carriers, used the band weights alone). The detector averages `p_k` over frames and decodes its signs.

Embedding (`design_pattern` + `apply_pattern`) adds one fixed luma pattern `[S, S]` (resized to the frame)
to every frame; a static pattern is what H.264 keeps best (skipped and predicted blocks carry it along).
The pattern is designed on the first `design_frames` frames, informed by the host and by the re-encodes
it must survive (`InvisibleConfig.simulate`, default H.264 CRF 28 and 0.5x + CRF 23):
  1. each simulated re-encode is run on the frames and on the frames plus a random probe pattern; the
     probe's survival per (8x8 block, band), pooled over the 3x3 neighbouring blocks, is that carrier's
     gain `g_a` (flat blocks lose the mark, textured blocks keep it; a rescale loses the higher bands
     first), and the re-encoded clean frames give the host's statistic `h_a` after the attack, with the
     weights the detector computes on them;
  2. carrier `j` of bit `k` gets `alpha_k * sign_k * chip_j * g_j * w_j` (matched to where the mark
     survives, `g` = the largest gain over the attacks); `alpha_k` is the least amplitude that lifts the
     bit's statistic to `tau` under every attack, unattacked, and on 75% corner crops (the host is
     cancelled on what a crop keeps too), given the host (informed embedding);
  3. the hardest bits (above the `give_up_quantile` of needed amplitude) are capped and left to the
     convolutional code, `tau` is the largest that fits the energy budget `min_psnr_db`, and
     `top_ups` re-simulations top up bits that fell short.

Detection (`detect_codeword`) is blind and key-free (the key signs the record), first with the format-3
weights and, when nothing decodes, with the format-2 ones (`mark_format` says which decoded): per-frame statistics at the
identity alignment, averaged over all frames, Viterbi + CRC (at every alignment tried: first as they are,
then each bit scaled by its reliability, `_aligned_soft`). When that fails it decodes sliding windows of
`window` frames (a clip made of several marked pieces), and when nothing decodes it searches crops: for
every kept size (each canvas size down to `min_crop_fraction` of a side) and the four corner offsets, or
the offset where the sync-word pattern correlates best, the frame-mean statistics are decoded; the
alignments that decode (as found, then refined) and else the most coherent ones (refined) are decoded
frame by frame with the missing blocks masked out. Band weights are measured on the canvas core that
every 75% corner crop keeps (`weight_blocks`), so embedder and detector weigh the bands alike.

Known limit (experiments/bench_watermark.py): a 256 px render rescaled 0.5x (128 px) and re-encoded at
CRF 28 decodes on only some clips: there the mark's carriers lie near the 128 px frame's Nyquist limit,
and the difference H.264 makes between the marked and the clean frames (per-carrier noise about twice
the surviving mark) leaves too little signal at the 40 dB energy budget; 16x16 blocks (lower frequencies)
and leaving the upper bands out of small frames' statistics were tried and were worse (host interference).
"""
from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from ggtalker_jax.watermark import coding
from ggtalker_jax.watermark.attacks import Reencode

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
Alignment = tuple[float, float, int, int]  # (scale_y, scale_x, offset_y, offset_x) in working pixels
IDENTITY: Alignment = (1.0, 1.0, 0, 0)


def _default_band() -> tuple[tuple[int, int], ...]:
    return tuple((u, v) for u in range(4) for v in range(4) if 2 <= u + v <= 4)


@dataclasses.dataclass(frozen=True)
class InvisibleConfig:
    """Parameters of the invisible mark; embedder and detector must use the same layout values
    (work_size, block, band, seed)."""
    work_size: int = 256          # side of the normalised working domain [S, S]
    block: int = 8                # DCT block side
    band: tuple[tuple[int, int], ...] = dataclasses.field(default_factory=_default_band)
    seed: int = 0x6774616C        # public seed of the carrier interleaving and chips
    # embedding
    min_psnr_db: float = 40.5     # energy budget: PSNR of marked vs unmarked frames
    simulate: tuple[Reencode, ...] = (Reencode(1.0, 28), Reencode(0.5, 23))
    design_frames: int = 50       # the pattern is designed on the first frames (all when fewer)
    probe_amplitude: float = 3.0  # carrier amplitude of the random probe measuring survival
    gain_floor: float = 0.05      # smallest survival gain a block is given energy for
    give_up_quantile: float = 0.9  # bits needing more amplitude than this quantile are capped
    design_crops: tuple[float, ...] = (0.75,)  # corner crops (kept fraction) the host is also cancelled on
    top_ups: int = 1              # re-simulations that top up bits falling short
    gain_combine: str = "max"     # survival gains of the simulated attacks -> pattern shape: "max" or "mean"
    # detection
    min_crop_fraction: float = 0.65  # smallest kept fraction of a side searched (every canvas size down to it)
    candidates_decoded: int = 4   # best-scoring crop alignments refined and decoded when identity fails
    min_sync_agreement: int = 13  # of 16 sync bits that must decode right to call a mark present
    window: int = 25              # frames per window when the whole clip does not decode as one mark
    # embedder and detector
    host_clip: float | None = 2.0  # carrier weights / (|x| + host_clip * median |x|); None: format 2 (`carrier_weights`)

    def __post_init__(self):
        if self.work_size % self.block:
            raise ValueError(f"work_size {self.work_size} must be a multiple of block {self.block}")
        if any(not (0 <= u < self.block and 0 <= v < self.block) or (u, v) == (0, 0) for u, v in self.band):
            raise ValueError(f"band entries must lie in [0, {self.block}) and exclude DC, got {self.band}")
        if not 20.0 <= self.min_psnr_db <= 70.0:
            raise ValueError(f"min_psnr_db must be in [20, 70], got {self.min_psnr_db}")
        if self.gain_combine not in ("max", "mean"):
            raise ValueError(f"gain_combine must be 'max' or 'mean', got {self.gain_combine!r}")
        if not 0.0 < self.min_crop_fraction <= 1.0:
            raise ValueError(f"min_crop_fraction must be in (0, 1], got {self.min_crop_fraction}")
        if self.window < 1 or self.design_frames < 1:
            raise ValueError(f"window and design_frames must be >= 1, got {self.window}, {self.design_frames}")


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
    return d @ blocks @ d.T


def block_idct(coeffs: np.ndarray) -> np.ndarray:
    """[S/b, S/b, b, b] -> [S, S]; inverse of `block_dct`."""
    nb_y, nb_x, block, _ = coeffs.shape
    d = _dct_matrix(block)
    blocks = d.T @ coeffs @ d
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


def check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [T, H, W, 3], got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {frames.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    if frames.shape[0] == 0:
        raise ValueError(f"{name} is empty (T = 0)")
    if min(frames.shape[1:3]) < 16:
        raise ValueError(f"{name} are {frames.shape[1]}x{frames.shape[2]} pixels; at least 16x16 is needed")
    return frames


def to_canvas(y: np.ndarray, size: int, alignment: Alignment = IDENTITY) -> tuple[np.ndarray, np.ndarray]:
    """Observed luma [H, W] -> (canvas [S, S] with the frame placed by `alignment`, coverage [S, S] in {0, 1}).

    The identity alignment resizes the whole frame to the canvas; a crop alignment `(sy, sx, oy, ox)`
    resizes it to `round(S * sy) x round(S * sx)` and puts it at `(oy, ox)`.
    """
    sy, sx, oy, ox = alignment
    hh, ww = int(round(size * sy)), int(round(size * sx))
    canvas = np.zeros((size, size), dtype=np.float32)
    coverage = np.zeros((size, size), dtype=np.float32)
    canvas[oy:oy + hh, ox:ox + ww] = resize(y, hh, ww)
    coverage[oy:oy + hh, ox:ox + ww] = 1.0
    return canvas, coverage


def from_canvas(canvas_map: np.ndarray, height: int, width: int, alignment: Alignment = IDENTITY) -> np.ndarray:
    """Inverse of `to_canvas` for a map on the canvas [S, S] -> [height, width] of the observed frame."""
    size = canvas_map.shape[0]
    sy, sx, oy, ox = alignment
    hh, ww = int(round(size * sy)), int(round(size * sx))
    return resize(canvas_map[oy:oy + hh, ox:ox + ww], height, width)


def _band_planes(canvas: np.ndarray, config: InvisibleConfig) -> np.ndarray:
    """Canvas [S, S] -> band coefficients [nb, nb, K]."""
    us, vs = np.array(config.band).T
    return block_dct(canvas, config.block)[:, :, us, vs]


def band_weights(planes: np.ndarray, block_weight: np.ndarray | None = None) -> np.ndarray:
    """Band coefficients [T, nb, nb, K] -> per-band weights [K] = 1 / (median |coefficient| + 1), mean 1.

    `block_weight` [nb, nb] (1 = block fully observed) excludes blocks outside a crop.
    """
    flat = np.abs(planes).reshape(-1, planes.shape[1] * planes.shape[2], planes.shape[3])
    if block_weight is not None:
        flat = flat[:, block_weight.reshape(-1) > 0]
    inverse = 1.0 / (np.median(flat.reshape(-1, planes.shape[3]), axis=0) + 1.0)
    return (inverse / inverse.mean()).astype(np.float32)


def carrier_weights(planes: np.ndarray, config: InvisibleConfig, block_full: np.ndarray | None = None) -> np.ndarray:
    """Detector weight of every carrier [M] from the frame-mean band coefficients [nb, nb, K] of the
    observed frames placed on the canvas (`block_full` [nb, nb]: the fully observed blocks, None = all).

    `band_weights` (measured on `weight_blocks`) scale every band to a common size; then, unless
    `config.host_clip` is None, each carrier is weighed by `1 / (|x_j| + c)` with `|x_j|` its band-scaled
    magnitude and `c = host_clip * (median of |x_j|)`: a bit's statistic sums `chip_j x_j / (|x_j| + c)`,
    whose host part is bounded per carrier, so the few carriers on strong edges (face contour, hair)
    no longer dominate a bit's host interference (the natural host is heavy-tailed; this is the
    locally optimal correlator for such hosts). The embedder designs with the same weights (matched:
    more amplitude where the host is small), computed on the frames it simulates. host_clip None is the
    plain band weighting that mark format 2 (earlier versions) was designed for."""
    nb = planes.shape[0]
    full = np.ones((nb, nb), np.float32) if block_full is None else (block_full > 0).astype(np.float32)
    bands = band_weights(planes[None], weight_blocks(config, block_full))
    weight = np.broadcast_to(bands, planes.shape) * full[:, :, None]
    if config.host_clip is not None:
        scaled = np.abs(planes) * bands
        typical = float(np.median(scaled[full > 0])) if full.any() else 1.0
        c = config.host_clip * typical + 1e-6
        weight = weight / (scaled + c) * (c + typical)  # = the band weight for a carrier of median size
    return np.asarray(weight, np.float64).reshape(-1)


def weight_blocks(config: InvisibleConfig, block_full: np.ndarray | None = None) -> np.ndarray:
    """Blocks [nb, nb] (1 = used) that `band_weights` is measured on: the core of the canvas that every
    corner crop of `config.design_crops` keeps (blocks [nb - k, k) per axis, k = floor(nb * keep)), so
    that embedder and detector weigh the bands alike after such a crop. With `block_full` (the blocks a
    crop alignment observes) the observed part of the core, or all observed blocks when less than half
    of the core is observed."""
    nb = config.work_size // config.block
    k = int(np.floor(nb * min(config.design_crops, default=1.0)))
    core = np.zeros((nb, nb), dtype=np.float32)
    lo, hi = (nb - k, k) if 2 * k > nb else (0, nb)
    core[lo:hi, lo:hi] = 1.0
    if block_full is None:
        return core
    seen = core * (block_full > 0)
    return seen if seen.sum() >= 0.5 * core.sum() else (block_full > 0).astype(np.float32)


def _bit_projection(x: np.ndarray, layout: CarrierLayout, weight: np.ndarray) -> np.ndarray:
    """Carriers [..., M] -> per-bit weighted mean de-spread statistic [..., n_bits] (weights [M])."""
    n_bits = layout.count.size
    den = np.maximum(np.bincount(layout.bit_of, weights=weight, minlength=n_bits), 1e-9)
    flat = np.asarray(x, dtype=np.float64).reshape(-1, layout.bit_of.size)
    num = np.stack([np.bincount(layout.bit_of, weights=layout.chip * row * weight, minlength=n_bits)
                    for row in flat])
    return (num / den).reshape(*np.shape(x)[:-1], n_bits)


def _carrier_means(frames: np.ndarray, config: InvisibleConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, H, W, 3] -> (frame-mean carriers [M], band planes [T, nb, nb, K])."""
    planes = np.stack([_band_planes(to_canvas(luma(f), config.work_size)[0], config) for f in frames])
    return planes.mean(axis=0).reshape(-1), planes


def pattern_from_carriers(values: np.ndarray, config: InvisibleConfig) -> np.ndarray:
    """Carrier values [M] -> luma pattern on the canvas [S, S]."""
    nb = config.work_size // config.block
    us, vs = np.array(config.band).T
    coeffs = np.zeros((nb, nb, config.block, config.block), dtype=np.float32)
    coeffs[:, :, us, vs] = np.asarray(values, dtype=np.float32).reshape(nb, nb, -1)
    return block_idct(coeffs)


def apply_pattern(frames: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Add a canvas pattern [S, S] (resized to each frame) to R, G and B of frames [T, H, W, 3] uint8."""
    frames = check_frames(frames)
    offset = resize(pattern, frames.shape[1], frames.shape[2])[..., None]
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):  # frame by frame: bounded float memory for long videos
        out[t] = np.clip(np.rint(frame.astype(np.float32) + offset), 0, 255).astype(np.uint8)
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10.0 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def _corner_crop_masks(config: InvisibleConfig) -> list[np.ndarray]:
    """Carrier masks [M] (1 = block inside) of the corner crops `config.design_crops` (4 corners each)."""
    nb = config.work_size // config.block
    masks = []
    for keep in config.design_crops:
        k = int(np.floor(nb * keep))
        for ys in (slice(0, k), slice(nb - k, nb)):
            for xs in (slice(0, k), slice(nb - k, nb)):
                block = np.zeros((nb, nb))
                block[ys, xs] = 1.0
                masks.append(np.repeat(block.reshape(-1), len(config.band)))
    return masks


def design_pattern(frames: np.ndarray, codeword: np.ndarray, config: InvisibleConfig = InvisibleConfig()) -> np.ndarray:
    """The luma pattern [S, S] carrying `codeword` [n_bits] {0, 1}, designed on frames [T, H, W, 3] uint8
    (the first `config.design_frames` are used). See the module docstring for the steps."""
    frames = check_frames(frames)[:config.design_frames]
    codeword = np.asarray(codeword)
    layout = carrier_layout(config, int(codeword.size))
    signs = 2.0 * codeword.astype(np.float64) - 1.0
    nb = config.work_size // config.block
    n_band = len(config.band)
    host0, planes = _carrier_means(frames, config)
    del planes
    full = carrier_weights(host0.reshape(nb, nb, n_band), config)  # [M]: as the detector weighs the frames

    rng = np.random.default_rng(config.seed + 1)
    probe = config.probe_amplitude * rng.choice(np.array([-1.0, 1.0]), size=layout.bit_of.size)
    probed = apply_pattern(frames, pattern_from_carriers(probe, config))
    hosts, gains, detector_weights = [], [], []
    for attack in config.simulate:
        attacked = attack(frames)
        clean_after = _carrier_means(attacked, config)[0]
        probe_after = _carrier_means(attack(probed), config)[0]
        # survival per (block, band), pooled over the 3x3 neighbouring blocks (one block's carriers are few)
        survived = cv2.boxFilter(((probe_after - clean_after) * probe).reshape(nb, nb, n_band), -1, (3, 3),
                                 normalize=False, borderType=cv2.BORDER_REFLECT)
        power = cv2.boxFilter((probe ** 2).reshape(nb, nb, n_band), -1, (3, 3), normalize=False,
                              borderType=cv2.BORDER_REFLECT)
        gains.append(np.clip(survived / power, 0.0, 1.0).reshape(-1))
        detector_weights.append(carrier_weights(clean_after.reshape(nb, nb, n_band), config))
        hosts.append(_bit_projection(clean_after, layout, detector_weights[-1]))
    del probed
    combine = {"mean": np.mean, "max": np.max}[config.gain_combine]
    g = np.maximum(combine(gains, axis=0) if gains else np.ones(layout.bit_of.size), config.gain_floor)
    gains.append(np.ones(layout.bit_of.size))  # the unattacked video must decode too
    detector_weights.append(full)
    hosts.append(_bit_projection(host0, layout, full))
    for mask in _corner_crop_masks(config):  # and a corner crop of it: the host is cancelled on the rest
        gains.append(mask)
        detector_weights.append(full * mask)
        hosts.append(_bit_projection(host0, layout, full * mask))
    shape = g * full  # carrier amplitude per unit alpha (times chip and sign)
    responses = [np.maximum(np.bincount(layout.bit_of, weights=ga * shape * wa, minlength=codeword.size)
                            / np.maximum(np.bincount(layout.bit_of, weights=wa, minlength=codeword.size), 1e-9),
                            1e-6) for ga, wa in zip(gains, detector_weights)]
    budget = 255.0 ** 2 / 10.0 ** (config.min_psnr_db / 10.0) * config.work_size ** 2 - 0.1 * config.work_size ** 2

    def amplitudes(tau: float, extra: np.ndarray) -> np.ndarray:
        need = extra + np.max([np.maximum(0.0, tau - signs * h) / r for h, r in zip(hosts, responses)], axis=0)
        return np.minimum(need, np.quantile(need, config.give_up_quantile))

    def energy(alpha: np.ndarray) -> float:  # sum of squared carrier values = sum of squared pattern pixels
        return float(np.sum((alpha[layout.bit_of] * shape) ** 2))

    def fit(extra: np.ndarray) -> tuple[float, np.ndarray]:
        lo, hi = 0.0, 64.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if energy(amplitudes(mid, extra)) <= budget else (lo, mid)
        return lo, amplitudes(lo, extra)

    def pattern(alpha: np.ndarray) -> np.ndarray:
        return pattern_from_carriers((signs * alpha)[layout.bit_of] * layout.chip * shape, config)

    tau, alpha = fit(np.zeros(codeword.size))
    for _ in range(config.top_ups):  # re-simulate: lift the bits the linear model over-estimated
        marked = apply_pattern(frames, pattern(alpha))
        extra = np.zeros(codeword.size)
        for attack, response, wa in zip(config.simulate, responses, detector_weights):
            reached = signs * _bit_projection(_carrier_means(attack(marked), config)[0], layout, wa)
            extra = np.maximum(extra, np.maximum(0.0, tau - reached) / response)
        alpha = np.minimum(alpha + extra, np.quantile(alpha + extra, config.give_up_quantile))
        alpha *= min(1.0, np.sqrt(budget / max(energy(alpha), 1e-9)))
    result = pattern(alpha)
    quality = _psnr(apply_pattern(frames, result), frames)  # rounding/resizing can cost a little
    if quality < config.min_psnr_db:
        result *= 10.0 ** ((quality - config.min_psnr_db) / 20.0)
    return result


def embed_codeword(frames: np.ndarray, codeword: np.ndarray, config: InvisibleConfig = InvisibleConfig()) -> np.ndarray:
    """Embed codeword bits [n_bits] {0,1} into every frame of [T, H, W, 3] uint8; returns the same shape."""
    return apply_pattern(frames, design_pattern(frames, codeword, config))


@dataclasses.dataclass(frozen=True)
class CodewordSegment:
    """One decoded piece of a clip: frames [start, end) carry `message`.

    soft: [n_bits] frame-averaged statistics (sign = bit). raw_bit_error_rate: mean over its frames of
    the per-frame hard-decision (pre-aggregation) error rate against the re-encoded message.
    confidence: mean / std of the soft values signed by the decoded codeword (an SNR).
    """
    start: int
    end: int
    message: bytes
    soft: np.ndarray
    raw_bit_error_rate: float
    confidence: float


@dataclasses.dataclass(frozen=True)
class CodewordDetection:
    """Result of `detect_codeword`: `segments` in frame order (empty when nothing decoded), the
    `alignment` (scale_y, scale_x, offset_y, offset_x) in working pixels ((1, 1, 0, 0) = no crop), and
    for the whole clip at that alignment the soft values [n_bits], raw bit error rate and confidence."""
    segments: tuple[CodewordSegment, ...]
    alignment: Alignment
    soft: np.ndarray
    raw_bit_error_rate: float
    confidence: float
    mark_format: int = 3  # `mark_format` of the detector weighting that decoded (the config's when none did)

    @property
    def message(self) -> bytes | None:
        """The message when the whole clip decodes as one segment."""
        return self.segments[0].message if len(self.segments) == 1 else None


def frame_statistics(lumas: np.ndarray, config: InvisibleConfig, n_bits: int,
                     alignment: Alignment = IDENTITY) -> np.ndarray:
    """Observed lumas [T, H, W] -> per-frame bit statistics [T, n_bits] at `alignment` (carriers weighted by
    `carrier_weights` of the frame-mean coefficients, as the embedder designed them; other weights would
    undo the host cancellation, which holds for this combination only)."""
    layout = carrier_layout(config, n_bits)
    nb, b = config.work_size // config.block, config.block
    planes, coverage = [], None
    for y in lumas:
        canvas, coverage = to_canvas(y, config.work_size, alignment)
        planes.append(_band_planes(canvas, config))
    planes = np.stack(planes)
    block_full = coverage.reshape(nb, b, nb, b).min(axis=(1, 3))
    weight = carrier_weights(planes.mean(axis=0), config, block_full)
    return _bit_projection(planes.reshape(len(lumas), -1), layout, weight)


def _decode(soft: np.ndarray, message_bytes: int, config: InvisibleConfig,
            reliability: np.ndarray | None = None) -> bytes | None:
    """Soft bits [n_bits] -> message, or None (sync word off, or Viterbi + CRC fail). `reliability`
    [n_bits] > 0 scales the soft values Viterbi sees (sync-word signs are unchanged)."""
    hard = (soft > 0).astype(np.uint8)
    if int(np.sum(hard[:coding.SYNC_BITS.size] == coding.SYNC_BITS)) < config.min_sync_agreement:
        return None
    if reliability is not None:
        soft = soft * reliability
    return coding.decode_codeword(soft / (np.abs(soft).mean() + 1e-12), message_bytes)


def _quality(per_frame: np.ndarray, soft: np.ndarray, message: bytes | None) -> tuple[float, float]:
    """(raw per-frame bit error rate, confidence) against the message's codeword (or the soft signs)."""
    truth = 2.0 * coding.encode_codeword(message) - 1.0 if message is not None else np.sign(soft)
    raw_ber = float(np.mean(np.sign(per_frame) != truth[None]))
    signed = soft * truth
    return raw_ber, float(np.mean(signed) / (np.std(signed) + 1e-12))


def _segment(per_frame: np.ndarray, start: int, end: int, message: bytes) -> CodewordSegment:
    soft = per_frame[start:end].mean(axis=0)
    raw_ber, confidence = _quality(per_frame[start:end], soft, message)
    return CodewordSegment(start, end, message, soft, raw_ber, confidence)


def decode_segments(per_frame: np.ndarray, message_bytes: int, config: InvisibleConfig,
                    reliability: np.ndarray | None = None) -> tuple[CodewordSegment, ...]:
    """Per-frame statistics [T, n_bits] -> decoded segments: the whole clip as one when it decodes and
    no window of it decodes to another message, else the runs of sliding windows (`config.window`
    frames, stride window / 5; clips of at least two windows) that decode to the same message.
    `reliability` [n_bits]: see `_decode`."""
    t = per_frame.shape[0]
    whole = _decode(per_frame.mean(axis=0), message_bytes, config, reliability)
    w = config.window
    runs: list[list] = []  # [start, end, message]
    if t >= 2 * w:
        starts = sorted(set(range(0, t - w + 1, max(1, w // 5))) | {t - w})
        cumulative = np.concatenate([np.zeros((1, per_frame.shape[1])), np.cumsum(per_frame, axis=0)])
        for s in starts:
            message = _decode((cumulative[s + w] - cumulative[s]) / w, message_bytes, config, reliability)
            if message is None:
                continue
            if runs and runs[-1][2] == message and s <= runs[-1][1]:
                runs[-1][1] = s + w
            else:
                runs.append([s, s + w, message])
        for previous, current in zip(runs, runs[1:]):  # neighbours: split where the frames switch codeword
            a, b = (2.0 * coding.encode_codeword(m) - 1.0 for m in (previous[2], current[2]))
            lo, hi = previous[0] + 1, current[1] - 1
            prefer_a = per_frame[lo - 1:hi] @ (a - b)  # > 0: frame looks like the first message
            split = lo - 1 + int(np.argmax(np.concatenate([[0.0], np.cumsum(prefer_a)])))
            previous[1] = current[0] = max(lo, min(hi, split))
    distinct = {m for _, _, m in runs}
    if whole is not None and distinct <= {whole}:  # one mark throughout (windows may be too weak)
        return (_segment(per_frame, 0, t, whole),)
    if runs:  # several marks (pieces of different videos), or one that only decodes piecewise
        return tuple(_segment(per_frame, s, e, m) for s, e, m in runs if e > s)
    return (_segment(per_frame, 0, t, whole),) if whole is not None else ()


def _sync_template(config: InvisibleConfig, layout: CarrierLayout) -> np.ndarray:
    """Spatial pattern [S, S] of the sync-word carriers alone."""
    n_sync = coding.SYNC_BITS.size
    signs = 2.0 * coding.SYNC_BITS.astype(np.float32) - 1.0
    is_sync = layout.bit_of < n_sync
    values = np.where(is_sync, signs[np.minimum(layout.bit_of, n_sync - 1)] * layout.chip, 0.0)
    return pattern_from_carriers(values, config)


def _candidate_scales(height: int, width: int, config: InvisibleConfig) -> list[tuple[float, float]]:
    """Kept fractions (sy, sx) to search: every canvas size `n` in [S * min_crop_fraction, S) (`to_canvas`
    places a frame on whole canvas pixels, so a coarser grid of fractions misses sizes a crop has), equal
    per axis, and, for a non-square crop, the ones that make the original square (the product renders
    square frames)."""
    s = config.work_size
    scales = []
    longest = max(height, width)
    for n in range(s, int(np.ceil(s * config.min_crop_fraction)) - 1, -1):
        f = n / s
        scales.append((f, f))
        if height != width:
            scales.append((round(f * height / longest, 4), round(f * width / longest, 4)))
    return [sc for sc in dict.fromkeys(scales) if sc != (1.0, 1.0)]


def _sync_offset(z: np.ndarray, template_f: np.ndarray, size: int) -> tuple[int, int]:
    """Offset (oy, ox) of a resized luma [hh, ww] on the canvas that best matches the sync pattern."""
    hh, ww = z.shape
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[:hh, :ww] = z - cv2.GaussianBlur(z, (0, 0), 3.0)
    corr = np.fft.irfft2(np.conj(np.fft.rfft2(canvas)) * template_f, s=(size, size))[:size - hh + 1, :size - ww + 1]
    oy, ox = np.unravel_index(int(np.argmax(corr)), corr.shape)
    return int(oy), int(ox)


def _aligned_soft(mean_luma: np.ndarray, config: InvisibleConfig, layout: CarrierLayout,
                  alignment: Alignment) -> tuple[np.ndarray, float, np.ndarray]:
    """Bit statistics [n_bits] of a frame-mean luma [H, W] at `alignment` (equal to the mean of the
    per-frame statistics, by linearity) and their coherence score: mean p_k^2 with the true chips over
    the same with scrambled chips (host only) - about 1 where no mark lines up with the carriers, well
    above 1 at the mark's alignment, comparable across scales - and each bit's reliability [n_bits]
    (mean 1): the inverse of `sum_j (w_j x_j)^2 / (sum_j w_j)^2`, the variance of its statistic if every
    carrier's error under a re-encode scaled with the content it carries (bits with fewer observed
    carriers, or carriers in busy blocks, are noisier after a crop and a re-encode). Carriers are weighted
    by `carrier_weights` of the mean luma, as in `frame_statistics`."""
    nb, b = config.work_size // config.block, config.block
    canvas, coverage = to_canvas(mean_luma, config.work_size, alignment)
    planes = _band_planes(canvas, config)
    block_full = coverage.reshape(nb, b, nb, b).min(axis=(1, 3))
    weight = carrier_weights(planes, config, block_full)
    x = planes.reshape(-1).astype(np.float64)
    n_bits = layout.count.size
    den = np.maximum(np.bincount(layout.bit_of, weights=weight, minlength=n_bits), 1e-9)
    soft = np.bincount(layout.bit_of, weights=layout.chip * x * weight, minlength=n_bits) / den
    scrambled = np.bincount(layout.bit_of, weights=_scramble(layout.bit_of.size) * layout.chip * x * weight,
                            minlength=n_bits) / den
    spread = np.bincount(layout.bit_of, weights=(x * weight) ** 2, minlength=n_bits) / den ** 2
    reliability = 1.0 / np.maximum(spread, 1e-12)
    return (soft, float(np.mean(soft ** 2) / max(np.mean(scrambled ** 2), 1e-12)),
            reliability / reliability.mean())


def alignment_score(mean_luma: np.ndarray, config: InvisibleConfig, layout: CarrierLayout,
                    alignment: Alignment) -> float:
    """The coherence score of `_aligned_soft`."""
    return _aligned_soft(mean_luma, config, layout, alignment)[1]


@functools.lru_cache(maxsize=4)
def _scramble(m: int) -> np.ndarray:
    return np.random.default_rng(0x5C4A).choice(np.array([-1.0, 1.0]), size=m)


def _search_alignments(lumas: np.ndarray, config: InvisibleConfig, layout: CarrierLayout,
                       message_bytes: int) -> list[Alignment]:
    """Crop alignments to decode, most promising first. Candidates: for every kept fraction the four
    corner offsets and the offset the sync pattern correlates best with. Those whose frame-mean
    statistics already decode come first (best coherence score first, as found), then all of them
    refined by a local search over offset (+-1 px) and size (+-2 px) on the score, then the refined
    best-scoring others."""
    s = config.work_size
    template_f = np.fft.rfft2(_sync_template(config, layout))
    mean_luma = lumas.mean(axis=0)
    corners, synced = set(), set()
    for sy, sx in _candidate_scales(*mean_luma.shape, config):
        hh, ww = int(round(s * sy)), int(round(s * sx))
        corners.update((sy, sx, oy, ox) for oy, ox in ((0, 0), (0, s - ww), (s - hh, 0), (s - hh, s - ww)))
        synced.add((sy, sx, *_sync_offset(resize(mean_luma, hh, ww), template_f, s)))
    decoded, scored = [], []
    for alignment in sorted(corners | synced):
        soft, score, reliability = _aligned_soft(mean_luma, config, layout, alignment)
        scored.append((score, alignment))
        # the reliability-weighted second try only at corner offsets: the sync-matched offsets are chosen
        # for their sync word, so they pass its check far more often on unmarked frames (more CRC trials)
        if _decode(soft, message_bytes, config) is not None or (
                alignment in corners and _decode(soft, message_bytes, config, reliability) is not None):
            decoded.append((score, alignment))
    decoded = sorted(decoded, key=lambda v: -v[0])[:4]
    order = decoded + sorted(scored, key=lambda v: -v[0])[:config.candidates_decoded]
    refined = [alignment for _, alignment in decoded]  # as found too: the score can climb away from them
    for score, (sy, sx, oy, ox) in order:
        best = (score, (sy, sx, oy, ox))
        for _ in range(2):  # coordinate ascent
            _, (by, bx, boy, box) = best
            for dsy in (-2.0 / s, -1.0 / s, 0.0, 1.0 / s, 2.0 / s):  # +-1 and 2 canvas pixels
                nsy, nsx = round(by + dsy, 6), round(bx + dsy * bx / by, 6)
                hh, ww = int(round(s * nsy)), int(round(s * nsx))
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        a = (nsy, nsx, boy + dy, box + dx)
                        if (dsy and (dy or dx)) or nsy > 1.0 or nsx > 1.0 or min(a[2], a[3]) < 0 \
                                or a[2] + hh > s or a[3] + ww > s:
                            continue
                        sc = _aligned_soft(mean_luma, config, layout, a)[1]
                        if sc > best[0]:
                            best = (sc, a)
        if best[1] not in refined:
            refined.append(best[1])
    return refined


def mark_format(config: InvisibleConfig) -> int:
    """Mark format of a config's detector weighting: 3 with `host_clip` carrier weights (this version), 2
    with the plain band weights (host_clip None, what earlier versions designed for). The carriers are the
    same, so a format-2 mark often decodes with the format-3 weights already (then 3 is reported)."""
    return 2 if config.host_clip is None else 3


def detect_codeword(frames: np.ndarray, message_bytes: int, config: InvisibleConfig = InvisibleConfig(),
                    search_crops: bool = True) -> CodewordDetection:
    """Blind detection in frames [T, H, W, 3] uint8 of codewords carrying `message_bytes` bytes. When
    nothing decodes with a format-3 config, the format-2 weighting (host_clip None) is tried too, so
    videos marked by earlier versions stay detectable; `mark_format` says which one decoded."""
    found = _detect_codeword(frames, message_bytes, config, search_crops)
    if found.segments or config.host_clip is None:
        return found
    legacy = _detect_codeword(frames, message_bytes, dataclasses.replace(config, host_clip=None), search_crops)
    return legacy if legacy.segments else found


def _detect_codeword(frames: np.ndarray, message_bytes: int, config: InvisibleConfig,
                     search_crops: bool) -> CodewordDetection:
    frames = check_frames(frames)
    n_bits = coding.codeword_length(message_bytes)
    layout = carrier_layout(config, n_bits)
    lumas = np.stack([luma(f) for f in frames])

    def at(alignment: Alignment) -> CodewordDetection:
        per_frame = frame_statistics(lumas, config, n_bits, alignment)
        segments = decode_segments(per_frame, message_bytes, config)
        if not segments:  # again with each bit weighted by its reliability
            reliability = _aligned_soft(lumas.mean(axis=0), config, layout, alignment)[2]
            segments = decode_segments(per_frame, message_bytes, config, reliability)
        soft = per_frame.mean(axis=0)
        raw_ber, confidence = _quality(per_frame, soft, segments[0].message if len(segments) == 1 else None)
        return CodewordDetection(segments, alignment, soft, raw_ber, confidence, mark_format(config))

    best = at(IDENTITY)
    if best.segments or not search_crops:
        return best
    for alignment in _search_alignments(lumas, config, layout, message_bytes):
        found = at(alignment)
        if found.segments:
            return found
    return best

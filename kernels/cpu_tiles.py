"""CPU tile compositor: the 2D rasterization stage written for XLA:CPU (no Pallas interpreter).

`rasterize_to_pixels_cpu` takes the projected Gaussians and returns the image and final
transmittance, like `render/reference.py` and the Pallas path, with the compositing rules of
`kernels/conventions.py` (alpha cap, ALPHA_THRESHOLD, stop rule), so every backend follows one convention.

Tiling. Gaussians are binned to the caller's tiles (`packed_binning.bin_gaussians_packed`, the
same list as `binning.bin_gaussians`). Each tile is then split into s x s sub-tiles and every
tile's depth-sorted list into one list per sub-tile, keeping only the Gaussians whose
alpha >= ALPHA_MIN support box (the ellipse sigma <= log(opacity / ALPHA_MIN), padded by a small
safety margin) reaches a pixel centre of the sub-tile. A pixel outside that box fails the
ALPHA_MIN test anyway, so the image is unchanged while a small Gaussian is evaluated on a few
sub-tiles instead of every pixel of its tiles.

Work layout. A sub-tile's list is cut into chunks of K Gaussians; chunk r holds its Gaussians
r*K .. r*K+K-1. The compositor runs in *rounds*: round r evaluates chunk r of every sub-tile that
still has live pixels, B sub-tiles at a time as one dense [B, K, P] block (P pixels per sub-tile).
Inside a block the transmittance is a running product over the K Gaussians seeded with the
sub-tile's transmittance carried from earlier rounds; a sub-tile whose pixels have all stopped
leaves the work list (early exit). A round holds at most one chunk per sub-tile, so carries are
plain gathers/scatters.

Early termination, vectorised: with a_k the alpha of Gaussian k where it is not skipped (0 where
skipped), T_k = prod_{m<=k} (1 - a_m) is non-increasing, so the pixels that have not stopped are
a prefix; Gaussian k is blended iff it is not skipped and `_continues(T_k)`.

Backward (custom_vjp). The forward keeps, per chunk, the transmittance in front of it [Q, P] and
per sub-tile the number of rounds it took part in; the backward walks those rounds back to front,
recomputes each block's alphas and transmittances exactly as the forward did (same arithmetic, so
the same blended set), and carries per sub-tile the colour-behind sum S = sum_{k later} w_k (c_k . g),
w_k = a_k T_{k-1}. With incoming cotangents g = dL/dC [P, D] and g_T = dL/dT_final [P]:

    dL/dc_j     = sum_p w_j g
    dL/dalpha_j = T_{j-1} (c_j . g) - (S_j + T_final g_T) / (1 - a_j)

(zero where alpha was clamped at the alpha cap), chained to sigma, the 2D mean, conic and opacity.
S is summed from the back, never formed as total - prefix, so it stays accurate behind opaque
Gaussians. Per-intersection gradients are scatter-added into per-Gaussian rows in a fixed order
(deterministic).

Batching. The loops' trip counts depend on the data, and `jax.vmap` of a data-dependent
`while_loop` would run every frame for the longest one and copy the carried buffers each step. So
the forward and backward are `jax.custom_batching.custom_vmap` functions whose batching rule folds
the batch into the sub-tile axis (B frames = B x more sub-tiles) and runs one loop.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax.kernels.conventions import ALPHA_THRESHOLD as ALPHA_MIN
from ggtalker_jax.kernels.conventions import GSPLAT, Conventions, pixel_done
from ggtalker_jax.kernels.binning import bin_gaussians, tile_rects
from ggtalker_jax.kernels.packed_binning import bin_gaussians_packed, packed_keys_fit, prefix_sum

# Per-Gaussian geometry columns gathered per chunk: mean x, mean y, conic a, b, c, opacity.
_GEOM = 6
# Support boxes are widened by this factor and margin (pixels) against float rounding at the edge.
_BOX_SCALE, _BOX_MARGIN = 1.01, 0.05


@dataclasses.dataclass(frozen=True)
class CpuTileGrid:
    """Static description: the caller's tile grid of one camera, its sub-tiling and the block shape."""

    tile_size: int
    tile_width: int
    tile_height: int
    sub_tiles: int = 2  # s: each tile is split into s x s sub-tiles of tile_size // s pixels
    chunk: int = 32  # K: Gaussians of one sub-tile evaluated together
    tiles_per_block: int = 16  # B: sub-tiles evaluated together in one block
    conventions: Conventions = GSPLAT  # alpha cap and stop rule (`kernels/conventions.py`)

    def __post_init__(self):
        if self.tile_size % self.sub_tiles:
            raise ValueError(f"CpuTileGrid: sub_tiles={self.sub_tiles} must divide tile_size={self.tile_size}")

    @property
    def n_tiles(self) -> int:
        return self.tile_width * self.tile_height

    @property
    def sub_size(self) -> int:
        return self.tile_size // self.sub_tiles

    @property
    def subs_per_tile(self) -> int:
        return self.sub_tiles * self.sub_tiles

    @property
    def pixels_per_sub(self) -> int:
        return self.sub_size * self.sub_size

    @property
    def pixel_offsets(self):
        """Pixel centres relative to the sub-tile centre: x, y [P] float32 (row-major)."""
        p = np.arange(self.pixels_per_sub)
        half = 0.5 * self.sub_size
        return (jnp.asarray(p % self.sub_size + 0.5 - half, jnp.float32),
                jnp.asarray(p // self.sub_size + 0.5 - half, jnp.float32))

    @property
    def moment_basis(self):
        """[P, 6]: 1, x, y, x^2, x y, y^2 of `pixel_offsets` (pixel moments of a per-pixel quantity)."""
        x, y = self.pixel_offsets
        return jnp.stack([jnp.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)

    def max_chunks(self, n_slots: int, n_subs_total: int) -> int:
        """Static bound on the chunks of `n_slots` list entries over `n_subs_total` sub-tiles."""
        return -(-n_slots // self.chunk) + n_subs_total


def _continues(t_after, conventions: Conventions):
    """True where a pixel keeps compositing after a Gaussian leaves transmittance `t_after`."""
    return ~pixel_done(t_after, conventions)


# --------------------------------------------------------------------------------------------------
# Sub-tile lists (index work, no gradients).


def support_boxes(means2d, conics, opacities):
    """Box of pixel centres where a Gaussian can reach alpha >= ALPHA_MIN: [M, 4] (x_lo, x_hi, y_lo, y_hi).

    alpha = opacity exp(-sigma) >= ALPHA_MIN iff sigma <= L = log(opacity / ALPHA_MIN); the ellipse
    0.5 d^T C d <= L has half-widths sqrt(2 L Sigma_xx), sqrt(2 L Sigma_yy) with Sigma = C^-1.
    Empty (x_lo > x_hi) when opacity < ALPHA_MIN; unbounded when the conic is not positive definite.
    """
    means2d, conics, opacities = (jax.lax.stop_gradient(x) for x in (means2d, conics, opacities))
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    det = a * c - b * b
    level = jnp.log(jnp.maximum(opacities, 1e-30) / ALPHA_MIN)
    pd = (det > 0) & (a > 0) & (c > 0)
    safe_det = jnp.where(pd, det, 1.0)
    half_x = jnp.where(pd, jnp.sqrt(2.0 * jnp.maximum(level, 0.0) * c / safe_det), jnp.inf)
    half_y = jnp.where(pd, jnp.sqrt(2.0 * jnp.maximum(level, 0.0) * a / safe_det), jnp.inf)
    half_x, half_y = half_x * _BOX_SCALE + _BOX_MARGIN, half_y * _BOX_SCALE + _BOX_MARGIN
    visible = level >= 0.0
    x_lo = jnp.where(visible, means2d[:, 0] - half_x, jnp.inf)
    y_lo = jnp.where(visible, means2d[:, 1] - half_y, jnp.inf)
    return jnp.stack([x_lo, means2d[:, 0] + half_x, y_lo, means2d[:, 1] + half_y], axis=-1)


def sub_tile_origins(grid: CpuTileGrid, num_cameras: int):
    """Top-left pixel (x, y) of every sub-tile [C * n_tiles * s^2, 2] float32, in list order
    (camera, tile row-major, sub-tile row-major)."""
    s, sub = grid.sub_tiles, grid.sub_size
    ty, tx, qy, qx = np.meshgrid(np.arange(grid.tile_height), np.arange(grid.tile_width), np.arange(s), np.arange(s),
                                 indexing="ij")
    origins = np.stack([tx * grid.tile_size + qx * sub, ty * grid.tile_size + qy * sub], -1).reshape(-1, 2)
    return jnp.asarray(np.tile(origins, (num_cameras, 1)), jnp.float32)


def sub_tile_lists(grid: CpuTileGrid, flat_ids, tile_starts, tile_ends, boxes):
    """Split every tile's list into its s^2 sub-tile lists, keeping depth order.

    flat_ids [S], tile_starts / tile_ends [T] (a `Binning`), boxes [M, 4] from `support_boxes`.
    Returns sub_ids [s^2 * S] (entries outside every range are unused), sub_starts / sub_ends
    [T * s^2] int32 in the order of `sub_tile_origins`. Sub-tile q of tile t lives in the q-th
    S-long segment, at the rank of its entries among those of sub-tile q: no sort.
    """
    n_slots, n_tiles_total = flat_ids.shape[0], tile_starts.shape[0]
    s, sub, n_sub = grid.sub_tiles, grid.sub_size, grid.subs_per_tile
    lengths = tile_ends - tile_starts
    # Tile of each slot: the k-th non-empty tile, k = number of non-empty tile starts at or before it - 1.
    nonempty = lengths > 0
    marks = jnp.zeros((n_slots + 1,), jnp.int32).at[tile_starts].add(nonempty.astype(jnp.int32))
    (nonempty_tiles,) = jnp.nonzero(nonempty, size=n_tiles_total, fill_value=n_tiles_total - 1)
    kth = jnp.clip(prefix_sum(marks[:n_slots]) - 1, 0, n_tiles_total - 1)
    slot_tile = nonempty_tiles.astype(jnp.int32)[kth]
    slots = jnp.arange(n_slots, dtype=jnp.int32)
    used = (slots >= tile_starts[slot_tile]) & (slots < tile_ends[slot_tile])
    box = boxes[jnp.clip(flat_ids, 0, boxes.shape[0] - 1)]  # [S, 4]
    local = slot_tile % grid.n_tiles
    first_x = ((local % grid.tile_width) * grid.tile_size).astype(jnp.float32) + 0.5  # first pixel centre
    first_y = ((local // grid.tile_width) * grid.tile_size).astype(jnp.float32) + 0.5
    offsets = jnp.arange(s, dtype=jnp.float32) * sub
    lo_x, lo_y = first_x[:, None] + offsets, first_y[:, None] + offsets  # [S, s] first centre per sub-tile
    hit_x = (box[:, 1:2] >= lo_x) & (box[:, 0:1] <= lo_x + (sub - 1))
    hit_y = (box[:, 3:4] >= lo_y) & (box[:, 2:3] <= lo_y + (sub - 1))
    hit = (hit_y[:, :, None] & hit_x[:, None, :]).reshape(n_slots, n_sub) & used[:, None]  # [S, s^2]
    return _compact_hits(hit, flat_ids, tile_starts, tile_ends)


def _compact_hits(hit, flat_ids, tile_starts, tile_ends):
    """Sub-tile lists from a hit mask [S, s^2] over a tile-sorted list flat_ids [S] with tile ranges
    [T]: segment q of sub_ids [s^2 * S] holds the entries hitting sub-tile q, in list order."""
    n_slots, n_sub = hit.shape
    rank_incl = prefix_sum(hit.astype(jnp.int32))
    prefix = jnp.concatenate([jnp.zeros((1, n_sub), jnp.int32), rank_incl], axis=0)  # [S + 1, s^2]
    segment = (jnp.arange(n_sub, dtype=jnp.int32) * n_slots)[None, :]
    dest = jnp.where(hit, segment + rank_incl - 1, n_sub * n_slots)  # out of range -> dropped
    sub_ids = jnp.full((n_sub * n_slots,), -1, jnp.int32).at[dest.reshape(-1)].set(
        jnp.broadcast_to(flat_ids[:, None], hit.shape).reshape(-1), mode="drop")
    sub_starts = (segment + prefix[tile_starts]).reshape(-1)
    sub_ends = (segment + prefix[tile_ends]).reshape(-1)
    return sub_ids, sub_starts.astype(jnp.int32), sub_ends.astype(jnp.int32)


def sub_tile_keys_fit(grid: CpuTileGrid, num_cameras: int, num_gaussians: int) -> bool:
    """Whether `bin_sub_tiles`' keys (tile, depth rank, s^2 hit bits) fit in an int32."""
    return (num_cameras * grid.n_tiles + 1) * max(num_gaussians, 1) * (1 << grid.subs_per_tile) <= 2**31 - 1


def bin_sub_tiles(grid: CpuTileGrid, means2d, depths, radii, boxes, capacity: int):
    """Binning and sub-tile split in one pass: the lists of `sub_tile_lists(bin_gaussians(...))`.

    The tile list is built as in `packed_binning.bin_gaussians_packed` (same order, same overflow
    rule), with each intersection's s^2 sub-tile hit bits computed before the sort from the
    Gaussian's support box and carried in the low bits of its int32 key, so that no per-entry
    tile search or box gather is needed after it. Needs `sub_tile_keys_fit`.
    means2d [C, N, 2], depths [C, N], radii as `tile_rects` takes them, boxes [C * N, 4].
    Returns sub_ids, sub_starts, sub_ends (as `sub_tile_lists`), n_intersections [], overflow [].
    """
    num_cameras, n = depths.shape
    ts, tw, th, s, sub = grid.tile_size, grid.tile_width, grid.tile_height, grid.sub_tiles, grid.sub_size
    n_tiles, n_sub = grid.n_tiles, grid.subs_per_tile
    if not sub_tile_keys_fit(grid, num_cameras, n):
        raise ValueError("bin_sub_tiles: keys do not fit in int32; use sub_tile_lists(bin_gaussians(...))")
    x0, y0, x1, y1 = (r.reshape(-1) for r in tile_rects(means2d, radii, ts, tw, th))
    # Sub-tile columns / rows (image-wide) whose pixel centres the support box reaches, clipped.
    limit = float(max(tw, th) * s)
    first = lambda lo: jnp.clip(jnp.ceil((lo - (sub - 0.5)) / sub), -1.0, limit).astype(jnp.int32)
    last = lambda hi: jnp.clip(jnp.floor((hi - 0.5) / sub), -1.0, limit).astype(jnp.int32)
    order = jnp.argsort(jax.lax.stop_gradient(depths), axis=1, stable=True).astype(jnp.int32)  # [C, N]
    by_depth = ((jnp.arange(num_cameras, dtype=jnp.int32) * n)[:, None] + order).reshape(-1)
    table = jnp.stack([x0, y0, x1 - x0, y1 - y0, first(boxes[:, 0]), last(boxes[:, 1]), first(boxes[:, 2]),
                       last(boxes[:, 3])], axis=-1)[by_depth]  # [C * N, 8] in (camera, depth rank) order
    counts = table[:, 2] * table[:, 3]
    ends = jnp.cumsum(counts)
    offsets = ends - counts
    n_isect = ends[-1]
    has_work = counts > 0
    marks = jnp.zeros((capacity + 1,), jnp.int32).at[jnp.minimum(offsets, capacity)].add(has_work.astype(jnp.int32))
    (working,) = jnp.nonzero(has_work, size=num_cameras * n, fill_value=num_cameras * n - 1)
    working = working.astype(jnp.int32)
    rows = jnp.concatenate([table, offsets[:, None], jnp.arange(num_cameras * n, dtype=jnp.int32)[:, None]],
                           axis=-1)[working]  # one row per Gaussian with work
    slots = jnp.arange(capacity, dtype=jnp.int32)
    row = rows[jnp.clip(prefix_sum(marks[:capacity]) - 1, 0, num_cameras * n - 1)]  # [S, 10] owner of each slot
    local = slots - row[:, 8]
    w = jnp.maximum(row[:, 2], 1)
    tile_x, tile_y = row[:, 0] + local % w, row[:, 1] + local // w
    owner = row[:, 9]  # flat (camera, depth rank)
    camera = owner // n
    bits = jnp.zeros_like(slots)
    for qy in range(s):
        hit_y = (row[:, 6] <= tile_y * s + qy) & (tile_y * s + qy <= row[:, 7])
        for qx in range(s):
            hit_x = (row[:, 4] <= tile_x * s + qx) & (tile_x * s + qx <= row[:, 5])
            bits = bits | ((hit_x & hit_y).astype(jnp.int32) << (qy * s + qx))
    tile = camera * n_tiles + tile_y * tw + tile_x
    sentinel = num_cameras * n_tiles
    keys = jnp.where(slots < n_isect, ((tile * n + (owner - camera * n)) << n_sub) | bits, (sentinel * n) << n_sub)
    keys = jax.lax.sort(keys, is_stable=False)  # unique but for the equal sentinels
    rest = keys >> n_sub
    sorted_tile = rest // n
    sorted_camera = jnp.minimum(sorted_tile // n_tiles, num_cameras - 1)
    flat_ids = by_depth[sorted_camera * n + rest - sorted_tile * n]
    q = jnp.arange(n_sub, dtype=jnp.int32)
    hit = (((keys[:, None] >> q) & 1) == 1) & (sorted_tile < sentinel)[:, None]
    per_tile = jnp.zeros((sentinel + 1,), jnp.int32).at[sorted_tile].add(1)[:sentinel]
    tile_ends = jnp.cumsum(per_tile)
    sub_ids, sub_starts, sub_ends = _compact_hits(hit, flat_ids, tile_ends - per_tile, tile_ends)
    return sub_ids, sub_starts, sub_ends, n_isect.astype(jnp.int32), n_isect > capacity


# --------------------------------------------------------------------------------------------------
# Compositing loops over flat sub-tiles.


def _scan_groups(k: int) -> int:
    """Group length G of the two-level running product over a chunk of K (K itself when K is small)."""
    for g in (8, 4):
        if k % g == 0 and k > g:
            return g
    return k


def _lane_order(k: int) -> np.ndarray:
    """Position in the chunk (depth order) of the Gaussian in each of the K lanes of a block.

    Lanes are laid out [G, K / G] (lane = i * K / G + j holds Gaussian j * G + i): the running
    product then steps over i with contiguous [K / G, B, P] slabs, all groups j at once.
    """
    g = _scan_groups(k)
    lane = np.arange(k)
    return (lane % (k // g)) * g + lane // (k // g)


def _running_product(x, init):
    """Products in front of and behind each Gaussian of a block: init * prod_{earlier} x and
    init * prod_{earlier or same} x, both [K, B, P] in lane order, and the product behind the
    whole chunk [B, P]; x [K, B, P] in lane order, init [B, P].

    Two levels (sequential within groups of G consecutive Gaussians, then across the K / G groups):
    far fewer XLA:CPU thunks than K sequential steps; `jnp.cumprod` lowers to a windowed reduction of
    O(K) per entry.
    """
    k = x.shape[0]
    g = _scan_groups(k)
    xg = x.reshape(g, k // g, *x.shape[1:])
    running = [jnp.ones(xg.shape[1:], x.dtype)]
    for i in range(g):
        running.append(running[-1] * xg[i])
    totals = running[-1]  # [K / G, B, P]
    offsets = [init]
    for j in range(k // g - 1):
        offsets.append(offsets[-1] * totals[j])
    chunk_after = offsets[-1] * totals[-1]
    offsets = jnp.stack(offsets)  # [K / G, B, P]
    before = (jnp.stack(running[:-1]) * offsets).reshape(x.shape)
    after = (jnp.stack(running[1:]) * offsets).reshape(x.shape)
    return before, after, chunk_after


def _suffix_sum(x, init):
    """init [B, P] + sum of x over the later Gaussians of the chunk, [K, B, P] in lane order, and
    init + sum of x over the chunk [B, P].

    One matmul with a 0/1 "is later" matrix: exact zeros for the other entries, so each output is a
    plain float sum of its own later terms (no total - prefix cancellation), and a dot is never
    fused into (and recomputed by) its consumers, unlike an unrolled chain of adds.
    """
    order = _lane_order(x.shape[0])
    later = jnp.asarray(order[:, None] > order[None, :], x.dtype)  # later[m, l]: lane m is behind lane l
    behind = jnp.einsum("ml,mbp->lbp", later, x)
    return init[None] + behind, init + jnp.sum(x, axis=0)


class _Block:
    """Chunk r of B sub-tiles evaluated on their pixels. Arrays [K, B, P] (lanes of `_lane_order`).

    gauss [M + 1, 6 + D]: per Gaussian mean x, mean y, conic a, b, c, opacity, colour; the last row
    is all zeros (opacity 0: never blended) and stands for "no Gaussian".
    """

    def __init__(self, grid: CpuTileGrid, gauss, flat_ids, starts, ends, origins, tiles, r):
        k, half = grid.chunk, 0.5 * grid.sub_size
        n_subs_total, n_gauss = starts.shape[0], gauss.shape[0] - 1
        real = tiles < n_subs_total  # [B] padding entries of the work list point past the end
        t = jnp.minimum(tiles, n_subs_total - 1)
        first = starts[t] + r * k
        count = jnp.where(real, jnp.clip(ends[t] - first, 0, k), 0)
        lane = jnp.asarray(_lane_order(k), jnp.int32)[:, None]
        slots = jnp.minimum(first[None, :] + lane, flat_ids.shape[0] - 1)
        self.ids = jnp.where(lane < count[None, :], jnp.clip(flat_ids[slots], 0, n_gauss), n_gauss)  # [K, B]
        self.tiles = jnp.where(real, tiles, n_subs_total)
        g = gauss[self.ids]  # [K, B, 6 + D]
        self.colors = g[:, :, _GEOM:]  # [K, B, D]
        centre = origins[t] + half  # [B, 2] centre of the sub-tile
        # Mean relative to the sub-tile centre (exact), pixel centres likewise: dx = mean_x - pixel_x.
        self.u = g[:, :, 0] - centre[None, :, 0]  # [K, B]
        self.v = g[:, :, 1] - centre[None, :, 1]
        self.a, self.b, self.c = (g[:, :, i, None] for i in (2, 3, 4))
        offset_x, offset_y = (x.astype(g.dtype) for x in grid.pixel_offsets)
        self.dx = self.u[:, :, None] - offset_x
        self.dy = self.v[:, :, None] - offset_y
        self.sigma = 0.5 * (self.a * self.dx * self.dx + self.c * self.dy * self.dy) + self.b * self.dx * self.dy
        self.vis = jnp.exp(-self.sigma)
        self.raw_alpha = g[:, :, 5, None] * self.vis
        self.alpha = jnp.minimum(self.raw_alpha, grid.conventions.alpha_max)
        self.ok = (self.sigma >= 0.0) & (self.alpha >= ALPHA_MIN)
        self.one_minus = 1.0 - jnp.where(self.ok, self.alpha, 0.0)


def _work_list(active, pad: int):
    """Indices of the True entries of `active` [T], then T (padding) to length T + pad; and their count."""
    n = active.shape[0]
    (idx,) = jnp.nonzero(active, size=n + pad, fill_value=n)
    return idx.astype(jnp.int32), jnp.sum(active.astype(jnp.int32))


def _chunk_counts(grid: CpuTileGrid, starts, ends):
    """Chunks per sub-tile [T] and the index of each sub-tile's first chunk [T] in the flat chunk numbering."""
    n_chunks = -(-(ends - starts) // grid.chunk)
    return n_chunks, jnp.cumsum(n_chunks) - n_chunks


def _pad_row(x, value=0):
    return jnp.concatenate([x, jnp.full((1,) + x.shape[1:], value, x.dtype)])


def _gauss_table(geom, colors):
    """[M + 1, 6 + D] per-Gaussian rows read by `_Block` (last row: none)."""
    return _pad_row(jnp.concatenate([geom, colors.astype(geom.dtype)], axis=1))


def _forward_flat(grid: CpuTileGrid, geom, colors, flat_ids, starts, ends, origins):
    """Forward over flat sub-tiles. geom [M, 6], colors [M, D], flat_ids [S], starts/ends [T], origins [T, 2].

    Returns colours [T, P, D], final T [T, P], and residuals: T in front of each chunk [Q, P]
    (rows of chunks never evaluated are undefined) and rounds taken per sub-tile [T] int32.
    """
    n_subs_total = starts.shape[0]
    n_pix, depth_channels, bsz = grid.pixels_per_sub, colors.shape[-1], grid.tiles_per_block
    q_max = grid.max_chunks(flat_ids.shape[0], n_subs_total)
    n_chunks, chunk_offsets = _chunk_counts(grid, starts, ends)
    chunk_offsets = _pad_row(chunk_offsets, q_max)  # padding entries -> dropped writes
    gauss = _gauss_table(geom, colors)

    def round_body(carry):
        r, state, t_in_store, rounds = carry
        active = (n_chunks > r) & jnp.any(_continues(state[:n_subs_total, :, 0], grid.conventions), axis=1)
        work, n_active = _work_list(active, bsz)

        def block_body(inner):
            i, state, t_in_store = inner
            tiles = jax.lax.dynamic_slice(work, (i * bsz,), (bsz,))
            blk = _Block(grid, gauss, flat_ids, starts, ends, origins, tiles, r)
            old = state[blk.tiles]  # [B, P, 2 + D]: running T, final T, colour
            t_before, t_after, t_chunk = _running_product(blk.one_minus, old[:, :, 0])
            blended = blk.ok & _continues(t_after, grid.conventions)
            weights = jnp.where(blended, blk.alpha * t_before, 0.0)
            t_final = jnp.minimum(old[:, :, 1], jnp.min(jnp.where(blended, t_after, 1.0), axis=0))
            color = old[:, :, 2:] + jnp.sum(weights[..., None] * blk.colors[:, :, None, :], axis=0)
            state = state.at[blk.tiles].set(jnp.concatenate([t_chunk[..., None], t_final[..., None], color], -1))
            t_in_store = t_in_store.at[chunk_offsets[blk.tiles] + r].set(old[:, :, 0], mode="drop")
            return i + 1, state, t_in_store

        _, state, t_in_store = jax.lax.while_loop(lambda inner: inner[0] * bsz < n_active, block_body,
                                                  (jnp.int32(0), state, t_in_store))
        return r + 1, state, t_in_store, rounds + active.astype(jnp.int32)

    max_rounds = jnp.max(n_chunks)
    dtype = gauss.dtype
    state = jnp.concatenate([jnp.ones((n_subs_total + 1, n_pix, 2), dtype),
                             jnp.zeros((n_subs_total + 1, n_pix, depth_channels), dtype)], axis=-1)
    init = (jnp.int32(0), state, jnp.zeros((q_max, n_pix), dtype), jnp.zeros((n_subs_total,), jnp.int32))
    _, state, t_in_store, rounds = jax.lax.while_loop(lambda c: c[0] < max_rounds, round_body, init)
    return state[:n_subs_total, :, 2:], state[:n_subs_total, :, 1], t_in_store, rounds


def _backward_flat(grid: CpuTileGrid, geom, colors, flat_ids, starts, ends, origins, t_final, t_in_store, rounds,
                   g_colors, g_t_final):
    """Gradients d_geom [M, 6], d_colors [M, D] of `_forward_flat` from its residuals and the
    cotangents g_colors [T, P, D], g_t_final [T, P]."""
    n_gauss, depth_channels, bsz = geom.shape[0], colors.shape[-1], grid.tiles_per_block
    _, chunk_offsets = _chunk_counts(grid, starts, ends)
    chunk_offsets = _pad_row(chunk_offsets)
    gauss = _gauss_table(geom, colors)
    # Per sub-tile: T_final g_T (the background / alpha term of dL/dalpha), then g [T + 1, P, 1 + D].
    per_tile = _pad_row(jnp.concatenate([(t_final * g_t_final)[..., None], g_colors], axis=-1).astype(gauss.dtype))
    basis = grid.moment_basis.astype(gauss.dtype)  # [P, 6]

    def round_body(carry):
        r, s_behind, d_rows = carry
        work, n_active = _work_list(rounds > r, bsz)

        def block_body(inner):
            i, s_behind, d_rows = inner
            tiles = jax.lax.dynamic_slice(work, (i * bsz,), (bsz,))
            blk = _Block(grid, gauss, flat_ids, starts, ends, origins, tiles, r)
            t_in = t_in_store[jnp.minimum(chunk_offsets[blk.tiles] + r, t_in_store.shape[0] - 1)]
            t_before, t_after, _ = _running_product(blk.one_minus, t_in)
            blended = blk.ok & _continues(t_after, grid.conventions)
            weights = jnp.where(blended, blk.alpha * t_before, 0.0)
            tile = per_tile[blk.tiles]  # [B, P, 1 + D]
            g = tile[:, :, 1:]
            # c . g and sum_p w g per channel (D is small): elementwise, no batched dot whose batch axis
            # B sits inside the lane-major layout (XLA would transpose around it).
            depth_channels = g.shape[-1]
            c_dot_g = sum(blk.colors[:, :, d, None] * g[None, :, :, d] for d in range(depth_channels))
            s_after, s_out = _suffix_sum(weights * c_dot_g, s_behind[blk.tiles])
            d_alpha = t_before * c_dot_g - (s_after + tile[None, :, :, 0]) / (1.0 - blk.alpha)
            d_alpha = jnp.where(blended & (blk.raw_alpha <= grid.conventions.alpha_max), d_alpha, 0.0)
            d_sigma = -blk.raw_alpha * d_alpha
            # Pixel moments of d_sigma (one matmul), expanded into sum d_sigma dx, dy, dx^2, dx dy, dy^2.
            m = jnp.einsum("kbp,pf->kbf", d_sigma, basis)
            u, v = blk.u, blk.v
            s_x, s_y = u * m[..., 0] - m[..., 1], v * m[..., 0] - m[..., 2]
            s_xx = u * u * m[..., 0] - 2.0 * u * m[..., 1] + m[..., 3]
            s_xy = u * v * m[..., 0] - u * m[..., 2] - v * m[..., 1] + m[..., 4]
            s_yy = v * v * m[..., 0] - 2.0 * v * m[..., 2] + m[..., 5]
            a, b, c = blk.a[..., 0], blk.b[..., 0], blk.c[..., 0]
            rows = jnp.stack([a * s_x + b * s_y, b * s_x + c * s_y, 0.5 * s_xx, s_xy, 0.5 * s_yy,
                              jnp.sum(blk.vis * d_alpha, axis=-1)], axis=-1)  # [K, B, 6]
            d_col = jnp.stack([jnp.sum(weights * g[None, :, :, d], axis=-1) for d in range(depth_channels)], -1)
            d_rows = d_rows.at[blk.ids].add(jnp.concatenate([rows, d_col], axis=-1))
            s_behind = s_behind.at[blk.tiles].set(s_out)
            return i + 1, s_behind, d_rows

        _, s_behind, d_rows = jax.lax.while_loop(lambda inner: inner[0] * bsz < n_active, block_body,
                                                 (jnp.int32(0), s_behind, d_rows))
        return r - 1, s_behind, d_rows

    init = (jnp.max(rounds) - 1, jnp.zeros((starts.shape[0] + 1, grid.pixels_per_sub), gauss.dtype),
            jnp.zeros((n_gauss + 1, _GEOM + depth_channels), gauss.dtype))
    _, _, d_rows = jax.lax.while_loop(lambda c: c[0] >= 0, round_body, init)
    return d_rows[:n_gauss, :_GEOM], d_rows[:n_gauss, _GEOM:]


# --------------------------------------------------------------------------------------------------
# Batching: fold a vmapped batch into the sub-tile axis and run one loop.


def _bcast(x, batched, size):
    return x if batched else jnp.broadcast_to(x, (size,) + x.shape)


def _fold(size, geom, colors, flat_ids, starts, ends, origins):
    """[B, ...] per-frame inputs -> one flat problem with B x the Gaussians, list entries and sub-tiles."""
    n_gauss, n_slots = geom.shape[1], flat_ids.shape[1]
    frame = jnp.arange(size, dtype=jnp.int32)[:, None]
    flat = lambda x: x.reshape(size * x.shape[1], *x.shape[2:])
    return (flat(geom), flat(colors), (flat_ids + frame * n_gauss).reshape(-1), (starts + frame * n_slots).reshape(-1),
            (ends + frame * n_slots).reshape(-1), flat(origins))


@functools.lru_cache(maxsize=None)
def _ops(grid: CpuTileGrid):
    """Forward and backward for `grid` as custom_vmap functions (cached per grid)."""

    @jax.custom_batching.custom_vmap
    def forward(geom, colors, flat_ids, starts, ends, origins):
        return _forward_flat(grid, geom, colors, flat_ids, starts, ends, origins)

    @forward.def_vmap
    def forward_vmap(size, in_batched, *args):
        args = [_bcast(x, b, size) for x, b in zip(args, in_batched)]
        n_subs, n_slots = args[3].shape[1], args[2].shape[1]
        acc, t_final, t_in_store, rounds = forward(*_fold(size, *args))
        q_max = grid.max_chunks(n_slots, n_subs)  # per frame; the folded store is at most size * q_max long
        t_in_store = jnp.pad(t_in_store, ((0, size * q_max - t_in_store.shape[0]), (0, 0)))
        out = (acc.reshape(size, n_subs, *acc.shape[1:]), t_final.reshape(size, n_subs, -1),
               t_in_store.reshape(size, q_max, -1), rounds.reshape(size, n_subs))
        return out, (True, True, True, True)

    @jax.custom_batching.custom_vmap
    def backward(geom, colors, flat_ids, starts, ends, origins, t_final, t_in_store, rounds, g_colors, g_t_final):
        return _backward_flat(grid, geom, colors, flat_ids, starts, ends, origins, t_final, t_in_store, rounds,
                              g_colors, g_t_final)

    @backward.def_vmap
    def backward_vmap(size, in_batched, *args):
        args = [_bcast(x, b, size) for x, b in zip(args, in_batched)]
        n_gauss = args[0].shape[1]
        flat = lambda x: x.reshape(size * x.shape[1], *x.shape[2:])
        d_geom, d_colors = backward(*_fold(size, *args[:6]), *(flat(x) for x in args[6:]))
        return (d_geom.reshape(size, n_gauss, -1), d_colors.reshape(size, n_gauss, -1)), (True, True)

    return forward, backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def composite_sub_tiles(grid: CpuTileGrid, geom, colors, flat_ids, starts, ends, origins):
    """Differentiable compositing of sub-tile lists (no background).

    geom [M, 6] (mean x, mean y, conic a, b, c, opacity), colors [M, D]; flat_ids [S] Gaussian
    rows, starts / ends [T] each sub-tile's depth-sorted range of flat_ids, origins [T, 2] its
    top-left pixel. Returns colours [T, P, D] and final transmittance [T, P] (P = sub_size^2 pixels
    row-major). Gradients flow to geom and colors.
    """
    out, _ = _composite_fwd(grid, geom, colors, flat_ids, starts, ends, origins)
    return out


def _composite_fwd(grid, geom, colors, flat_ids, starts, ends, origins):
    forward, _ = _ops(grid)
    acc, t_final, t_in_store, rounds = forward(geom, colors, flat_ids, starts, ends, origins)
    return (acc, t_final), (geom, colors, flat_ids, starts, ends, origins, t_final, t_in_store, rounds)


def _composite_bwd(grid, residuals, cotangents):
    g_colors, g_t_final = cotangents
    _, backward = _ops(grid)
    d_geom, d_colors = backward(*residuals, g_colors, g_t_final)
    return d_geom, d_colors, None, None, None, None


composite_sub_tiles.defvjp(_composite_fwd, _composite_bwd)


# --------------------------------------------------------------------------------------------------
# Public entry point.


def sub_tiles_to_image(grid: CpuTileGrid, sub_tiles, num_cameras: int, width: int, height: int):
    """[C * n_tiles * s^2, P, ...] in `sub_tile_origins` order -> [C, H, W, ...]."""
    rest = sub_tiles.shape[2:]
    s, sub = grid.sub_tiles, grid.sub_size
    img = sub_tiles.reshape(num_cameras, grid.tile_height, grid.tile_width, s, s, sub, sub, *rest)
    img = jnp.transpose(img, (0, 1, 3, 5, 2, 4, 6) + tuple(range(7, 7 + len(rest))))  # [C, ty, qy, y, tx, qx, x]
    img = img.reshape(num_cameras, grid.tile_height * grid.tile_size, grid.tile_width * grid.tile_size, *rest)
    return img[:, :height, :width]


def default_sub_tiles(tile_size: int) -> int:
    """Sub-tiles per axis: 8 x 8-pixel sub-tiles where the tile allows (measured fastest on CPU)."""
    return max(1, tile_size // 8)


def rasterize_to_pixels_cpu(means2d, conics, opacities, colors, depths, radii, width: int, height: int,
                            tile_size: int, capacity: int, grid: CpuTileGrid | None = None,
                            conventions: Conventions = GSPLAT):
    """Rasterization stage on XLA:CPU, without background.

    means2d [C, N, 2], conics [C, N, 3], opacities [N] or [C, N], colors [C, N, D], depths [C, N],
    radii (as `tile_rects` takes them, 0 = culled); static width, height, tile_size and intersection
    `capacity`; `grid` overrides the sub-tiling and block shape (its conventions win); `conventions`: the
    rule set (`kernels/conventions.py`) when no grid is given. Returns colours [C, H, W, D], final
    transmittance [C, H, W], and the binning's n_intersections [] and overflow [] (same meaning as
    the Pallas path: tile intersections, at most `capacity` of them are rendered).
    """
    num_cameras, n = radii.shape[:2]
    tile_width, tile_height = -(-width // tile_size), -(-height // tile_size)
    if grid is None:
        grid = CpuTileGrid(tile_size, tile_width, tile_height, sub_tiles=default_sub_tiles(tile_size),
                           conventions=conventions)
    opacities = jnp.broadcast_to(opacities, (num_cameras, n)).reshape(-1)
    boxes = support_boxes(means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities)
    if sub_tile_keys_fit(grid, num_cameras, n):
        sub_ids, sub_starts, sub_ends, n_isect, overflow = bin_sub_tiles(grid, means2d, depths, radii, boxes, capacity)
    else:
        packed = packed_keys_fit(num_cameras, n, tile_width * tile_height)
        binning = (bin_gaussians_packed if packed else bin_gaussians)(
            means2d, depths, radii, tile_size, tile_width, tile_height, capacity)
        sub_ids, sub_starts, sub_ends = sub_tile_lists(grid, binning.flat_ids, binning.tile_starts,
                                                       binning.tile_ends, boxes)
        n_isect, overflow = binning.n_intersections, binning.overflow
    means2d, conics = means2d.reshape(-1, 2), conics.reshape(-1, 3)
    dtype = jnp.result_type(means2d, conics, opacities, colors)  # float32, or float64 under x64 inputs
    geom = jnp.concatenate([means2d, conics, opacities[:, None]], axis=1).astype(dtype)
    out, t_final = composite_sub_tiles(grid, geom, colors.reshape(num_cameras * n, -1).astype(dtype), sub_ids,
                                       sub_starts, sub_ends, sub_tile_origins(grid, num_cameras))
    image = sub_tiles_to_image(grid, out, num_cameras, width, height)
    t_final = sub_tiles_to_image(grid, t_final, num_cameras, width, height)
    return image, t_final, n_isect, overflow

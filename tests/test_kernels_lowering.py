"""The Pallas kernels lower for CUDA through Triton, checked from a CPU host by cross-lowering.

`jax.jit(f).trace(*shapes).lower(lowering_platforms=("cuda",))` runs Pallas' Triton lowering (block-shape
rules, unsupported primitives, the Triton IR itself) without a GPU; inputs are `jax.ShapeDtypeStruct`s,
so the headline size allocates nothing. The overflow warning is a host callback, which cannot be lowered
for a platform this host does not run, hence `warn_on_overflow=False` here.
"""
import re

import jax
import jax.numpy as jnp
import pytest

from ggtalker_jax.kernels.common import KernelTuning, default_tuning
from ggtalker_jax.render import rasterization

TRITON_CALL = "__gpu$xla.gpu.triton"


def _shapes(n, channels, num_cameras):
    f32 = jnp.float32
    return (jax.ShapeDtypeStruct((n, 3), f32), jax.ShapeDtypeStruct((n, 4), f32), jax.ShapeDtypeStruct((n, 3), f32),
            jax.ShapeDtypeStruct((n,), f32), jax.ShapeDtypeStruct((n, channels), f32),
            jax.ShapeDtypeStruct((num_cameras, 4, 4), f32), jax.ShapeDtypeStruct((num_cameras, 3, 3), f32))


def _lower_for_cuda(n, width, height, channels=3, num_cameras=1, capacity=None, **kwargs):
    """StableHLO text of the forward and of the forward + backward, lowered for CUDA."""
    def forward(means, quats, scales, opacities, colors, viewmats, Ks):
        img, alpha, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                         capacity=capacity, interpret=False, warn_on_overflow=False, **kwargs)
        return img, alpha, meta["overflow"]

    def loss(*args):
        img, alpha, _ = forward(*args)
        return jnp.sum(img) + jnp.sum(alpha)

    shapes = _shapes(n, channels, num_cameras)
    fwd = jax.jit(forward).trace(*shapes).lower(lowering_platforms=("cuda",)).as_text()
    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).trace(*shapes).lower(lowering_platforms=("cuda",))
    return fwd, fwd_bwd.as_text()


def _launch_warps(text):
    return [int(w) for w in re.findall(r"num_warps = (\d+) : i32", text)]


def _assert_triton_only(fwd, fwd_bwd):
    assert fwd.count(TRITON_CALL) == 1 and fwd_bwd.count(TRITON_CALL) == 2
    for text in (fwd, fwd_bwd):
        assert "mosaic" not in text.lower()


def test_headline_size_lowers_to_two_triton_kernels():
    """262,144 Gaussians at 512 x 512 with a capacity that is not a power of two."""
    fwd, fwd_bwd = _lower_for_cuda(262_144, 512, 512, capacity=1_700_000)
    _assert_triton_only(fwd, fwd_bwd)
    tuning = default_tuning(3)
    assert _launch_warps(fwd) == [tuning.forward_num_warps]
    assert sorted(_launch_warps(fwd_bwd)) == sorted([tuning.forward_num_warps, tuning.backward_num_warps])
    assert "grid_x = 1024 : i32" in fwd  # one program per 16 x 16 tile
    # Binning: two single-key sorts (one int32 key, one int32 payload), eligible for the CUB rewrite.
    sorts = re.findall(r'"stablehlo.sort"\(([^)]*)\)', fwd)
    assert len(sorts) == 2 and all(len(s.split(",")) == 2 for s in sorts)


@pytest.mark.parametrize("channels,num_cameras,width,height,capacity,extra", [
    (5, 2, 200, 120, 5000, {}),  # 2 cameras, image not a multiple of 16, capacity not a power of two
    (32, 1, 64, 48, 3000, {}),  # wide features: the other default tuning
    (3, 1, 72, 40, 2048, {"conventions": "inria", "render_mode": "RGB+ED"}),
    (3, 1, 48, 48, 1024, {"tuning": KernelTuning(forward_num_warps=8, backward_num_warps=4, backward_batch=4)}),
])
def test_shapes_and_options_lower_to_triton(channels, num_cameras, width, height, capacity, extra):
    fwd, fwd_bwd = _lower_for_cuda(1000, width, height, channels, num_cameras, capacity, **extra)
    _assert_triton_only(fwd, fwd_bwd)
    out_channels = channels + (extra.get("render_mode") == "RGB+ED")
    tuning = extra.get("tuning", default_tuning(out_channels))
    assert sorted(_launch_warps(fwd_bwd)) == sorted([tuning.forward_num_warps, tuning.backward_num_warps])
    tiles = num_cameras * -(-width // 16) * -(-height // 16)
    assert f"grid_x = {tiles} : i32" in fwd

"""LPIPS perceptual distance (Zhang et al. 2018, "v0.1" linear heads) in Flax, weights from a local .npz.

Nothing is downloaded: the backbone (AlexNet or VGG16 ``features``) and the five linear heads are read
only from a user-supplied ``.npz`` in PyTorch layout. When no weights are available, reports should
print `LPIPS_NOT_COMPUTED` (see `maybe_lpips`).

Expected ``.npz`` arrays (PyTorch names and layouts, exactly what the snippet below writes):

* ``features.{i}.weight`` ``[O, I, kh, kw]`` and ``features.{i}.bias`` ``[O]`` for the torchvision
  conv layers, ``i`` in ``(0, 3, 6, 8, 10)`` for AlexNet or
  ``(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)`` for VGG16;
* ``lin{k}.model.1.weight`` ``[1, C_k, 1, 1]`` for ``k = 0..4`` (the official v0.1 heads;
  ``lin{k}.model.0.weight`` is accepted too, as written by heads built without dropout).

Conversion from the official PyTorch weights (run once, on a machine that has torch, torchvision and
the ``lpips`` package's ``weights/v0.1/{alex,vgg}.pth``)::

    import numpy as np, torch, torchvision
    backbone = torchvision.models.alexnet(weights="IMAGENET1K_V1")     # or vgg16(weights="IMAGENET1K_V1")
    arrays = {k: v.numpy() for k, v in backbone.state_dict().items() if k.startswith("features.")}
    heads = torch.load("lpips/weights/v0.1/alex.pth", map_location="cpu")   # or vgg.pth
    arrays.update({k: v.numpy() for k, v in heads.items()})
    np.savez("lpips_alex.npz", **arrays)

The network (backbone kind and channel widths) is inferred from the arrays, so a reduced-width file
(used by the tests) works as well as the real one.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import zipfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LPIPS_NOT_COMPUTED = "not computed (no weights)"

# torchvision `features` indices of the conv layers, and after which conv (by position) a feature is
# tapped (after its ReLU); pools come before the listed conv positions.
_ALEX_CONV_INDICES = (0, 3, 6, 8, 10)
_VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_ALEX_WIDTHS = (64, 192, 384, 256, 256)
_VGG_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
_VGG_TAPS = (1, 3, 6, 9, 12)           # conv positions whose ReLU output is an LPIPS feature
_VGG_POOL_BEFORE = (2, 4, 7, 10)       # 2x2/2 max-pool before these conv positions
# Input normalisation of the official ScalingLayer (for inputs in [-1, 1]).
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


@dataclasses.dataclass(frozen=True)
class LPIPSConfig:
    """Network shape. net: "alex" | "vgg"; conv_widths: output channels per backbone conv."""
    net: str = "alex"
    conv_widths: tuple[int, ...] = _ALEX_WIDTHS

    def __post_init__(self):
        expected = {"alex": 5, "vgg": 13}
        if self.net not in expected:
            raise ValueError(f"LPIPSConfig.net must be 'alex' or 'vgg', got {self.net!r}")
        if len(self.conv_widths) != expected[self.net]:
            raise ValueError(f"LPIPSConfig: {self.net} needs {expected[self.net]} conv widths, "
                             f"got {len(self.conv_widths)}")

    @property
    def conv_indices(self) -> tuple[int, ...]:
        return _ALEX_CONV_INDICES if self.net == "alex" else _VGG_CONV_INDICES

    @property
    def tap_widths(self) -> tuple[int, ...]:
        """Channels of the five compared feature maps."""
        if self.net == "alex":
            return self.conv_widths
        return tuple(self.conv_widths[i] for i in _VGG_TAPS)


ALEX = LPIPSConfig("alex", _ALEX_WIDTHS)
VGG16 = LPIPSConfig("vgg", _VGG_WIDTHS)


def _unit_normalize(x: jax.Array, eps: float = 1e-10) -> jax.Array:
    """Normalise features to unit length over channels: ``[N, H, W, C]``."""
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + eps)


class LPIPSNet(nn.Module):
    """LPIPS distance between two batches of images ``[N, H, W, 3]`` in [0, 1] -> ``[N]``.

    Parameter names: ``features_{i}`` (conv, ``i`` = torchvision index) and ``lin_{k}`` (1x1, no bias).
    """
    config: LPIPSConfig

    def _features(self, x: jax.Array) -> list[jax.Array]:
        cfg = self.config
        taps = []
        if cfg.net == "alex":
            # (kernel, stride, padding) of torchvision AlexNet features 0, 3, 6, 8, 10.
            shapes = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))
            for pos, (i, w, (k, s, p)) in enumerate(zip(_ALEX_CONV_INDICES, cfg.conv_widths, shapes)):
                if pos in (1, 2):
                    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
                x = nn.relu(nn.Conv(w, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                                    name=f"features_{i}")(x))
                taps.append(x)
        else:
            for pos, (i, w) in enumerate(zip(_VGG_CONV_INDICES, cfg.conv_widths)):
                if pos in _VGG_POOL_BEFORE:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
                x = nn.relu(nn.Conv(w, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{i}")(x))
                if pos in _VGG_TAPS:
                    taps.append(x)
        return taps

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        n = a.shape[0]
        x = jnp.concatenate([a, b], axis=0) * 2.0 - 1.0           # [0,1] -> [-1,1] as in lpips
        x = (x - _SHIFT) / _SCALE
        total = jnp.zeros((n,), x.dtype)
        for k, f in enumerate(self._features(x)):
            fa, fb = _unit_normalize(f[:n]), _unit_normalize(f[n:])
            d = nn.Conv(1, (1, 1), use_bias=False, name=f"lin_{k}")(jnp.square(fa - fb))
            total = total + jnp.mean(d, axis=(1, 2, 3))
        return total


def config_from_params(params: Any) -> LPIPSConfig:
    """Infer `LPIPSConfig` (backbone kind and widths) from a parameter tree."""
    params = params.get("params", params)
    conv_keys = sorted((int(m.group(1)) for k in params if (m := re.fullmatch(r"features_(\d+)", k))))
    net = {_ALEX_CONV_INDICES: "alex", _VGG_CONV_INDICES: "vgg"}.get(tuple(conv_keys))
    if net is None:
        raise ValueError(f"LPIPS params: conv layers {conv_keys} match neither AlexNet "
                         f"{_ALEX_CONV_INDICES} nor VGG16 {_VGG_CONV_INDICES}")
    widths = tuple(int(params[f"features_{i}"]["kernel"].shape[-1]) for i in conv_keys)
    return LPIPSConfig(net, widths)


@functools.partial(jax.jit, static_argnames=("config",))
def _lpips_apply(params, a, b, config):
    return LPIPSNet(config).apply({"params": params}, a, b)


def lpips(a: jax.Array, b: jax.Array, params: Any) -> jax.Array:
    """LPIPS distance per image pair.

    Args:
      a, b: images ``[..., H, W, 3]`` in ``[0, 1]`` (at least 32x32 for AlexNet, 16x16 for VGG).
      params: parameter tree from `load_lpips_params` (or `init_lpips_params`).
    Returns:
      ``[...]`` distances (0 for identical images; lower = more similar).
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"lpips: images must both be [..., H, W, 3], got {a.shape} and {b.shape}")
    params = params.get("params", params)
    config = config_from_params(params)
    min_size = 32 if config.net == "alex" else 16
    if min(a.shape[-3:-1]) < min_size:
        raise ValueError(f"lpips: {config.net} needs images of at least {min_size}x{min_size}, "
                         f"got {a.shape[-3]}x{a.shape[-2]}")
    batch = a.shape[:-3]
    flat = (-1,) + a.shape[-3:]
    return _lpips_apply(params, a.reshape(flat), b.reshape(flat), config).reshape(batch)


def maybe_lpips(a: jax.Array, b: jax.Array, params: Any | None) -> jax.Array | str:
    """`lpips` when weights are given, else the report string `LPIPS_NOT_COMPUTED`."""
    return LPIPS_NOT_COMPUTED if params is None else lpips(a, b, params)


def init_lpips_params(rng: jax.Array, config: LPIPSConfig = ALEX, image_size: int = 64) -> dict:
    """Random LPIPS parameters (tests / shape checks only). Heads are non-negative like trained ones."""
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    params = LPIPSNet(config).init(rng, x, x)["params"]
    params = {k: dict(v) for k, v in params.items()}
    for k in range(5):
        params[f"lin_{k}"] = {"kernel": jnp.abs(params[f"lin_{k}"]["kernel"])}
    return params


def load_lpips_params(path: str | pathlib.Path) -> dict:
    """Read LPIPS weights from a local ``.npz`` in PyTorch layout (see module docstring).

    Returns:
      parameter tree ``{"features_{i}": {"kernel": [kh, kw, I, O], "bias": [O]}, "lin_{k}":
      {"kernel": [1, 1, C_k, 1]}}`` for `lpips`.
    Raises:
      FileNotFoundError if the file is missing; ValueError if it is not a readable npz or arrays are
      missing / mis-shaped.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights not found: {path}. Convert the official weights to .npz "
                                "(see ggtalker_jax.eval.lpips docstring) or run without LPIPS.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"LPIPS weights {path} are not a readable .npz file: {e}") from e

    conv_indices = tuple(sorted(int(m.group(1)) for k in arrays
                                if (m := re.fullmatch(r"features\.(\d+)\.weight", k))))
    net = {_ALEX_CONV_INDICES: "alex", _VGG_CONV_INDICES: "vgg"}.get(conv_indices)
    if net is None:
        raise ValueError(f"LPIPS weights {path}: conv arrays features.<i>.weight for i={list(conv_indices)} "
                         f"match neither AlexNet {_ALEX_CONV_INDICES} nor VGG16 {_VGG_CONV_INDICES}")
    params: dict[str, dict[str, jax.Array]] = {}
    in_ch = 3
    for i in conv_indices:
        w = arrays[f"features.{i}.weight"]
        bias_key = f"features.{i}.bias"
        if bias_key not in arrays:
            raise ValueError(f"LPIPS weights {path}: missing array {bias_key!r}")
        bias = arrays[bias_key]
        if w.ndim != 4 or w.shape[1] != in_ch or bias.shape != (w.shape[0],):
            raise ValueError(f"LPIPS weights {path}: features.{i} has weight {w.shape} / bias {bias.shape}; "
                             f"expected [O, {in_ch}, kh, kw] / [O] (PyTorch layout)")
        params[f"features_{i}"] = {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32),
                                   "bias": jnp.asarray(bias, jnp.float32)}
        in_ch = w.shape[0]
    config = config_from_params(params)
    for k, c in enumerate(config.tap_widths):
        key = next((kk for kk in (f"lin{k}.model.1.weight", f"lin{k}.model.0.weight") if kk in arrays), None)
        if key is None:
            raise ValueError(f"LPIPS weights {path}: missing linear head 'lin{k}.model.1.weight'")
        w = arrays[key]
        if w.shape != (1, c, 1, 1):
            raise ValueError(f"LPIPS weights {path}: {key} has shape {w.shape}, expected (1, {c}, 1, 1)")
        params[f"lin_{k}"] = {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32)}
    for name, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"LPIPS weights {path}: non-finite values in {jax.tree_util.keystr(name)}")
    return params

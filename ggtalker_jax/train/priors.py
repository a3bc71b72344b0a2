"""Prior weights on disk: one folder holding the four networks an avatar starts from.

    PRIORS_DIR/priors.msgpack   flax-serialised {"a2e", "generator", "generator_stats", "color_mlp",
                                "inpainter", "inpainter_stats"}
    PRIORS_DIR/priors.json      {"avatar": AvatarConfig fields, "trained": {...provenance...}}

The A2E prior and the Expression-Visual prior trainers each update their part of this folder
(`update_priors`), so adaptation loads one thing. `load_or_init` falls back to the bundled small priors
(`ggtalker_jax/assets/priors_small`, when present) and then to freshly initialised networks.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile

import jax
import numpy as np
from flax import serialization

from ggtalker_jax import avatar as avatar_lib

log = logging.getLogger(__name__)

BUNDLED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "priors_small")


def save_priors(directory: str, network_params: dict, avatar_config: avatar_lib.AvatarConfig,
                trained: dict | None = None) -> None:
    """Writes priors.msgpack + priors.json atomically (temp file + rename)."""
    os.makedirs(directory, exist_ok=True)
    blob = serialization.msgpack_serialize(jax.tree.map(np.asarray, network_params))
    _atomic_write(os.path.join(directory, "priors.msgpack"), blob)
    info = {"avatar": avatar_config.to_dict(), "trained": trained or {}}
    _atomic_write(os.path.join(directory, "priors.json"), json.dumps(info, indent=2).encode())


def load_priors(directory: str) -> tuple[dict, avatar_lib.AvatarConfig, dict]:
    """(network_params, avatar_config, trained-provenance) from a priors folder."""
    path = os.path.join(directory, "priors.msgpack")
    info_path = os.path.join(directory, "priors.json")
    if not (os.path.exists(path) and os.path.exists(info_path)):
        raise FileNotFoundError(f"{directory} holds no priors (priors.msgpack + priors.json); train them with "
                                "experiments/train_a2e_prior.py and experiments/train_ev_prior.py")
    with open(info_path) as f:
        info = json.load(f)
    cfg = avatar_lib.AvatarConfig.from_dict(info["avatar"])
    template = avatar_lib.init_network_params(jax.random.PRNGKey(0), cfg)
    with open(path, "rb") as f:
        params = serialization.from_bytes(template, f.read())
    return params, cfg, info.get("trained", {})


def update_priors(directory: str, avatar_config: avatar_lib.AvatarConfig, parts: dict, provenance: dict) -> None:
    """Replaces the groups in `parts` (e.g. {"a2e": ...}) of the priors in `directory` (created from fresh
    networks when absent) and records `provenance` under "trained"."""
    if os.path.exists(os.path.join(directory, "priors.msgpack")):
        params, cfg, trained = load_priors(directory)
        if cfg != avatar_config:
            raise ValueError(f"{directory} holds priors for {cfg}, not {avatar_config}; use another directory")
    else:
        params, trained = avatar_lib.init_network_params(jax.random.PRNGKey(0), avatar_config), {}
    params = {**params, **parts}
    trained = {**trained, **provenance}
    save_priors(directory, params, avatar_config, trained)


def load_or_init(directory: str | None, avatar_config: avatar_lib.AvatarConfig | None = None):
    """Priors from `directory`, else the bundled small priors, else fresh networks (with a warning).
    Returns (network_params, avatar_config)."""
    if directory:
        params, cfg, _ = load_priors(directory)
        return params, cfg
    if os.path.exists(os.path.join(BUNDLED, "priors.msgpack")) and (
            avatar_config is None or avatar_config.models_preset == "small"):
        params, cfg, _ = load_priors(BUNDLED)
        if avatar_config is None or cfg == avatar_config:
            return params, cfg
    cfg = avatar_config or avatar_lib.AvatarConfig.small()
    log.warning("no priors given or bundled for %s: starting from freshly initialised networks", cfg)
    return avatar_lib.init_network_params(jax.random.PRNGKey(0), cfg), cfg


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

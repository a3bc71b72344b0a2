"""Prior weights on disk: one folder holding the four networks an avatar starts from.

    PRIORS_DIR/priors.msgpack   flax-serialised {"a2e", "generator", "generator_stats", "color_mlp",
                                "inpainter", "inpainter_stats"}
    PRIORS_DIR/priors.json      {"prior": PriorConfig fields, "trained": {...provenance per part...}}

The A2E prior and the Expression-Visual prior trainers each update their part of this folder
(`update_priors`), so adaptation loads one thing. `load_or_init` falls back to the bundled small priors
(`ggtalker_jax/assets/priors_small`, when present and of the asked definition) and then to freshly
initialised networks. Every read error names the file and says how to fix it (`PriorsError`).

Head model. A prior is trained on one head model (`PriorConfig.head_model`): the generator learned its UV
layout, so priors only fit data tracked with that model. `ggtalker adapt` refuses (`PriorsError`,
`check_priors_head_model`) priors of another head model than the dataset's, saying which priors to use;
without --priors it takes the bundled small priors (open head) for open-head data and starts from fresh
networks (with a warning) for data tracked with FLAME.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np
from flax import serialization

from ggtalker_jax import avatar as avatar_lib
from ggtalker_jax.errors import PriorsError
from ggtalker_jax.files import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

BUNDLED = os.path.join(os.path.dirname(__file__), "assets", "priors_small")
WEIGHTS = "priors.msgpack"
INFO = "priors.json"


def save_priors(directory: str, network_params: dict, prior: avatar_lib.PriorConfig,
                trained: dict | None = None) -> None:
    """Writes priors.msgpack + priors.json atomically (temp file + rename)."""
    os.makedirs(directory, exist_ok=True)
    blob = serialization.msgpack_serialize(jax.tree.map(np.asarray, network_params))
    atomic_write_bytes(os.path.join(directory, WEIGHTS), blob)
    atomic_write_json(os.path.join(directory, INFO), {"prior": prior.to_dict(), "trained": trained or {}})


def read_prior_config(directory: str) -> tuple[avatar_lib.PriorConfig, dict]:
    """(PriorConfig, trained-provenance) from `directory/priors.json`."""
    info_path = os.path.join(directory, INFO)
    if not os.path.isfile(info_path):
        raise PriorsError(f"{directory} holds no priors ({INFO} missing); train them with "
                          "experiments/train_a2e_prior.py and experiments/train_ev_prior.py, or leave --priors "
                          "out to use the bundled ones")
    try:
        with open(info_path) as f:
            info = json.load(f)
        raw = info.get("prior", info.get("avatar"))   # "avatar": written before the config split
        if not isinstance(raw, dict):
            raise ValueError("no 'prior' object")
        prior = avatar_lib.PriorConfig.from_dict(raw)
        prior.models   # noqa: B018  (validates the preset name)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise PriorsError(f"{info_path}: not a valid priors description ({type(e).__name__}: {e}); re-export "
                          "the priors or restore the file") from e
    return prior, dict(info.get("trained") or {})


def load_priors(directory: str) -> tuple[dict, avatar_lib.PriorConfig, dict]:
    """(network_params, prior config, trained-provenance) from a priors folder."""
    prior, trained = read_prior_config(directory)
    path = os.path.join(directory, WEIGHTS)
    if not os.path.isfile(path):
        raise PriorsError(f"{directory}: {WEIGHTS} is missing; re-export the priors")
    try:
        with open(path, "rb") as f:
            state = serialization.msgpack_restore(f.read())
    except Exception as e:  # noqa: BLE001  (msgpack errors of many kinds)
        raise PriorsError(f"{path}: cannot be read as priors ({type(e).__name__}: {e}); the file is truncated or "
                          "corrupt; re-export it") from e
    return _fit(state, prior, path), prior, trained


def _fit(state: dict, prior: avatar_lib.PriorConfig, path: str) -> dict:
    """Network params of `prior`'s shapes from a serialised state dict; `PriorsError` naming `path` when a
    group is missing or of another size."""
    template = avatar_lib.init_network_params(jax.random.PRNGKey(0), prior)
    try:
        params = serialization.from_state_dict(template, state)
    except Exception as e:  # noqa: BLE001  (structure errors of many kinds)
        raise PriorsError(f"{path}: cannot be read as priors for {prior} ({type(e).__name__}: {e}); the file is "
                          "of another network size; re-export it") from e
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(template)):
        if np.shape(got) != np.shape(want):
            raise PriorsError(f"{path}: a weight of shape {np.shape(got)} where {prior} needs {np.shape(want)}; "
                              "re-export the priors")
    return params


def update_priors(directory: str, prior: avatar_lib.PriorConfig, parts: dict, provenance: dict) -> None:
    """Replaces the groups in `parts` (e.g. {"a2e": ...}) of the priors in `directory` (created from fresh
    networks when absent) and records `provenance` under "trained". The networks and head model must be
    the folder's; the A2E definition (`avatar.A2E_FIELDS`: windowing, audio features, expression
    normalisation) is taken from `prior` when `parts` holds the A2E (it is how that A2E was trained) and
    kept otherwise."""
    if os.path.exists(os.path.join(directory, WEIGHTS)):
        cfg, trained = read_prior_config(directory)
        if (cfg.models_preset, cfg.head_model) != (prior.models_preset, prior.head_model):
            raise PriorsError(f"{directory} holds priors for {cfg}, not {prior}; use another directory")
        if "a2e" not in parts:
            prior = prior.with_a2e_of(cfg)
        path = os.path.join(directory, WEIGHTS)
        try:    # the raw groups: the ones being replaced may have another shape (e.g. a retrained A2E)
            with open(path, "rb") as f:
                params = dict(serialization.msgpack_restore(f.read()))
        except Exception as e:  # noqa: BLE001
            raise PriorsError(f"{path}: cannot be read ({type(e).__name__}: {e}); re-export the priors") from e
        params = {k: v for k, v in params.items() if k not in parts}
    else:
        params, trained = avatar_lib.init_network_params(jax.random.PRNGKey(0), prior), {}
    params = _fit(serialization.to_state_dict({**params, **jax.tree.map(np.asarray, parts)}), prior,
                  os.path.join(directory, WEIGHTS))      # every group fits the prior it now declares
    trained = {**trained, **provenance}
    save_priors(directory, params, prior, trained)


def digest(directory: str) -> str:
    """SHA-256 of a priors folder's weights (what a workdir records to know which priors it started from)."""
    h = hashlib.sha256()
    with open(os.path.join(directory, WEIGHTS), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_networks(a: avatar_lib.PriorConfig, b: avatar_lib.PriorConfig) -> bool:
    """Whether two prior definitions have the same networks and head model (their A2E definition may
    differ: windowing, audio features and normalisation are how each A2E was trained, and come with its
    weights)."""
    return (a.models_preset, a.head_model) == (b.models_preset, b.head_model)


def head_model_name(head_record: dict | None) -> str:
    """`PriorConfig.head_model` for the head model of a head-model record: "open", or the FLAME model
    file's path."""
    if not head_record or head_record.get("kind", "open") == "open":
        return "open"
    files = {f["role"]: f["path"] for f in head_record.get("files", [])}
    return files.get("model", str(head_record.get("kind")))


def fits_head_model(prior: avatar_lib.PriorConfig, head_record: dict | None) -> bool:
    """Whether priors of definition `prior` were trained on the head model of `head_record`: both the open
    head, or both FLAME with the same model file (same path, or the prior's file on this machine has the
    recorded content)."""
    want = head_model_name(head_record)
    if "open" in (want, prior.head_model):
        return want == prior.head_model
    if os.path.abspath(prior.head_model) == os.path.abspath(want):
        return True
    from ggtalker_jax.head.record import file_sha256
    sha = {f["role"]: f["sha256"] for f in head_record.get("files", [])}.get("model")
    return os.path.isfile(prior.head_model) and sha is not None and file_sha256(prior.head_model) == sha


def check_priors_head_model(directory: str, head_record: dict | None, data_dir: str) -> None:
    """Raises `PriorsError` (saying which priors to use) unless the priors in `directory` were trained on
    the head model `data_dir` was tracked with (`head_record`)."""
    prior, _ = read_prior_config(directory)
    if fits_head_model(prior, head_record):
        return
    want = head_model_name(head_record)
    raise PriorsError(
        f"--priors {directory} were trained on head model {prior.head_model!r} (its UV layout is what their "
        f"generator learned), but {data_dir} was tracked with head model {want!r}; use priors trained on "
        f"{want!r} (experiments/train_ev_prior.py on data prepared with it), leave --priors out to start from "
        f"fresh networks, or re-run `ggtalker prepare --head {prior.head_model}` for these priors")


def load_or_init(directory: str | None, prior: avatar_lib.PriorConfig | None = None):
    """Priors from `directory`, else the bundled small priors (when their networks are `prior`'s), else
    fresh networks of `prior` (with a warning). Returns (network_params, prior config as stored with the
    weights, source) with source the directory read, "bundled" or "fresh"."""
    if directory:
        params, cfg, _ = load_priors(directory)
        if prior is not None and not same_networks(cfg, prior):
            raise PriorsError(f"{directory} holds priors for {cfg}, but networks of {prior} were asked for")
        return params, cfg, os.path.abspath(directory)
    if os.path.exists(os.path.join(BUNDLED, WEIGHTS)):
        cfg, _ = read_prior_config(BUNDLED)
        if prior is None or same_networks(cfg, prior):
            params, cfg, _ = load_priors(BUNDLED)
            return params, cfg, "bundled"
    cfg = prior or avatar_lib.PriorConfig()
    log.warning("no priors given or bundled for %s: starting from freshly initialised networks", cfg)
    return avatar_lib.init_network_params(jax.random.PRNGKey(0), cfg), cfg, "fresh"

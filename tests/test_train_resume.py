"""A2E launcher killed (SIGKILL) after a checkpoint resumes at that step and ends with the same params as
an uninterrupted run."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from ggtalker_jax.train import a2e_prior, trainer
from ggtalker_jax.checkpoint import Checkpointer

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "experiments" / "train_a2e_prior.py"
NUM_STEPS, EVERY = 100, 25


def _args(workdir, data):
    return [str(LAUNCHER), "--workdir", str(workdir), "--data", str(data), "--config", "small",
            "--num_steps", str(NUM_STEPS), "--checkpoint_every", str(EVERY), "--batch_size", "4",
            "--a2e_window", "8", "--a2e_context", "0", "--w_lip", "0", "--sample_every", "0", "--keep_checkpoints", "2",
            "--noexport_priors", "--learning_rate", "3e-3"]


def _final_params(workdir):
    from ggtalker_jax.models import get_config

    cfg = trainer.TrainConfig(num_steps=NUM_STEPS)
    abstract = trainer.init_train_state(a2e_prior.init_params(get_config("small").a2e),
                                        trainer.make_optimizer(cfg), 0)
    with Checkpointer(workdir / "checkpoints") as ck:
        assert ck.latest() == NUM_STEPS
        state, meta = ck.restore(NUM_STEPS, abstract)
    return state, meta


def _run_launcher_in_process(argv, capsys):
    sys.path.insert(0, str(LAUNCHER.parent))
    try:
        import train_a2e_prior
    finally:
        sys.path.pop(0)
    assert train_a2e_prior.main(argv) == 0
    return capsys.readouterr().out


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, capsys):
    data = a2e_prior.make_synthetic_prepared_dir(str(tmp_path / "subject"), num_frames=120)
    killed = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable] + _args(killed, data), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt_dir = killed / "checkpoints"
    deadline = time.time() + 1800  # a hang guard only: a loaded CI machine may need minutes to the first save
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt_dir.is_dir() and any(n.isdigit() for n in os.listdir(ckpt_dir)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with Checkpointer(ckpt_dir) as ck:
        saved = ck.latest()
    assert saved is not None and 0 < saved < NUM_STEPS and saved % EVERY == 0

    out = _run_launcher_in_process(_args(killed, data), capsys)
    assert f"resumed at step {saved}" in out

    fresh = tmp_path / "fresh"
    out = _run_launcher_in_process(_args(fresh, data), capsys)
    assert "resumed" not in out

    resumed_state, resumed_meta = _final_params(killed)
    fresh_state, fresh_meta = _final_params(fresh)
    assert resumed_meta == fresh_meta
    for a, b in zip(jax.tree.leaves(resumed_state), jax.tree.leaves(fresh_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

"""The Expression-Visual prior launcher: trains, checkpoints, resumes where it stopped, exports priors."""
import importlib.util
import pathlib

import numpy as np

from ggtalker_jax.data import default_subject
from ggtalker_jax import priors

LAUNCHER = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "train_ev_prior.py"


def _launcher():
    spec = importlib.util.spec_from_file_location("train_ev_prior", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ev_prior_trains_resumes_and_exports(tmp_path, capsys):
    subject = tmp_path / "subject"
    default_subject.make_default_subject(str(subject), seconds=1.2, size=64, seed=2, uv_resolution=16, write_video=False)
    args = ["train_ev_prior", "--workdir", str(tmp_path / "run"), "--data", str(subject), "--image_size", "32",
            "--checkpoint_every", "2", "--sample_every", "2"]
    launcher = _launcher()
    assert launcher.main(args + ["--num_steps", "2"]) == 0
    first, _, _ = priors.load_priors(str(tmp_path / "run" / "priors"))
    assert launcher.main(args + ["--num_steps", "3"]) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    second, cfg, trained = priors.load_priors(str(tmp_path / "run" / "priors"))
    assert trained["ev"]["steps"] == 3 and trained["ev"]["image_size"] == 32
    assert not np.array_equal(first["generator"]["head"]["kernel"], second["generator"]["head"]["kernel"])
    assert (tmp_path / "run" / "samples" / "ev_step0000002.png").stat().st_size > 500

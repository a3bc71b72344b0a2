"""The `ggtalker` dispatcher: help, unknown subcommands, absl flag parsing errors."""
import pytest
from absl import flags

from ggtalker_jax import cli


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_unknown_subcommand_is_an_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err


def test_parse_flags_reports_the_bad_flag(capsys):
    fv = flags.FlagValues()
    flags.DEFINE_integer("steps", 1, "number of steps", flag_values=fv)
    assert cli.parse_flags(fv, ["prog", "--steps", "7", "extra"]) == ["extra"]
    assert fv.steps == 7
    with pytest.raises(SystemExit) as e:
        cli.parse_flags(fv, ["prog", "--steps", "seven"])
    assert e.value.code == 2
    assert "steps" in capsys.readouterr().err

"""User errors: one line and exit status 2; anything else keeps its traceback."""

import os

import pytest

from proxy_jax import cli
from proxy_jax.core import errors
from tests.conftest import ROOT

DEFAULT = os.path.join(ROOT, "configs", "default.py")


def test_user_errors_are_still_the_builtins_callers_catch():
  assert issubclass(errors.ConfigError, ValueError)
  assert issubclass(errors.DataError, ValueError)
  assert issubclass(errors.MissingPathError, FileNotFoundError)
  assert all(
    issubclass(e, errors.UserError)
    for e in (errors.ConfigError, errors.DataError, errors.WorkdirError, errors.MissingPathError)
  )


def test_run_plain_prints_one_line_and_exits_2_for_a_user_error(capsys):
  def main():
    raise errors.DataError("data.path: 'x' has no class subfolders")

  with pytest.raises(SystemExit) as exit_info:
    cli.run_plain(main)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: data.path: 'x' has no class subfolders\n"


def test_run_plain_keeps_the_traceback_of_a_bug():
  def main():
    raise KeyError("a bug")

  with pytest.raises(KeyError):
    cli.run_plain(main)


def test_unknown_override_names_the_closest_fields():
  argv = ["main.py", "--config.num_epochs=3", "--config.proxy.treshold=0.5"]
  message = cli.unknown_override(argv, DEFAULT)
  assert message.startswith("--config.proxy.treshold: ")
  assert message.endswith(
    "closest: config.proxy.threshold, config.proxy.mode, config.proxy.enabled"
  )


def test_unknown_override_reads_the_config_named_on_the_command_line(tmp_path):
  other = tmp_path / "other.py"
  other.write_text(
    "import ml_collections\n\ndef get_config():\n"
    "  return ml_collections.ConfigDict({'alpha': 1, 'beta': 2})\n"
  )
  argv = ["main.py", f"--config={other}", "--config.alpah=3"]
  assert cli.unknown_override(argv, DEFAULT).endswith("closest: config.alpha, config.beta")
  assert cli.unknown_override(["main.py", f"--config={other}", "--config.beta=1"], DEFAULT) is None

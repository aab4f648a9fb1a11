"""The one loader of config files ("path[:argument]") and of sweep and study files."""

import textwrap

from ml_collections.config_flags import config_flags
import pytest

from proxy_jax.config import files as config_files
from proxy_jax.core import errors

CONFIG = textwrap.dedent('''
    import ml_collections

    def get_config(argument=None):
      config = ml_collections.ConfigDict()
      config.argument = argument
      config.model = ml_collections.ConfigDict({"width": 8})
      return config
''')


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / "config.py"
  path.write_text(CONFIG)
  return str(path)


def test_argument_after_the_first_colon_reaches_get_config(config_file):
  assert config_files.load_config(config_file).argument is None  # get_config() itself.
  assert config_files.load_config(config_file + ":small").argument == "small"
  assert config_files.load_config(config_file + ":a:b").argument == "a:b"
  assert config_files.config_file(config_file + ":a:b") == config_file


def test_reads_what_the_trainers_config_flag_reads_but_unlocked(config_file):
  for spec in (config_file, config_file + ":x"):
    flag = config_flags.ConfigFileFlagParser(name="config").parse(spec)
    loaded = config_files.load_config(spec)
    assert loaded.to_dict() == flag.to_dict()
  loaded.model.depth = 3  # Tools add to it; the flag's copy is locked.
  with pytest.raises(AttributeError):
    flag.model.depth = 3


def test_a_missing_file_is_one_line_at_once(tmp_path):
  with pytest.raises(errors.MissingPathError, match="config file .*nope.py.* does not exist"):
    config_files.load_config(str(tmp_path / "nope.py") + ":arg")
  with pytest.raises(errors.MissingPathError, match="cannot load"):
    config_files.load_python_file(str(tmp_path / "nope.py"))


def test_python_files_load_as_separate_modules(tmp_path):
  first, second = tmp_path / "a.py", tmp_path / "b.py"
  first.write_text("VALUE = 1\n")
  second.write_text("VALUE = 2\n")
  assert config_files.load_python_file(str(first)).VALUE == 1
  assert config_files.load_python_file(str(second)).VALUE == 2

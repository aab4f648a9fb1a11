"""The Python files the tools read: config files and the sweep and study files.

A config file is named "path[:argument]" and its `get_config(argument)` gives the config, read
exactly as the trainer's `--config` flag reads it (ml_collections' `ConfigFileFlagParser`: the
text after the first ":" is the argument), so a sweep or a study checks the very config each of
its trials will train. Unlike the flag, a missing file is refused at once in one line
(`MissingPathError`; the flag defers it to a traceback at first use), and the config is not
locked: the tools apply overrides to it. Sweep and study files are plain modules
(`load_python_file`) defining `get_sweep()` / `get_study()`.
"""

import importlib.util
import os
import re

from proxy_jax.core import errors


def load_python_file(path: str):
  """The module a Python file defines, executed under a name of its own."""
  spec = importlib.util.spec_from_file_location(
    "_loaded_" + re.sub(r"\W", "_", os.path.basename(path)), path
  )
  if spec is None or spec.loader is None or not os.path.isfile(path):
    raise errors.MissingPathError(f"cannot load {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_file(config_path: str) -> str:
  """The file of "path[:argument]"."""
  return config_path.split(":", 1)[0]


def load_config(config_path: str, name: str = "config"):
  """`get_config(argument)` of "path[:argument]" (no argument: `get_config()`), unlocked."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top

  path = config_file(config_path)
  if not os.path.isfile(path):
    raise errors.MissingPathError(f"config file {path!r} does not exist")
  return config_flags.ConfigFileFlagParser(name=name, lock_config=False).parse(config_path)

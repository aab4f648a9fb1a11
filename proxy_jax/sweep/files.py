"""Loading sweep and config files (Python files defining get_sweep() / get_config())."""

import importlib.util
import os
import re

from proxy_jax import config_fields, errors
from proxy_jax.sweep import grid


def load_python_file(path: str):
  spec = importlib.util.spec_from_file_location(
      "_sweep_" + re.sub(r"\W", "_", os.path.basename(path)), path)
  if spec is None or spec.loader is None or not os.path.isfile(path):
    raise errors.MissingPathError(f"cannot load {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sweep(sweep_path: str) -> tuple[list[dict], dict]:
  """(trials, common): trials [{"name", "overrides"}] in the sweep file's order.

  The optional `get_common()` of a sweep file gives overrides for every trial (a shorter run for a
  smoke test); they are not part of trial names. Duplicate trials are an error.
  """
  module = load_python_file(sweep_path)
  common = dict(module.get_common()) if hasattr(module, "get_common") else {}
  return grid.named_trials(module.get_sweep(), sweep_path), common


def check_overrides(config_path: str, trials: list[dict], common: dict) -> None:
  """Fails before launching anything when an override names a field the config lacks."""
  path, _, argument = config_path.partition(":")
  module = load_python_file(path)
  config = module.get_config(argument) if argument else module.get_config()
  for trial in [{"name": "(common)", "overrides": common}] + trials:
    for key in trial["overrides"]:
      if not config_fields.has_field(config, key):
        raise errors.ConfigError(f"trial {trial['name']}: the config has no field {key!r}; "
                                 "closest: "
                                 + ", ".join(config_fields.closest_fields(key, config)))

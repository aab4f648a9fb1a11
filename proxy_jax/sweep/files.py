"""Sweep files (`get_sweep()`, optional `get_common()`) and the check of their overrides against
the config file (both read by `config_files`)."""

from proxy_jax.config import fields as config_fields, files as config_files
from proxy_jax.core import errors
from proxy_jax.sweep import grid


def load_sweep(sweep_path: str) -> tuple[list[dict], dict]:
  """(trials, common): trials [{"name", "overrides"}] in the sweep file's order.

  The optional `get_common()` of a sweep file gives overrides for every trial (a shorter run for a
  smoke test); they are not part of trial names. Duplicate trials are an error.
  """
  module = config_files.load_python_file(sweep_path)
  common = dict(module.get_common()) if hasattr(module, "get_common") else {}
  return grid.named_trials(module.get_sweep(), sweep_path), common


def check_overrides(config_path: str, trials: list[dict], common: dict) -> None:
  """Fails before launching anything when an override names a field the config lacks."""
  config = config_files.load_config(config_path)
  for trial in [{"name": "(common)", "overrides": common}] + trials:
    for key in trial["overrides"]:
      if not config_fields.has_field(config, key):
        raise errors.ConfigError(
          f"trial {trial['name']}: the config has no field {key!r}; "
          "closest: " + ", ".join(config_fields.closest_fields(key, config))
        )

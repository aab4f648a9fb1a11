"""Dotted field paths such as "proxy.threshold": the one walker for configs and run JSON.

Used for validation messages and their "closest: ..." suggestions (`config_lib`), sweep overrides (`sweep`), result columns
(`aggregate`) and test configs. Hand-written rather than ml_collections' `config_path`: that one
tries attributes before items, so on the plain dicts read back from a run's `config.json` a field
named like a dict method ("items", "keys") would resolve to the method.
"""

import difflib
from typing import Any

_REQUIRED = object()
_MISSING = object()


def _is_node(value) -> bool:
  return hasattr(value, "keys") and hasattr(value, "__getitem__")


def get_field(tree, path: str, default: Any = _REQUIRED):
  """The value at `path` in nested ConfigDicts/dicts; `default` (or KeyError) when absent."""
  node = tree
  for part in path.split("."):
    if not _is_node(node) or part not in node:
      if default is _REQUIRED:
        raise KeyError(f"no field {path!r}")
      return default
    node = node[part]
  return node


def has_field(tree, path: str) -> bool:
  return get_field(tree, path, _MISSING) is not _MISSING


def set_field(tree, path: str, value) -> None:
  """Sets the field at `path`; its parent must exist (a KeyError names the path otherwise)."""
  *parents, leaf = path.split(".")
  node = get_field(tree, ".".join(parents), None) if parents else tree
  if not _is_node(node):
    raise KeyError(f"no field {path!r}")
  node[leaf] = value


def field_names(config, prefix: str = "") -> set[str]:
  """Every dotted field name of a ConfigDict (or nested dict), sub-dicts included."""
  names = set()
  for key, value in config.items():
    names.add(prefix + key)
    if _is_node(value):
      names |= field_names(value, f"{prefix}{key}.")
  return names


def closest_fields(field: str, config, count: int = 3) -> list[str]:
  """The `count` dotted field names of `config` most like `field` (difflib's ratio)."""
  return difflib.get_close_matches(field, sorted(field_names(config)), n=count, cutoff=0.0)

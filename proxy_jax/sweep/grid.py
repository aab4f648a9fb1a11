"""The grid language of sweep files and the names of their trials.

A sweep file's `get_sweep()` returns a list of override dicts ({"proxy.threshold": 0.85, ...}),
usually built with `product`, `zip_fields` and `concat`, or of named trials `(name, overrides)`
(a study's arms). A trial's directory is named from its overrides alone (stable when the grid
grows) unless the trial is named.
"""

import hashlib
import itertools
import json
import re

from proxy_jax.core import errors

MAX_NAME_CHARS = 150


def product(*grids, **fields):
  """Cartesian product: product(a=[1, 2], b=[3]) or product(list_of_dicts, other_list, c=[..])."""
  factors = [list(g) for g in grids] + [[{k: v} for v in vs] for k, vs in fields.items()]
  trials = []
  for combination in itertools.product(*factors):
    merged = {}
    for part in combination:
      merged.update(part)
    trials.append(merged)
  return trials


def zip_fields(**fields):
  """Fields varied together: zip_fields(a=[1, 2], b=[3, 4]) -> [{a:1, b:3}, {a:2, b:4}]."""
  lengths = {len(v) for v in fields.values()}
  if len(lengths) > 1:
    sizes = {k: len(v) for k, v in fields.items()}
    raise ValueError(f"zip_fields needs equal lengths, got {sizes}")
  return [dict(zip(fields, values)) for values in zip(*fields.values())]


def concat(*grids):
  return [dict(trial) for grid in grids for trial in grid]


def format_value(value) -> str:
  """A value as ml_collections' `--config.x=` parser reads it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value)


def trial_name(overrides: dict) -> str:
  """Stable, filesystem-safe, unique name from the overrides alone (never from the grid).

  Keys are sorted; a key is shortened to its last component unless two keys of this trial share
  it (data.name and model.name). A short hash of the exact overrides is appended whenever
  sanitising or truncating lost information, so distinct trials never share a directory.
  """
  if not overrides:
    return "default"
  last = [k.rsplit(".", 1)[-1] for k in overrides]
  parts = []
  for key in sorted(overrides):
    short = key.rsplit(".", 1)[-1]
    parts.append(f"{short if last.count(short) == 1 else key}={format_value(overrides[key])}")
  raw = ",".join(parts)
  name = re.sub(r"[^A-Za-z0-9._=+,-]", "_", raw)
  if name != raw or len(name) > MAX_NAME_CHARS or name.startswith("."):
    canonical = json.dumps(overrides, sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    name = f"{name[:MAX_NAME_CHARS].lstrip('.')}-{digest}"
  return name


def check_trial_name(name: str) -> str:
  """A given trial name must be a plain directory name; returns it."""
  if (
    not isinstance(name, str)
    or not re.fullmatch(r"[A-Za-z0-9._=+,-]+", name)
    or name.startswith(".")
    or len(name) > MAX_NAME_CHARS
  ):
    raise errors.ConfigError(
      f"trial name {name!r} is not a plain directory name (letters, "
      f"digits and ._=+,- only, not starting with '.', at most "
      f"{MAX_NAME_CHARS} characters)"
    )
  return name


def named_trials(grid, source: str) -> list[dict]:
  """[{"name", "overrides"}] from override dicts or (name, overrides) pairs; names unique."""
  trials, seen = [], {}
  for item in grid:
    if isinstance(item, tuple):
      name, overrides = item
      name = check_trial_name(name)
    else:
      name, overrides = trial_name(item), item
    if name in seen:
      raise errors.ConfigError(
        f"{source}: trials {seen[name]} and {overrides} share the name {name!r}"
      )
    seen[name] = overrides
    trials.append({"name": name, "overrides": dict(overrides)})
  return trials


def add_set_overrides(common: dict, extra) -> dict:
  """`common` updated with "field=value" strings (the --set flag); values stay strings."""
  common = dict(common)
  for item in extra:
    key, sep, value = item.partition("=")
    if not sep:
      raise errors.ConfigError(f"--set expects field=value, got {item!r}")
    common[key] = value
  return common


def parse_shard(text: str) -> tuple[int, int]:
  match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
  if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
    raise errors.ConfigError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
  return int(match.group(1)), int(match.group(2))


def shard_trials(trials: list, index: int, count: int) -> list:
  """Round robin, so shards get a similar mix of cheap and costly trials; disjoint and complete."""
  return trials[index::count]

"""The resolved config a run keeps in its workdir: written once, checked on every resume.

A run's config.json holds its settings as resolved on the machine that began it (the stored
image side, the batch size found once, the compute dtype). A resume must use the same ones:
`write_or_check_resolved` refuses any field that changes what the run computes, naming it.
"""

import math
import os

from absl import logging

from proxy_jax import data, models
from proxy_jax.config import upgrade
from proxy_jax.config.checks import flatten
from proxy_jax.config.settings import Settings, to_dict, with_fields
from proxy_jax.core.errors import ConfigError
from proxy_jax.core.io_utils import atomic_write_json
from proxy_jax.run import records

# Fields that record what this machine made of the config rather than the experiment itself: a
# run resumed on other hardware may legitimately differ in them (a GPU run resumed on a CPU
# computes in float32), so they are recorded but never make a resume fail.
HARDWARE_FIELDS = ("dtype_resolved",)
# Fields that change what the console shows, where caches live or how fast a run starts, never
# what it computes: a resume may change them freely.
NON_RESULT_FIELDS = (
  "log_every_seconds",
  "compilation_cache_dir",
  "data.cache_dir",
  "data.decode_workers",
  "data.max_cache_gb",
  "data.stream_workers",
)


def resolve_load_size(settings: Settings, workdir: str) -> Settings:
  """`settings` with `data.load_size` the stored side this run uses (recorded in config.json).

  Auto (-1) follows `data.stored_size` for a new run, and a resumed run keeps the side it
  recorded (`upgrade`: a run from before the field stored its images at image_size).
  """
  path = os.path.join(workdir, records.CONFIG_FILE)
  value = data.stored_size(settings)
  if settings.data.load_size == data.AUTO_LOAD_SIZE and os.path.exists(path):
    value = int(upgrade.upgrade(records.read_recorded_config(workdir))["data"]["load_size"])
  return with_fields(settings, {"data.load_size": value})


def resolve_pipeline(settings: Settings, workdir: str) -> Settings:
  """`settings` with `data.pipeline` resolved: "auto" becomes "cache" or "stream" for a new run
  (`data.auto_pipeline`), and a resumed run keeps what it recorded."""
  if settings.data.pipeline != data.AUTO_PIPELINE:
    return settings
  if os.path.exists(os.path.join(workdir, records.CONFIG_FILE)):
    value = upgrade.upgrade(records.read_recorded_config(workdir))["data"]["pipeline"]
  else:
    value = data.auto_pipeline(settings)
  return with_fields(settings, {"data.pipeline": value})


def resolve_dtype(settings: Settings) -> Settings:
  """`settings` with `dtype_resolved`, the compute dtype `dtype` means here.

  Models resolve "auto" with the same `models.resolve_dtype`, so the recorded value is the one
  they compute in on this backend.
  """
  return with_fields(settings, {"dtype_resolved": models.resolve_dtype(settings.dtype)})


def write_or_check_resolved(settings: Settings, workdir: str) -> Settings:
  """Resolves the dtype and writes workdir/config.json; on a re-run, refuses settings that
  differ from the recorded ones, except in HARDWARE_FIELDS (logged, file left as first written;
  summary.json's config shows the finishing session's values). Returns the resolved settings."""
  path = os.path.join(workdir, records.CONFIG_FILE)
  settings = resolve_dtype(settings)
  resolved = to_dict(settings)
  if os.path.exists(path):
    previous = records.read_recorded_config(workdir)
    added = upgrade.added_since(previous)
    if added:
      logging.info(
        "%s: fields new since this run began, at the values its code used: %s",
        workdir,
        ", ".join(added),
      )
    old, new = flatten(upgrade.upgrade(previous)), flatten(resolved)
    for key in HARDWARE_FIELDS:
      if old.get(key, new[key]) != new[key]:
        logging.warning(
          "%s: resuming with %s=%r on this machine (the run began with %r).",
          workdir,
          key,
          new[key],
          old[key],
        )
      old.pop(key, None)
      new.pop(key, None)
    for key in NON_RESULT_FIELDS:
      old.pop(key, None)
      new.pop(key, None)
    changed = sorted(k for k in set(old) | set(new) if not _same(old.get(k), new.get(k)))
    if changed:
      detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:10])
      raise ConfigError(
        f"{workdir} holds a run with a different config ({detail}); resume "
        "with the same config or use a new --workdir"
      )
    return settings
  atomic_write_json(path, resolved)
  return settings


def _same(a, b):
  if isinstance(a, float) and isinstance(b, float):
    return math.isclose(a, b)
  return a == b

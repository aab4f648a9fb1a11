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
  "checkpoint_every_steps",
  "compilation_cache_dir",
  "data.cache_dir",
  "data.decode_workers",
  "data.max_cache_gb",
  "data.stream_workers",
)


# Fields whose "auto" a run resolves once, when it begins: (the auto value, what it means for a
# new run). The stored side comes first: the pipeline's choice depends on it.
AUTO_FIELDS = {
  "data.load_size": (data.AUTO_LOAD_SIZE, data.stored_size),
  "data.pipeline": (data.AUTO_PIPELINE, data.auto_pipeline),
}


def resolve_auto_fields(settings: Settings, workdir: str) -> Settings:
  """`settings` with every AUTO_FIELDS field that is "auto" resolved, as config.json records it:
  a new run computes it, a resumed run keeps what it recorded (`upgrade`: a run from before a
  field gets what its code did, e.g. images stored at image_size)."""
  recorded = None
  if os.path.exists(os.path.join(workdir, records.CONFIG_FILE)):
    recorded = flatten(upgrade.upgrade(records.read_recorded_config(workdir)))
  for field, (auto, resolve) in AUTO_FIELDS.items():
    family, name = field.split(".")
    if getattr(getattr(settings, family), name) == auto:
      value = recorded[field] if recorded is not None else resolve(settings)
      settings = with_fields(settings, {field: value})
  return settings


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

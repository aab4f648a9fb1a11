"""One upgrade for the config.json of any earlier version: the one place old workdirs are handled.

A run records its resolved config in `WORKDIR/config.json` (and summary.json's `config`). Fields
added to the code since the run began are absent from it, and a few fields it holds have been
retired. `upgrade` brings such a record to today's fields, each added field at the value that
reproduces what the older code did (the default config's value, or `ADDED_WITH_OLD_BEHAVIOUR`
where the old behaviour is not the default), each retired field dropped. Everything below reads
configs through it (a resume's check against the recorded config, a trained workdir restored for
inference or explanation), so no other code carries defaults for fields an old file may lack.
"""

import copy
import json

from flax import traverse_util

from proxy_jax.config import defaults

# Fields whose value for a run older than them is not their default but follows from its
# config: a run from before `data.load_size` stored its images at its image_size.
ADDED_WITH_OLD_BEHAVIOUR = {
  "data.load_size": lambda flat, today: flat.get("image_size", today["image_size"]),
  # Every run before the stream pipeline decoded its images into the cache.
  "data.pipeline": lambda flat, today: "cache",
  # Every streamed run before data.stream_crop cropped in the train step.
  "data.stream_crop": lambda flat, today: "step",
}
# Fields earlier versions recorded that no longer exist; none changed what a run computed.
RETIRED = ("log_every_steps",)
# Fields a run adds to its config when it starts (the machine's reading of `dtype`), absent from
# the default config.
RESOLVED = ("dtype_resolved",)


def _flat(tree: dict) -> dict:
  return traverse_util.flatten_dict(tree, sep=".")


def today_fields() -> dict:
  """{dotted field: default value} of the current default config, as JSON values."""
  return _flat(json.loads(defaults.get_config().to_json()))


def upgrade(recorded: dict) -> dict:
  """`recorded` (a config.json's content, of any version) with today's fields; the recorded
  values are kept, the file's own dict is not changed."""
  flat = {k: v for k, v in _flat(copy.deepcopy(recorded)).items() if k not in RETIRED}
  today = today_fields()
  for field, default in today.items():
    if field not in flat:
      old = ADDED_WITH_OLD_BEHAVIOUR.get(field)
      flat[field] = old(flat, today) if old is not None else default
  return traverse_util.unflatten_dict(flat, sep=".")


def added_since(recorded: dict) -> list[str]:
  """The fields today's config has that `recorded` lacks (what `upgrade` fills in)."""
  present = set(_flat(recorded))
  return sorted(set(today_fields()) - present)

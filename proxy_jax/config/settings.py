"""The boundary: a run's ConfigDict becomes frozen, typed settings, validated once.

ml_collections stays the format users write and override (`--config.proxy.weight=0.3`);
`parse` checks it field by field (`checks.validate`, the one-line `error:` messages) and returns
a `Settings` whose families (`data`, `model`, `optimizer`, `augment`, `proxy`, `cams`) are frozen
dataclasses with the config's field names. Everything below the boundary (data, state, steps,
the loop, checkpoints, records, the library) takes settings, never the ConfigDict: nothing can
change a field after the check, and a field read that does not exist fails at once.

`to_dict` is the inverse (config.json's content), `from_record` reads a recorded config.json of
any version through `upgrade`, and `with_fields` is the one way to derive changed settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import traverse_util

from proxy_jax import augment
from proxy_jax.config import checks, upgrade
from proxy_jax.core.errors import ConfigError, fail_field


@dataclasses.dataclass(frozen=True)
class Data:
  """Where the images come from, the fixed split and the decode cache (`config.data`)."""

  source: str
  name: str
  path: str
  test_path: str
  label_regex: str
  tfds_data_dir: str
  train_split: str
  test_split: str
  split_seed: int
  val_fraction: float
  test_fraction: float
  max_examples: int
  load_size: int
  cache_dir: str
  decode_workers: int
  pipeline: str
  max_cache_gb: float
  stream_workers: int
  stream_crop: str


@dataclasses.dataclass(frozen=True)
class Model:
  """The architecture and its initial weights (`config.model`)."""

  name: str
  small_stem: str | bool
  width: int
  pretrained: str


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """The optimiser and its learning-rate schedule (`config.optimizer`)."""

  name: str
  learning_rate: float
  weight_decay: float
  b1: float
  b2: float
  momentum: float
  nesterov: bool
  decay_norm_and_bias: str | bool
  schedule: str
  warmup_epochs: float
  backbone_lr_multiplier: float


@dataclasses.dataclass(frozen=True)
class Proxy:
  """Proxy Attention: which examples are replaced, how and when (`config.proxy`)."""

  enabled: bool
  schedule: str
  subset: float
  threshold: float
  weight: float
  mode: str
  cam_method: str
  cam_target: str
  reuse_proxies: bool
  clear_every_step: bool
  class_balanced: bool
  num_logged_images: int
  device_buffer_mb: float


@dataclasses.dataclass(frozen=True)
class Cams:
  """CAM computation in the proxy step and the logged maps (`config.cams`)."""

  chunk_size: int
  smooth_sigma: float
  gradcampp_eps: float


@dataclasses.dataclass(frozen=True)
class Settings:
  """A run's settings: the families, then the run's own fields (`config.<field>`)."""

  data: Data
  model: Model
  optimizer: Optimizer
  augment: augment.Settings
  proxy: Proxy
  cams: Cams
  seed: int
  distributed: bool
  image_size: int
  batch_size: int
  batch_size_ceiling: int
  batch_size_memory_fraction: float
  eval_batch_size: int
  num_epochs: int
  label_smoothing: float
  evaluate_train_split: bool
  compilation_cache_dir: str
  checkpoint_every_epochs: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  log_every_seconds: float
  num_logged_images: int
  dtype: str
  # The compute dtype `dtype` means on this machine, set when the run records its config.
  dtype_resolved: str = ""


FAMILIES = {
  "data": Data,
  "model": Model,
  "optimizer": Optimizer,
  "augment": augment.Settings,
  "proxy": Proxy,
  "cams": Cams,
}


def parse(config) -> Settings:
  """Validates `config` (a ConfigDict) once and returns its settings; ConfigError otherwise.

  The checks are `checks.validate`'s, in its order: the run's fields, then the augment family's,
  which `augment.Settings` runs as it is built, then the one that needs the image size.
  """
  checks.validate_run_fields(config)
  settings = build(config.to_dict())
  augment.check_image_size(settings.augment, settings.image_size)
  return settings


def from_record(recorded: dict) -> Settings:
  """The settings of a recorded config.json of any version (brought to today's fields)."""
  return build(upgrade.upgrade(recorded))


def build(tree: dict) -> Settings:
  """Settings from a nested dict of every field; an unknown or missing field is a ConfigError."""
  families = {name: _family(name, cls, tree.get(name)) for name, cls in FAMILIES.items()}
  top = {k: v for k, v in tree.items() if k not in FAMILIES}
  return _make(Settings, "", {**top, **families})


def _family(name: str, cls, values):
  if not isinstance(values, dict):
    fail_field(name, values, "must be a group of fields")
  return _make(cls, name + ".", values)


def _make(cls, prefix: str, values: dict):
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for key in values:
    if key not in fields:
      fail_field(prefix + key, values[key], "no such field (the fields: config/defaults.py)")
  missing = [k for k, f in fields.items() if k not in values and f.default is dataclasses.MISSING]
  if missing:
    raise ConfigError(
      f"config.{prefix}{missing[0]} is missing: a config holds every field of the default one"
    )
  return cls(**{k: _frozen(v) for k, v in values.items()})


def _frozen(value):
  return tuple(value) if isinstance(value, list) else value


def to_dict(settings: Settings) -> dict:
  """The nested dict of every field (config.json's content; pairs as lists, as JSON has them)."""
  tree = dataclasses.asdict(settings)
  if not tree["dtype_resolved"]:
    del tree["dtype_resolved"]
  flat = traverse_util.flatten_dict(tree, sep=".")
  return traverse_util.unflatten_dict(
    {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}, sep="."
  )


def with_fields(settings: Settings, changes: dict[str, Any]) -> Settings:
  """`settings` with dotted fields changed ({"model.pretrained": "", "batch_size": 32})."""
  top, by_family = {}, {}
  for field, value in changes.items():
    family, _, name = field.rpartition(".")
    if family:
      by_family.setdefault(family, {})[name] = _frozen(value)
    else:
      top[field] = _frozen(value)
  for family, values in by_family.items():
    top[family] = dataclasses.replace(getattr(settings, family), **values)
  return dataclasses.replace(settings, **top)

"""Config validation before any compute, and the resolved config kept in the workdir.

`validate` refuses a bad config with a `ConfigError` naming the field, the value and what is
allowed, so a typo costs seconds, not a run. The allowed values are asked of the modules that
use them (`data.SOURCES`, `models`, `cams.METHODS`, `proxy.PROXY_MODES`, `proxy_step.parse_schedule`),
so a new choice is declared once, where it is implemented.
"""

import math
import os

from flax import traverse_util

from proxy_jax import cams
from proxy_jax import data
from proxy_jax.data import packed
from proxy_jax import proxy
from proxy_jax.run import model_state
from proxy_jax import models
from proxy_jax.run import proxy_step
from proxy_jax.config.fields import get_field
from proxy_jax.core.errors import ConfigError, fail_field


def _check_choice(config, field, choices):
  value = get_field(config, field)
  if value not in choices:
    fail_field(field, value, "choose one of " + ", ".join(map(str, choices)))


def _check_fraction(config, field, upper_open=False):
  value = get_field(config, field)
  if (
    not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 or (upper_open and value == 1.0)
  ):
    fail_field(field, value, "must be a number in [0, 1" + (")" if upper_open else "]"))


def _check_positive_int(config, field, allow=()):
  value = get_field(config, field)
  if value in allow:
    return
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    extra = f" (or {', '.join(map(str, allow))})" if allow else ""
    fail_field(field, value, "must be a positive integer" + extra)


def _check_finite(config) -> None:
  # One generic pass, so a float field added later is covered without a rule of its own.
  for field, value in flatten(config).items():
    values = value if isinstance(value, (list, tuple)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
      fail_field(field, value, "must be a finite number")


def validate(config) -> None:
  """Raises ConfigError for the first invalid field."""
  validate_run_fields(config)
  from proxy_jax import augment  # pylint: disable=g-import-not-at-top

  augment.check(config.augment, config.image_size)


def validate_run_fields(config) -> None:
  """Every check but the augment family's own (`augment.Settings` runs those when it is built)."""
  _check_finite(config)
  _validate_data(config)
  _check_choice(config, "model.name", models.MODEL_NAMES)
  small_stem = config.model.small_stem
  if not isinstance(small_stem, bool) and str(small_stem).lower() not in models.SMALL_STEM_CHOICES:
    fail_field(
      "model.small_stem", small_stem, "choose one of " + ", ".join(models.SMALL_STEM_CHOICES)
    )
  _check_choice(config, "dtype", models.DTYPE_CHOICES)
  width = config.model.width
  if (
    not isinstance(width, int) or width < 0 or (width and not models.takes_width(config.model.name))
  ):
    fail_field(
      "model.width", width, "must be an integer >= 0 (0 = default), and 0 for ViT and EfficientNet"
    )
  if models.is_vit(config.model.name):
    patch = models.vit_patch_size(config.image_size, config.model.small_stem)
    if config.image_size % patch:
      fail_field("image_size", config.image_size, f"must be a multiple of the ViT patch ({patch})")
  _check_positive_int(config, "batch_size", allow=(-1,))
  _check_positive_int(config, "eval_batch_size")
  if not isinstance(config.batch_size_ceiling, int) or config.batch_size_ceiling < 0:
    fail_field(
      "batch_size_ceiling", config.batch_size_ceiling, "must be an integer >= 0 (0 = auto)"
    )
  if not 0 < config.batch_size_memory_fraction <= 1:
    fail_field("batch_size_memory_fraction", config.batch_size_memory_fraction, "must be in (0, 1]")
  _check_positive_int(config, "num_epochs")
  _check_positive_int(config, "checkpoint_every_epochs")
  every = config.checkpoint_every_steps
  if not isinstance(every, int) or isinstance(every, bool) or every < 0:
    fail_field("checkpoint_every_steps", every, "must be an integer >= 0 (0 = only at epoch ends)")
  _check_positive_int(config, "keep_checkpoints")
  if not isinstance(config.compilation_cache_dir, str):
    fail_field(
      "compilation_cache_dir", config.compilation_cache_dir, "must be a folder path or \"\""
    )
  if (
    not isinstance(config.log_every_seconds, (int, float))
    or isinstance(config.log_every_seconds, bool)
    or not config.log_every_seconds > 0
  ):
    fail_field("log_every_seconds", config.log_every_seconds, "must be a number of seconds > 0")
  _check_fraction(config, "label_smoothing", upper_open=True)
  _check_choice(config, "evaluate_train_split", (True, False))
  _validate_optimizer(config)
  _validate_proxy(config)


def _validate_data(config):
  """The data.* fields and the image sizes."""
  _check_choice(config, "data.source", data.SOURCES)
  if config.data.source == "folder":
    for field in ("data.path", "data.test_path"):
      path = get_field(config, field)
      if (field == "data.path" or path) and not os.path.isdir(path):
        fail_field(field, path, "must be an existing directory of images")
  if config.data.source == "tfds" and not config.data.name:
    fail_field("data.name", config.data.name, "name a TFDS dataset, e.g. stanford_dogs")
  _check_fraction(config, "data.val_fraction", upper_open=True)
  _check_fraction(config, "data.test_fraction", upper_open=True)
  if config.data.val_fraction <= 0:
    fail_field(
      "data.val_fraction",
      config.data.val_fraction,
      "must be > 0 (validation is carved from the training data)",
    )
  carve_test = not (config.data.test_split or config.data.test_path)
  if carve_test and config.data.val_fraction + config.data.test_fraction >= 1.0:
    fail_field(
      "data.test_fraction",
      config.data.test_fraction,
      "val_fraction + test_fraction must leave training data (< 1)",
    )
  _check_choice(config, "data.pipeline", data.PIPELINES)
  if config.data.pipeline == "stream" and config.data.source not in ("folder", "tfds"):
    fail_field(
      "data.pipeline",
      config.data.pipeline,
      "the stream reads image folders and TFDS datasets; the digits use the cache",
    )
  if config.data.pipeline == "cache" and config.data.source == "folder":
    for field in ("data.path", "data.test_path"):
      if packed.is_pack(get_field(config, field)):
        fail_field(field, get_field(config, field), "is a pack: read it with data.pipeline=stream")
  max_gb = config.data.max_cache_gb
  if not isinstance(max_gb, (int, float)) or isinstance(max_gb, bool) or not max_gb > 0:
    fail_field("data.max_cache_gb", max_gb, "must be a number of gigabytes > 0")
  _check_choice(config, "data.stream_crop", data.STREAM_CROPS)
  workers = config.data.stream_workers
  if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
    fail_field("data.stream_workers", workers, "must be an integer >= 0 (0 = no worker process)")
  if not isinstance(config.data.split_seed, int):
    fail_field("data.split_seed", config.data.split_seed, "must be an integer")
  if config.data.max_examples < 0:
    fail_field("data.max_examples", config.data.max_examples, "must be >= 0 (0 = all)")
  _check_positive_int(config, "image_size")
  load_size = config.data.load_size
  if load_size != data.AUTO_LOAD_SIZE and (
    not isinstance(load_size, int) or isinstance(load_size, bool) or load_size < config.image_size
  ):
    fail_field(
      "data.load_size",
      load_size,
      f"must be an integer >= image_size ({config.image_size}), or {data.AUTO_LOAD_SIZE} (auto)",
    )


def _validate_optimizer(config):
  opt = config.optimizer
  _check_choice(config, "optimizer.name", model_state.OPTIMIZERS)
  _check_fraction(config, "optimizer.momentum", upper_open=True)
  if not isinstance(opt.nesterov, bool):
    fail_field("optimizer.nesterov", opt.nesterov, "must be True or False")
  decay = opt.decay_norm_and_bias
  if not isinstance(decay, bool) and str(decay).lower() not in (
    model_state.DECAY_NORM_AND_BIAS_CHOICES
  ):
    fail_field(
      "optimizer.decay_norm_and_bias",
      decay,
      "choose one of " + ", ".join(model_state.DECAY_NORM_AND_BIAS_CHOICES),
    )
  if not opt.learning_rate > 0:
    fail_field("optimizer.learning_rate", opt.learning_rate, "must be > 0")
  if opt.weight_decay < 0:
    fail_field("optimizer.weight_decay", opt.weight_decay, "must be >= 0")
  _check_fraction(config, "optimizer.b1", upper_open=True)
  _check_fraction(config, "optimizer.b2", upper_open=True)
  _check_choice(config, "optimizer.schedule", model_state.LR_SCHEDULES)
  if opt.warmup_epochs < 0:
    fail_field("optimizer.warmup_epochs", opt.warmup_epochs, "must be >= 0")
  if not 0 <= opt.backbone_lr_multiplier <= 1:
    fail_field(
      "optimizer.backbone_lr_multiplier",
      opt.backbone_lr_multiplier,
      "must be in [0, 1] (0 freezes the backbone)",
    )


def _validate_proxy(config):
  for field in ("proxy.subset", "proxy.threshold", "proxy.weight"):
    _check_fraction(config, field)
  _check_choice(config, "proxy.mode", proxy.PROXY_MODES)
  _check_choice(config, "proxy.cam_target", proxy.CAM_TARGETS)
  _check_choice(config, "proxy.cam_method", cams.METHODS)
  _check_positive_int(config, "cams.chunk_size")
  buffer = config.proxy.device_buffer_mb
  if not isinstance(buffer, (int, float)) or isinstance(buffer, bool) or not buffer > 0:
    fail_field("proxy.device_buffer_mb", buffer, "must be a number of megabytes > 0")
  if not config.cams.gradcampp_eps >= 0:
    fail_field(
      "cams.gradcampp_eps",
      config.cams.gradcampp_eps,
      "must be >= 0 (0 = the paper's Grad-CAM++, 1e-6 = pytorch-grad-cam's)",
    )
  try:
    proxy_step.parse_schedule(config.proxy.schedule, config.num_epochs, config.proxy.enabled)
  except ValueError as error:
    raise ConfigError(str(error)) from None


# ---------------------------------------------------------------- resolved config on disk


def flatten(config) -> dict:
  """{"proxy.threshold": 0.85, ...} of a ConfigDict or a nested dict (empty groups dropped)."""
  tree = config.to_dict() if hasattr(config, "to_dict") else config
  return traverse_util.flatten_dict(tree, sep=".")

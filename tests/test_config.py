"""Config validation: refused before any compute, naming the field and the allowed values."""

import os
import subprocess
import sys

import pytest

from proxy_jax import config_fields
from proxy_jax import config_lib
from tests.conftest import ROOT, make_tiny_config

BAD_VALUES = [
    ("model.name", "resnet9", "model.name='resnet9'.*resnet18"),
    ("data.source", "s3", "data.source='s3'.*digits, tfds, folder"),
    ("image_size", 0, "image_size=0.*positive integer"),
    ("image_size", -32, "image_size=-32"),
    ("data.val_fraction", 1.5, r"data.val_fraction=1.5.*\[0, 1\)"),
    ("data.test_fraction", -0.1, "data.test_fraction=-0.1"),
    ("proxy.threshold", 1.2, r"proxy.threshold=1.2.*\[0, 1\]"),
    ("proxy.weight", -0.5, "proxy.weight=-0.5"),
    ("proxy.subset", 2.0, "proxy.subset=2.0"),
    ("proxy.mode", "blur", "proxy.mode='blur'.*seed, blended"),
    ("proxy.cam_target", "truth", "proxy.cam_target='truth'"),
    ("proxy.cam_method", "gradcam_plus", "proxy.cam_method='gradcam_plus'.*gradcampp"),
    ("optimizer.schedule", "step", "optimizer.schedule='step'.*warmup_cosine"),
    ("optimizer.learning_rate", 0.0, "optimizer.learning_rate=0.0"),
    ("dtype", "float16", "dtype='float16'.*bfloat16"),
    ("batch_size", 0, "batch_size=0"),
    ("num_epochs", 0, "num_epochs=0"),
    ("label_smoothing", 1.0, "label_smoothing=1.0"),
    ("model.small_stem", "maybe", "model.small_stem='maybe'.*auto, true, false"),
]


def test_default_and_tiny_configs_are_valid():
  config_lib.validate(make_tiny_config())
  config_lib.validate(make_tiny_config(**{"proxy.enabled": True}))


@pytest.mark.parametrize("field,value,message", BAD_VALUES)
def test_bad_value_is_refused_with_its_field(field, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(make_tiny_config(**{field: value}))


@pytest.mark.parametrize("schedule,message", [
    ("5,q,3", "'q' is neither"), ("", "malformed"), ("1,p,-1", "'-1' is neither"),
    ("1,p,1,p", "ends with a proxy step"), ("1,p,2", "trains 3 epochs but config.num_epochs=2"),
    ("2", "no proxy step"), ("1,,p,1", "malformed")])
def test_bad_schedule_is_refused(schedule, message):
  config = make_tiny_config(**{"proxy.enabled": True, "proxy.schedule": schedule})
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_schedule_is_ignored_for_the_baseline():
  config_lib.validate(make_tiny_config(**{"proxy.schedule": "5,q,3"}))


def test_folder_source_needs_an_existing_directory(tmp_path):
  config = make_tiny_config(**{"data.source": "folder", "data.path": str(tmp_path / "none")})
  with pytest.raises(config_lib.ConfigError, match="data.path=.*none.*existing directory"):
    config_lib.validate(config)


def test_vit_image_size_must_fit_the_patch():
  config = make_tiny_config(**{"model.name": "vit_ti16", "image_size": 100, "model.width": 0,
                               "model.small_stem": "false"})
  with pytest.raises(config_lib.ConfigError, match="multiple of the ViT patch"):
    config_lib.validate(config)


def test_changed_config_in_an_existing_workdir_is_refused(tmp_path):
  config_lib.write_or_check_resolved(make_tiny_config(), str(tmp_path))
  config_lib.write_or_check_resolved(make_tiny_config(), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="proxy.threshold: 0.85 -> 0.5"):
    config_lib.write_or_check_resolved(make_tiny_config(**{"proxy.threshold": 0.5}),
                                       str(tmp_path))


def test_main_refuses_bad_override_before_any_compute(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={workdir}",
       "--config.model.name=resnet9"], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode != 0
  assert "config.model.name='resnet9' is invalid" in result.stderr
  assert not workdir.exists()


def test_dotted_fields_in_configs_and_run_json():
  config = make_tiny_config()
  assert config_fields.get_field(config, "proxy.threshold") == config.proxy.threshold
  config_fields.set_field(config, "proxy.threshold", 0.3)
  assert config.proxy.threshold == 0.3
  with pytest.raises(KeyError, match="'nope.x'"):
    config_fields.set_field(config, "nope.x", 1)
  # Items, never attributes: a field named like a dict method is the field.
  plain = {"a": {"items": 3}}
  assert config_fields.get_field(plain, "a.items") == 3
  assert config_fields.get_field(plain, "a.keys", None) is None
  assert config_fields.get_field(plain, "a.items.deeper", "absent") == "absent"
  assert not config_fields.has_field(plain, "a.b") and config_fields.has_field(plain, "a")
  with pytest.raises(KeyError, match="'a.b'"):
    config_fields.get_field(plain, "a.b")
  assert config_lib.flatten({"a": {"items": 3, "empty": {}}, "b": [1]}) == {"a.items": 3,
                                                                           "b": [1]}

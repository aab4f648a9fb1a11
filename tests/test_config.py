"""Config validation: refused before any compute, naming the field and the allowed values."""

import json
import os
import re
import subprocess
import sys

import pytest

from proxy_jax.core import io_utils
from proxy_jax.config import fields as config_fields
from proxy_jax.config import checks as config_lib
from proxy_jax.config import recorded as config_record
from tests.conftest import make_tiny_settings, ROOT, make_tiny_config

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
  ("proxy.device_buffer_mb", 0, "proxy.device_buffer_mb=0.*megabytes > 0"),
  ("proxy.device_buffer_mb", -2.5, "proxy.device_buffer_mb=-2.5"),
  ("optimizer.schedule", "step", "optimizer.schedule='step'.*warmup_cosine"),
  ("optimizer.learning_rate", 0.0, "optimizer.learning_rate=0.0"),
  ("dtype", "float16", "dtype='float16'.*bfloat16"),
  ("batch_size", 0, "batch_size=0"),
  ("num_epochs", 0, "num_epochs=0"),
  ("label_smoothing", 1.0, "label_smoothing=1.0"),
  ("model.small_stem", "maybe", "model.small_stem='maybe'.*auto, true, false"),
  ("log_every_seconds", 0.0, "log_every_seconds=0.0.*seconds > 0"),
  ("compilation_cache_dir", None, "compilation_cache_dir=None.*folder path"),
]


def test_default_and_tiny_configs_are_valid():
  config_lib.validate(make_tiny_config())
  config_lib.validate(make_tiny_config(**{"proxy.enabled": True}))


@pytest.mark.parametrize("field,value,message", BAD_VALUES)
def test_bad_value_is_refused_with_its_field(field, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(make_tiny_config(**{field: value}))


@pytest.mark.parametrize(
  "schedule,message",
  [
    ("5,q,3", "'q' is neither"),
    ("", "malformed"),
    ("1,p,-1", "'-1' is neither"),
    ("1,p,1,p", "ends with a proxy step"),
    ("1,p,2", "trains 3 epochs but config.num_epochs=2"),
    ("2", "no proxy step"),
    ("1,,p,1", "malformed"),
  ],
)
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
  config = make_tiny_config(
    **{"model.name": "vit_ti16", "image_size": 100, "model.width": 0, "model.small_stem": "false"}
  )
  with pytest.raises(config_lib.ConfigError, match="multiple of the ViT patch"):
    config_lib.validate(config)


def test_changed_config_in_an_existing_workdir_is_refused(tmp_path):
  config_record.write_or_check_resolved(make_tiny_settings(), str(tmp_path))
  config_record.write_or_check_resolved(make_tiny_settings(), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="proxy.threshold: 0.85 -> 0.5"):
    config_record.write_or_check_resolved(
      make_tiny_settings(**{"proxy.threshold": 0.5}), str(tmp_path)
    )


def test_fields_added_after_a_run_began_do_not_refuse_it_at_their_default(tmp_path):
  config_record.write_or_check_resolved(make_tiny_settings(), str(tmp_path))
  path = tmp_path / "config.json"
  recorded = io_utils.read_json(str(path))  # As an older version wrote it: no digest.
  del recorded["augment"]["erase"], recorded["cams"]["gradcampp_eps"]  # An older version's run.
  path.write_text(json.dumps(recorded))
  config_record.write_or_check_resolved(make_tiny_settings(), str(tmp_path))  # Resumes.
  assert json.loads(path.read_text()) == recorded  # The record is never rewritten.
  # Set to anything but the default, the new field makes a different run.
  with pytest.raises(config_lib.ConfigError, match="augment.erase: 'none' -> 'cutout'"):
    config_record.write_or_check_resolved(
      make_tiny_settings(**{"augment.erase": "cutout"}), str(tmp_path)
    )


def test_console_and_cache_fields_never_refuse_a_resume(tmp_path):
  config_record.write_or_check_resolved(make_tiny_settings(), str(tmp_path))
  path = tmp_path / "config.json"
  recorded = io_utils.read_json(str(path))  # As an older version wrote it: no digest.
  # As an older version recorded it: log_every_steps, no log_every_seconds, another cache.
  del recorded["log_every_seconds"], recorded["compilation_cache_dir"]
  recorded["log_every_steps"] = 50
  recorded["data"]["cache_dir"] = "/elsewhere/cache"
  path.write_text(json.dumps(recorded))
  config_record.write_or_check_resolved(
    make_tiny_settings(
      **{"log_every_seconds": 5.0, "compilation_cache_dir": "/tmp/jax", "data.decode_workers": 2}
    ),
    str(tmp_path),
  )
  assert json.loads(path.read_text()) == recorded
  with pytest.raises(config_lib.ConfigError, match="seed: 0 -> 1"):
    config_record.write_or_check_resolved(make_tiny_settings(seed=1), str(tmp_path))


def _float_fields():
  return sorted(
    k for k, v in config_lib.flatten(make_tiny_config()).items() if isinstance(v, float)
  )


def test_every_float_field_is_checked():
  assert len(_float_fields()) >= 15  # The walk must really reach the nested fields.


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_value_in_any_float_field_is_refused_naming_it(value):
  for field in _float_fields():
    with pytest.raises(config_lib.ConfigError, match=f"config.{field}=.*finite"):
      config_lib.validate(make_tiny_config(**{field: value}))


def test_resolved_dtype_is_recorded_and_may_differ_on_resume(tmp_path):
  settings = config_record.write_or_check_resolved(make_tiny_settings(dtype="auto"), str(tmp_path))
  assert settings.dtype_resolved == "float32"  # This suite runs on CPU.
  path = tmp_path / "config.json"
  recorded = io_utils.read_json(str(path))  # As an older version wrote it: no digest.
  assert recorded["dtype"] == "auto" and recorded["dtype_resolved"] == "float32"
  # A run begun on a GPU (bfloat16) resumes here in float32 instead of being refused.
  recorded["dtype_resolved"] = "bfloat16"
  path.write_text(json.dumps(recorded))
  config_record.write_or_check_resolved(make_tiny_settings(dtype="auto"), str(tmp_path))
  assert json.loads(path.read_text())["dtype_resolved"] == "bfloat16"
  with pytest.raises(config_lib.ConfigError, match="dtype: 'auto' -> 'bfloat16'"):
    config_record.write_or_check_resolved(make_tiny_settings(dtype="bfloat16"), str(tmp_path))


# Lines that TensorFlow's and XLA's C++ loggers write to stderr on import, not ours.
_LIBRARY_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::)")


def _run_main(*args, cwd=ROOT):
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, "main.py"), *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=cwd,
  )
  ours = [line for line in result.stderr.splitlines() if not _LIBRARY_LOG.match(line)]
  return result.returncode, ours


@pytest.mark.slow
@pytest.mark.parametrize(
  "override,message",
  [
    ("--config.model.name=resnet9", "error: config.model.name='resnet9' is invalid"),
    (
      "--config.optimizer.warmup_epochs=nan",
      "error: config.optimizer.warmup_epochs=nan is invalid: must be a finite number",
    ),
    (
      "--config.optimizer.learnin_rate=1",
      "error: --config.optimizer.learnin_rate: "
      ".*config/defaults.py has no such field; closest: config.optimizer.learning_rate",
    ),
  ],
)
def test_main_user_error_is_one_line_and_status_2(tmp_path, override, message):
  workdir = tmp_path / "run"
  status, stderr = _run_main(f"--workdir={workdir}", override)
  assert status == 2
  assert len(stderr) == 1 and re.match(message, stderr[0]), stderr
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
  assert config_lib.flatten({"a": {"items": 3, "empty": {}}, "b": [1]}) == {"a.items": 3, "b": [1]}


@pytest.mark.slow
def test_main_removes_the_workdir_it_made_when_data_refuses_the_config(tmp_path):
  workdir = tmp_path / "run"
  status, stderr = _run_main(
    f"--workdir={workdir}", "--config.data.max_examples=5", "--config.dtype=float32"
  )
  assert status == 2
  assert re.match("error: the val split is empty.*data.val_fraction", stderr[-1])
  assert not any(line.startswith("Traceback") for line in stderr)
  # Gone, so the corrected config can use the same --workdir.
  assert not workdir.exists()


def test_a_workdir_that_cannot_be_created_is_a_user_error(tmp_path):
  from proxy_jax.core import errors  # pylint: disable=g-import-not-at-top
  from proxy_jax.run import train

  (tmp_path / "a_file").write_text("x")
  with pytest.raises(errors.WorkdirError, match="a_file/run: cannot create it"):
    train.train_and_evaluate(make_tiny_config(), str(tmp_path / "a_file" / "run"))

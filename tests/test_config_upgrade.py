"""One upgrade for old workdirs: the config.json of every earlier version that exists in the
repository's results, and the older ones the code once read field by field, become today's
config: every field present, the recorded values kept, the added ones at what the old code did.
"""

import collections
import glob
import json
import os

import ml_collections
import pytest

from proxy_jax.config import checks as config_lib
from proxy_jax.config import upgrade
from proxy_jax.core import io_utils
from tests.conftest import ROOT, make_tiny_config

RESULTS = os.path.join(ROOT, "experiments", "results")


def _versions() -> dict:
  """{frozenset of fields: one config.json path}: one entry per version of the file found in
  experiments/results (the carried trials of every study)."""
  versions = collections.OrderedDict()
  for path in sorted(glob.glob(os.path.join(RESULTS, "**", "config.json"), recursive=True)):
    fields = frozenset(config_lib.flatten(io_utils.read_json(path, dict)))
    versions.setdefault(fields, path)
  return versions


def test_the_results_hold_more_than_one_version():
  assert len(_versions()) >= 2  # The pilot's runs predate proxy.device_buffer_mb.


@pytest.mark.parametrize(
  "path", list(_versions().values()), ids=lambda p: os.path.relpath(p, RESULTS).split(os.sep)[0]
)
def test_every_recorded_version_upgrades_to_todays_fields(path, tmp_path):
  recorded = io_utils.read_json(path, dict)
  upgraded = upgrade.upgrade(recorded)
  flat, old = config_lib.flatten(upgraded), config_lib.flatten(recorded)
  assert set(flat) == set(upgrade.today_fields()) | set(upgrade.RESOLVED)
  assert {k: flat[k] for k in old if k not in upgrade.RETIRED} == {
    k: v for k, v in old.items() if k not in upgrade.RETIRED
  }  # The recorded values stay.
  for field in upgrade.added_since(recorded):
    if field in upgrade.ADDED_WITH_OLD_BEHAVIOUR:  # What the older code did, not the default.
      expected = upgrade.ADDED_WITH_OLD_BEHAVIOUR[field](old, upgrade.today_fields())
    else:
      expected = upgrade.today_fields()[field]
    assert flat[field] == expected, field
  # Valid as today's code reads it (the photos' folders stand in for any existing one).
  config = ml_collections.ConfigDict(upgraded)
  config.data.path = config.data.test_path = str(tmp_path)
  config_lib.validate(config)


def test_an_older_version_gets_what_its_code_did():
  """A config.json from before load_size, the crops, SGD and gradcampp_eps, with the retired
  log_every_steps."""
  recorded = json.loads(make_tiny_config(image_size=24).to_json())
  del recorded["data"]["load_size"], recorded["cams"]["gradcampp_eps"]
  for field in ("crop", "crop_scale", "crop_ratio", "crop_padding", "crop_pad_mode"):
    del recorded["augment"][field]
  for field in ("name", "momentum", "nesterov", "decay_norm_and_bias"):
    del recorded["optimizer"][field]
  del recorded["log_every_seconds"]
  recorded["log_every_steps"] = 50
  upgraded = upgrade.upgrade(recorded)
  assert upgraded["data"]["load_size"] == 24  # Stored at image_size, not auto.
  assert upgraded["cams"]["gradcampp_eps"] == 0.0 and upgraded["optimizer"]["name"] == "adamw"
  assert upgraded["augment"]["crop"] == upgrade.today_fields()["augment.crop"]
  assert "log_every_steps" not in upgraded and upgraded["log_every_seconds"] > 0
  assert recorded["log_every_steps"] == 50  # The caller's dict is left as it was.
  assert upgrade.added_since(recorded) == sorted(
    [
      "augment.crop",
      "augment.crop_pad_mode",
      "augment.crop_padding",
      "augment.crop_ratio",
      "augment.crop_scale",
      "cams.gradcampp_eps",
      "data.load_size",
      "log_every_seconds",
      "optimizer.decay_norm_and_bias",
      "optimizer.momentum",
      "optimizer.name",
      "optimizer.nesterov",
    ]
  )


def test_no_module_keeps_its_own_defaults_for_old_configs():
  """The shims the upgrade replaced stay gone: no `.get(field, default)` on a config below the
  boundary, and no table of legacy values outside config/upgrade.py."""
  offenders = []
  for path in glob.glob(os.path.join(ROOT, "proxy_jax", "**", "*.py"), recursive=True):
    if path.endswith(os.path.join("config", "upgrade.py")):
      continue
    text = open(path, encoding="utf-8").read()
    for needle in (
      "LEGACY_VALUES",
      'config.get("',
      "opt.get(",
      "config.data.get(",
      "config.proxy.get(",
      "config.cams.get(",
      "config.model.get(",
      "older run configs lack",
      "Older run configs lack",
    ):
      if needle in text:
        offenders.append(f"{os.path.relpath(path, ROOT)}: {needle}")
  assert not offenders, offenders

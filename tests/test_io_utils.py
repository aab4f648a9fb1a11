"""Atomic writes: strict JSON (no NaN tokens) and file modes that honour the umask."""

import json
import math
import os
import stat

import numpy as np
import pytest

from proxy_jax import data
from proxy_jax.config import recorded as config_record
from proxy_jax.core import digests, errors, io_utils
from tests.conftest import make_tiny_settings


def _strict_load(path):
  def refuse(token):
    raise ValueError(f"non-standard JSON token {token}")

  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def test_non_finite_values_become_null_and_are_named(tmp_path):
  summary = {
    "final": {"val_loss": float("nan"), "val_accuracy": 0.5},
    "history": [{"train_loss": np.float32(np.inf)}, {"train_loss": 1.25}],
    "grid": np.array([1.0, -np.inf]),
    "count": np.int64(3),
  }
  path = tmp_path / "summary.json"
  io_utils.atomic_write_json(str(path), summary)
  loaded = _strict_load(path)
  assert loaded["final"] == {"val_loss": None, "val_accuracy": 0.5}
  assert loaded["history"] == [{"train_loss": None}, {"train_loss": 1.25}]
  assert loaded["grid"] == [1.0, None] and loaded["count"] == 3
  assert loaded["non_finite"] == {
    "final.val_loss": "NaN",
    "history[0].train_loss": "Infinity",
    "grid[1]": "-Infinity",
  }


def test_finite_json_has_no_note_and_round_trips(tmp_path):
  obj = {"a": [1, 2.5, None, "x"], "b": {"c": np.float64(0.1)}}
  io_utils.atomic_write_json(str(tmp_path / "x.json"), obj)
  loaded = _strict_load(tmp_path / "x.json")
  assert loaded.pop(digests.DIGEST_KEY) == digests.of_value(loaded)
  assert loaded == {"a": [1, 2.5, None, "x"], "b": {"c": 0.1}}
  assert io_utils.read_json(str(tmp_path / "x.json")) == loaded
  assert math.isclose(loaded["b"]["c"], 0.1)


def test_a_list_keeps_its_shape(tmp_path):
  io_utils.atomic_write_json(str(tmp_path / "x.json"), [1.0, float("nan")])
  assert _strict_load(tmp_path / "x.json") == [1.0, None]


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield
  os.umask(old)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_run_files_honour_the_umask(tmp_path, umask_022):
  # config.json, split.json (and classes.json, summary.json: the same writer) are shared results.
  settings = make_tiny_settings()
  config_record.write_or_check_resolved(settings, str(tmp_path))
  data.load_dataset(settings, str(tmp_path))
  io_utils.atomic_write_json(str(tmp_path / "classes.json"), ["a", "b"])
  for name in ("config.json", "split.json", "classes.json"):
    assert _mode(tmp_path / name) == 0o644, name
  os.umask(0o077)
  io_utils.atomic_write_text(str(tmp_path / "private.txt"), "x")
  assert _mode(tmp_path / "private.txt") == 0o600


@pytest.mark.parametrize(
  "change",
  [
    lambda text: text.replace('"c": 0.1', '"c": 0.2'),  # A digit changed, still JSON.
    lambda text: text.replace('"x"', '"y"'),
    lambda text: text.replace('"a": [', '"a": [0, '),  # A value added.
  ],
)
def test_json_changed_after_it_was_written_is_damaged(tmp_path, change):
  path = tmp_path / "x.json"
  io_utils.atomic_write_json(str(path), {"a": [1, 2.5, None, "x"], "b": {"c": 0.1}})
  path.write_text(change(path.read_text()))
  with pytest.raises(errors.DamagedFileError, match="does not match the digest"):
    io_utils.read_json(str(path), dict)


def test_json_without_a_digest_reads_as_before(tmp_path):
  """Files written before digests existed, and other JSON types, carry none."""
  (tmp_path / "old.json").write_text('{"a": 1}')
  (tmp_path / "list.json").write_text('[1, 2]')
  assert io_utils.read_json(str(tmp_path / "old.json")) == {"a": 1}
  assert io_utils.read_json(str(tmp_path / "list.json")) == [1, 2]

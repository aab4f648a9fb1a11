"""End to end: TFDS under mock data, resume after SIGKILL, sharded equals unsharded."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from proxy_jax import proxy
from proxy_jax.run import train
from tests.conftest import ROOT, make_tiny_config

TIMING_KEYS = ("epoch_seconds", "images_per_second")


def _config_file(tmp_path, **overrides) -> str:
  """A config file that main.py can load in a subprocess: the tiny config plus overrides."""
  path = tmp_path / "tiny_config.py"
  path.write_text(
    "import sys\n"
    f"sys.path.insert(0, {ROOT!r})\n"
    "from tests.conftest import make_tiny_config\n\n"
    "def get_config():\n"
    f"  return make_tiny_config(**{overrides!r})\n"
  )
  return str(path)


def _main(config_path, workdir, env=None):
  return subprocess.Popen(
    [
      sys.executable,
      os.path.join(ROOT, "main.py"),
      f"--config={config_path}",
      f"--workdir={workdir}",
    ],
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _without_timings(history):
  return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


@pytest.mark.slow
def test_tfds_dataset_end_to_end_with_proxy_steps(tmp_path):
  config = make_tiny_config(
    **{
      "data.source": "tfds",
      "data.name": "cifar100",
      "data.test_split": "test",
      "data.max_examples": 0,
      "data.val_fraction": 0.25,
      "proxy.enabled": True,
      "proxy.schedule": "1,p,1",
      "proxy.subset": 0.5,
      "proxy.threshold": 0.5,
    }
  )
  workdir = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=48):
    summary = train.train_and_evaluate(config, workdir)
  assert summary["num_examples"] == {"train": 36, "val": 12, "test": 48}
  assert len(summary["history"]) == 2 and summary["test"]["accuracy"] >= 0.0
  step = summary["proxy_steps"][0]
  assert step["chosen"] == -(-step["wrong"] // 2) and summary["bank_size"] == step["chosen"]
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
  assert os.path.exists(os.path.join(workdir, "proxy_steps", "step_000.png"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["data"]["name"] == "cifar100"
  # The learning rate really follows the schedule (the thesis code never stepped it).
  rates = [row["learning_rate"] for row in summary["history"]]
  assert rates[0] != rates[1]


def killed_and_resumed(tmp_path, overrides):
  """(resumed summary, uninterrupted summary, victim workdir): main.py SIGKILLed right after
  its first checkpoint, then run again, against the same config trained in one go."""
  victim_dir = tmp_path / "victim"
  victim = _main(_config_file(tmp_path, **overrides), victim_dir)
  deadline = time.time() + 240
  while not os.path.isdir(victim_dir / "checkpoints" / "1") and time.time() < deadline:
    assert victim.poll() is None, victim.stderr.read()[-2000:]
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert not os.path.exists(victim_dir / "summary.json"), "killed too late to test a resume"
  # The uninterrupted reference trains only now: alongside the victim it could let the victim
  # finish before the first poll on a loaded machine.
  expected = train.train_and_evaluate(make_tiny_config(**overrides), str(tmp_path / "reference"))
  resumed = _main(_config_file(tmp_path, **overrides), victim_dir)
  assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
  actual = _summary(victim_dir)
  assert _without_timings(actual["history"]) == _without_timings(expected["history"])
  return actual, expected, victim_dir


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
  overrides = {"num_epochs": 4}
  actual, expected, victim_dir = killed_and_resumed(tmp_path, overrides)
  assert actual["test"] == expected["test"] and actual["best"] == expected["best"]
  # Running a finished workdir again is a no-op that returns the same summary.
  again = train.train_and_evaluate(make_tiny_config(**overrides), str(victim_dir))
  assert again["history"] == actual["history"]


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
  overrides = {"batch_size": 32, "eval_batch_size": 64}
  config_path = _config_file(tmp_path, **overrides)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  sharded = _main(config_path, tmp_path / "four", env=env)
  single = train.train_and_evaluate(make_tiny_config(**overrides), str(tmp_path / "one"))
  assert sharded.wait(timeout=300) == 0, sharded.stderr.read()[-2000:]
  assert jax.device_count() == 1
  four = _summary(tmp_path / "four")
  for got, want in zip(four["history"], single["history"]):
    for key in ("train_loss", "val_loss"):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-4)
    for key in ("train_accuracy", "val_accuracy"):
      assert abs(got[key] - want[key]) <= 1 / 60
  np.testing.assert_allclose(four["test"]["loss"], single["test"]["loss"], rtol=1e-4)


@pytest.mark.slow
def test_bfloat16_run_trains_and_its_cams_and_proxies_are_finite(tmp_path):
  workdir = str(tmp_path / "bf16")
  summary = train.train_and_evaluate(
    make_tiny_config(
      **{
        "dtype": "bfloat16",
        "proxy.enabled": True,
        "proxy.schedule": "1,p,1",
        "proxy.subset": 1.0,
        "proxy.threshold": 0.5,
      }
    ),
    workdir,
  )
  assert summary["config"]["dtype_resolved"] == "bfloat16"
  for row in summary["history"]:
    assert np.isfinite([row["train_loss"], row["val_loss"]]).all()
  assert summary["history"][1]["train_loss"] < summary["history"][0]["train_loss"]
  assert summary["proxy_steps"][0]["chosen"] > 0 and summary["bank_size"] > 0
  from proxy_jax import cams, data  # pylint: disable=g-import-not-at-top
  from proxy_jax.images import preprocess
  from proxy_jax.run import restore

  model, variables, config, _ = restore.restore_for_inference(workdir)
  assert model.dtype == jax.numpy.bfloat16
  unit = preprocess.to_unit_range(data.load_dataset(config, workdir).train.images[:16])
  maps = np.asarray(cams.compute("gradcampp", model.apply, variables, preprocess.normalize(unit)))
  assert maps.dtype == np.float32 and np.isfinite(maps).all() and maps.max() > 0
  assert 0.0 <= maps.min() and maps.max() <= 1.0
  proxies = np.asarray(proxy.proxy_transform(unit, maps, 0.5, 0.2))
  assert np.isfinite(proxies).all() and not np.array_equal(proxies, np.asarray(unit))


def test_steps_import_without_tensorflow():
  # Accelerator images often ship JAX alone: the steps, models, CAMs and proxy step must not
  # need TensorFlow, which only feeds TFDS and writes summaries once a run starts.
  code = (
    "import importlib.abc, sys\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "  def find_spec(self, name, path, target=None):\n"
    "    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):\n"
    "      raise ImportError('blocked ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "from proxy_jax import cams, data, models, proxy\n"
    "from proxy_jax.run import proxy_step, steps, train\n"
    "assert not [m for m in sys.modules if m.startswith('tensorflow')]\n"
    "print('ok')\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "ok"

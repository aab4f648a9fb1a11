"""The training loop's guarantees: the batch size is chosen once, divergence stops the run before
anything non-finite is saved, a full disk is one clear error, a finished workdir is read only."""

import builtins
import errno
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scipy.special

from proxy_jax import models
from proxy_jax.core import io_utils
from proxy_jax.run import checkpoints, records, steps, train
from tests.conftest import ROOT, make_tiny_config

TIMING_KEYS = ("epoch_seconds", "images_per_second")


class Killed(Exception):
  """Stands in for a kill: raised inside the loop after a checkpoint."""


def _comparable(history):
  return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def _die_in_epoch(monkeypatch, doomed_epoch):
  original = train.train_epoch

  def train_epoch(setup, state, bank, epoch, report, *rest):
    if epoch == doomed_epoch:
      setup.ckpt.wait()
      raise Killed(f"killed before epoch {epoch + 1}")
    return original(setup, state, bank, epoch, report, *rest)

  monkeypatch.setattr(train, "train_epoch", train_epoch)


def _saved_epochs(workdir):
  return checkpoints.RunCheckpoints(workdir, 3).complete_epochs()


def _restored_params(workdir, config, epoch):
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  try:
    template = train.create_train_state(
      config, train.create_model(config, 10), jax.random.key(0), 1
    )
    state, _, _ = ckpt.restore(epoch, template)
  finally:
    ckpt.close()
  return jax.tree.leaves(state.params)


def _refuse_every_write(monkeypatch):
  """Any file write or directory creation raises, as on read-only storage (tests run as root,
  so permissions would not stop them)."""

  def refuse(*args, **kwargs):
    raise PermissionError(errno.EROFS, "read-only file system (test)")

  real_open = builtins.open

  def read_only_open(file, mode="r", *args, **kwargs):
    if any(flag in mode for flag in "wax+"):
      refuse()
    return real_open(file, mode, *args, **kwargs)

  for module, name in (
    (io_utils, "atomic_write"),
    (os, "mkdir"),
    (os, "replace"),
    (os, "rename"),
    (os, "remove"),
    (builtins, "open"),
  ):
    monkeypatch.setattr(module, name, read_only_open if name == "open" else refuse)
  monkeypatch.setattr(train, "_build", lambda *args: pytest.fail("a finished run was set up"))
  monkeypatch.setattr(
    train.data, "load_dataset", lambda *args: pytest.fail("a finished run loaded its data")
  )


@pytest.mark.slow
def test_batch_size_is_found_once_recorded_and_reused(tmp_path, monkeypatch, caplog):
  """batch_size=-1: config.json records the finder's choice before training, a resume after a
  kill keeps it although the finder would now choose another, and a finished workdir is a
  read-only no-op."""
  choices = []

  def finder(config, num_classes, factory):
    choices.append(16 if choices else 32)  # Another size on any later call.
    return choices[-1]

  monkeypatch.setattr(train.batch_finder, "find_batch_size", finder)
  monkeypatch.setattr(train, "finder_step_factory", lambda config, num_classes, frozen: None)
  auto = make_tiny_config(batch_size=-1)
  workdir = str(tmp_path / "auto")
  with monkeypatch.context() as patch:
    _die_in_epoch(patch, 1)
    caplog.set_level(logging.INFO)
    with pytest.raises(Killed):
      train.train_and_evaluate(auto, workdir)
  # One console line for the epoch, none from a logging metric writer.
  messages = [r.getMessage() for r in caplog.records]
  assert sum(m.startswith("epoch 1/2:") for m in messages) == 1
  assert not any("train/loss=" in m or "[Hyperparameters]" in m for m in messages)
  assert auto.batch_size == -1  # The caller's config is never changed.
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["batch_size"] == 32
  assert _saved_epochs(workdir) == [1]
  resumed = train.train_and_evaluate(make_tiny_config(batch_size=-1), workdir)
  assert choices == [32]  # The finder ran once, before config.json was written.
  assert resumed["config"]["batch_size"] == 32
  reference = train.train_and_evaluate(make_tiny_config(batch_size=32), str(tmp_path / "ref"))
  assert _comparable(resumed["history"]) == _comparable(reference["history"])
  assert resumed["test"] == reference["test"]

  _refuse_every_write(monkeypatch)
  again = train.train_and_evaluate(make_tiny_config(batch_size=-1), workdir)
  # Equal to what the run returned, as JSON stores it (tuples in the config become lists).
  assert again == json.loads(json.dumps(resumed)) and choices == [32]


@pytest.mark.slow
def test_divergence_stops_at_the_end_of_its_epoch_and_keeps_the_last_good_checkpoint(
  tmp_path, monkeypatch
):
  # The learning rate is NaN for the optimiser's update number 8 (0-based), so the parameters
  # become NaN at step 9: step 3 of epoch 2 (180 training examples, 6 steps per epoch).
  real_schedule = train.learning_rate_schedule

  def poisoned(config, steps_per_epoch):
    schedule = real_schedule(config, steps_per_epoch)
    return lambda count: jnp.where(count == 8, jnp.nan, 1.0) * schedule(count)

  monkeypatch.setattr(train, "learning_rate_schedule", poisoned)
  config = make_tiny_config(**{"num_epochs": 3, "proxy.enabled": True, "proxy.schedule": "2,p,1"})
  workdir = str(tmp_path / "run")
  with pytest.raises(train.DivergenceError) as raised:
    train.train_and_evaluate(config, workdir)
  message = str(raised.value)
  assert "epoch 2 at step 9 (step 3 of 6 in the epoch)" in message
  assert "last good checkpoint is epoch 1" in message and "learning_rate" in message
  assert _saved_epochs(workdir) == [1]  # Epoch 2 was never saved, epoch 1 survives.
  assert all(np.all(np.isfinite(p)) for p in _restored_params(workdir, config, 1))
  assert not os.path.exists(os.path.join(workdir, "proxy_steps"))  # No proxy step on NaN.
  assert records.read_summary(workdir) is None


@pytest.mark.slow
def test_divergent_learning_rate_exits_non_zero_with_one_message(tmp_path):
  config_path = tmp_path / "divergent.py"
  config_path.write_text(
    "import sys\n"
    f"sys.path.insert(0, {ROOT!r})\n"
    "from tests.conftest import make_tiny_config\n\n"
    "def get_config():\n"
    "  return make_tiny_config(**{'optimizer.learning_rate': 1e6, 'num_epochs': 3,\n"
    "                             'proxy.enabled': True, 'proxy.schedule': '2,p,1'})\n"
  )
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "main.py"),
      f"--config={config_path}",
      f"--workdir={workdir}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2  # A user error: one line, no traceback.
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: training diverged in epoch")
  assert "Lower config.optimizer.learning_rate (now 1e+06)" in result.stderr
  config = make_tiny_config()
  for epoch in _saved_epochs(str(workdir)):
    assert all(np.all(np.isfinite(p)) for p in _restored_params(str(workdir), config, epoch))
  summary_path = workdir / "summary.json"
  if summary_path.exists():  # Strict JSON: no NaN or Infinity tokens.
    json.loads(summary_path.read_text(), parse_constant=pytest.fail)
  assert not (workdir / "proxy_steps").exists()


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_is_one_clear_error_and_resumable(tmp_path, monkeypatch):
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 2:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(self, step, *args, **kwargs)

  workdir = str(tmp_path / "run")
  with monkeypatch.context() as patch:
    patch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(checkpoints.CheckpointWriteError) as raised:
      train.train_and_evaluate(make_tiny_config(), workdir)
  message = str(raised.value)
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  assert message.startswith("no space left on ") and f" writing {directory} (" in message
  assert "(checkpoint of epoch 2 needs about " in message and " MB free)" in message
  assert message.endswith(
    "the last intact checkpoint is epoch 1: free space and run the same command to resume"
  )
  assert _saved_epochs(workdir) == [1]
  # Orbax and the writers were shut down: the same workdir resumes and finishes.
  summary = train.train_and_evaluate(make_tiny_config(), workdir)
  assert [row["epoch"] for row in summary["history"]] == [1, 2]
  assert _saved_epochs(workdir) == [1, 2]


@pytest.mark.slow
def test_train_split_is_scored_in_eval_mode_on_every_training_example(tmp_path, monkeypatch):
  """summary.json's train_split: the final model on the un-augmented training split, the same
  numbers as its plain predictions (no padding row counted), and absent when switched off."""
  captured = {}
  original = train._finish  # pylint: disable=protected-access

  def finish(setup, state, *args):
    captured.update(setup=setup, state=state)
    return original(setup, state, *args)

  monkeypatch.setattr(train, "_finish", finish)
  # Rotation on: a score computed on augmented images would differ from the plain predictions.
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(
    make_tiny_config(**{"augment.rotation_degrees": 30.0}), workdir
  )
  split = captured["setup"].dataset.train
  assert len(split) % 64  # The last eval batch is padded.
  state = captured["state"]
  logits = np.asarray(
    steps.predict_step(state.apply_fn, models.variables_of(state), split.images), np.float64
  )
  log_probs = scipy.special.log_softmax(logits, axis=-1)
  expected_loss = -np.mean(log_probs[np.arange(len(split)), split.labels])
  scored = summary["train_split"]
  assert scored["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == split.labels), abs=1e-6)
  assert scored["loss"] == pytest.approx(expected_loss, rel=1e-4)
  assert records.read_summary(workdir).train_split == scored
  off = train.train_and_evaluate(
    make_tiny_config(evaluate_train_split=False), str(tmp_path / "off")
  )
  assert "train_split" not in off
  assert "train_split" not in json.loads((tmp_path / "off" / "summary.json").read_text())

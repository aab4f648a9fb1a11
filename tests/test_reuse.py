"""Reusing another study's runs: only runs with the trial's name and resolved config are copied
(whole, with their journal records marked), never over anything the workdir has; the study then
skips them, and its report names them."""

import json
import os
import subprocess
import sys

import pytest

from proxy_jax import sweep
from proxy_jax.core import errors
from proxy_jax.run import records
from proxy_jax.core.io_utils import atomic_write_json, atomic_write_text
from proxy_jax.study import report, reuse, spec
from proxy_jax.study import runs as runs_lib
from proxy_jax.sweep import carry, journal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = {"num_epochs": 2, "proxy.schedule": "1,p,1", "data.cache_dir": "/tmp/shared_cache"}
CONTROL_ARMS = {"baseline": {}, "mixup": {"augment.mix": "mixup"}}
COMPARISON_ARMS = {**CONTROL_ARMS, "cutmix": {"augment.mix": "cutmix"}}


def _study(name, arms, common=None, seeds=(0, 1)):
  return spec.validate(
    spec.Study(
      name=name,
      config=os.path.join(REPO, "configs", "default.py"),
      arms=arms,
      seeds=seeds,
      common=dict(common or COMMON),
    )
  )


def _finished_run(study, trial, trial_dir, changes=None):
  """What the trainer leaves: the resolved config (with the field it adds), a summary and a
  checkpoint; a lock file that must not travel."""
  config = spec.trial_config(study, trial["overrides"]).to_dict()
  config["dtype_resolved"] = "float32"
  for key, value in (changes or {}).items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  os.makedirs(os.path.join(trial_dir, "checkpoints", "2"))
  atomic_write_text(os.path.join(trial_dir, "checkpoints", "2", "state"), "weights")
  atomic_write_text(os.path.join(trial_dir, ".sweep.lock"), "")
  atomic_write_json(os.path.join(trial_dir, "sweep_trial.json"), trial)
  row = records.EpochRecord(epoch=2, val_accuracy=0.5, val_loss=1.0)
  records.write_summary(
    trial_dir,
    records.Summary(
      config=json.loads(json.dumps(config)),
      final=row,
      best=records.Best(0.5, 2),
      test={"accuracy": 0.6, "loss": 1.0},
      num_epochs=2,
      wall_time_s=3.0,
      history=[row, row],
      proxy_steps=[],
      train_split={"accuracy": 0.99, "loss": 0.1},
    ),
  )


def _ran_study(workdir, study, changes=None, unfinished=()):
  """A study's workdir as the runner leaves it; `changes` {trial: {field: value}} alter what
  a trial's run recorded, `unfinished` trials only started."""
  trials = spec.trials(study)
  os.makedirs(workdir)
  atomic_write_json(
    os.path.join(workdir, sweep.SWEEP_FILE),
    {
      "config": study.config,
      "sweep": f"study {study.name}",
      "common": study.common,
      "trials": trials,
    },
  )
  path = journal.journal_path(workdir, (0, 1))
  for index, trial in enumerate(trials):
    name = trial["name"]
    base = {"trial": name, "commit": "abc123", "study": study.name}
    journal.append_record(path, {**base, "status": sweep.STARTED, "time": 10.0 + index})
    if name in unfinished:
      continue
    _finished_run(study, trial, os.path.join(workdir, name), (changes or {}).get(name))
    journal.append_record(
      path, {**base, "status": sweep.FINISHED, "time": 20.0 + index, "seconds": 500.0 + index}
    )
  return trials


def test_identical_runs_are_copied_and_the_study_skips_them(tmp_path):
  control, comparison = _study("control", CONTROL_ARMS), _study("comparison", COMPARISON_ARMS)
  source, target = str(tmp_path / "control"), str(tmp_path / "comparison")
  _ran_study(source, control)
  result = reuse.reuse(comparison, target, source)
  shared = ["baseline_seed0", "mixup_seed0", "baseline_seed1", "mixup_seed1"]
  assert list(result["reuse"]) == shared and result["commits"] == ["abc123"]
  assert not result["refused"] and not result["present"]
  for name in shared:  # The whole folder but its lock; the records, each marked.
    copied = os.path.join(target, name)
    assert open(os.path.join(copied, "checkpoints", "2", "state")).read() == "weights"
    assert not os.path.exists(os.path.join(copied, ".sweep.lock"))
    assert records.read_summary(copied) == records.read_summary(os.path.join(source, name))
  reused = journal.read_journal(target)
  assert len(reused) == 8 and {r["reused_from"] for r in reused} == {os.path.abspath(source)}
  strip = lambda r: {k: v for k, v in r.items() if k != "reused_from"}
  assert [strip(r) for r in reused] == [
    r for r in journal.read_journal(source) if r["trial"] in shared
  ]
  # The study runs only what is left: the new arm.
  counts = sweep.run_trials(
    comparison.config, spec.trials(comparison), comparison.common, target, dry_run=True
  )
  assert counts["finished_before"] == 4 and counts["total"] == 6

  # Its runs keep their code version and time, and the report names where they came from.
  runs, missing = runs_lib.load_runs(comparison, target)
  assert missing == ["cutmix_seed0", "cutmix_seed1"]
  assert runs["mixup", 1]["commit"] == "abc123" and runs["mixup", 1]["process_seconds"] == 503.0
  rows = report.run_rows(comparison, runs)
  assert {r["reused_from"] for r in rows} == {os.path.abspath(source)}
  head = "\n".join(report._setting_lines(comparison, rows, [], ["abc123"], "cmd", missing))
  assert f"Reused: 4 run(s) copied from `{os.path.abspath(source)}`" in head
  assert "baseline_seed0, mixup_seed0, baseline_seed1, mixup_seed1" in head

  # Again: nothing is copied twice, nothing appended.
  again = reuse.reuse(comparison, target, source)
  assert not again["reuse"] and again["present"] == shared
  assert journal.read_journal(target) == reused


def test_runs_that_differ_are_not_reused(tmp_path):
  """A run recorded with another learning rate, a study run with another cache folder, an
  unfinished run: none is copied; the reasons name the fields."""
  control = _study("control", CONTROL_ARMS)
  source = str(tmp_path / "control")
  _ran_study(
    source,
    control,
    changes={"mixup_seed0": {"optimizer.learning_rate": 0.5}},
    unfinished=("baseline_seed1",),
  )
  comparison = _study("comparison", COMPARISON_ARMS)
  result = reuse.plan(comparison, str(tmp_path / "comparison"), source)
  assert list(result["reuse"]) == ["baseline_seed0", "mixup_seed1"]
  assert result["refused"] == {
    "mixup_seed0": "its resolved config differs in optimizer.learning_rate"
  }
  elsewhere = _study("comparison", COMPARISON_ARMS, {**COMMON, "data.cache_dir": "/tmp/other"})
  refused = reuse.plan(elsewhere, str(tmp_path / "comparison"), source)["refused"]
  assert not reuse.plan(elsewhere, str(tmp_path / "comparison"), source)["reuse"]
  assert refused["baseline_seed0"] == "its resolved config differs in data.cache_dir"
  assert not reuse.reuse(elsewhere, str(tmp_path / "comparison"), source)["reuse"]
  assert not os.path.exists(tmp_path / "comparison")  # Nothing to copy: nothing written.
  smaller_batches = _study("comparison", COMPARISON_ARMS, {**COMMON, "batch_size": 16})
  assert (
    "batch_size"
    in reuse.plan(smaller_batches, str(tmp_path / "x"), source)["refused"]["mixup_seed1"]
  )


def test_nothing_the_workdir_has_is_touched(tmp_path):
  control, comparison = _study("control", CONTROL_ARMS), _study("comparison", COMPARISON_ARMS)
  source, target = str(tmp_path / "control"), str(tmp_path / "comparison")
  _ran_study(source, control)
  os.makedirs(os.path.join(target, "baseline_seed0"))  # An interrupted run of its own.
  atomic_write_text(os.path.join(target, "baseline_seed0", "train.log"), "own")
  journal.append_record(
    journal.journal_path(target, (0, 1)),
    {"trial": "mixup_seed1", "status": sweep.STARTED, "time": 1.0},
  )
  # A copy killed midway left a partial folder: it is replaced, never renamed into place.
  os.makedirs(os.path.join(target, "mixup_seed0" + reuse.PARTIAL_SUFFIX, "junk"))
  result = reuse.reuse(comparison, target, source)
  assert result["present"] == ["baseline_seed0", "mixup_seed1"]
  assert list(result["reuse"]) == ["mixup_seed0", "baseline_seed1"]
  assert open(os.path.join(target, "baseline_seed0", "train.log")).read() == "own"
  assert not os.path.exists(os.path.join(target, "mixup_seed0", "junk"))
  assert not os.path.exists(os.path.join(target, "mixup_seed0" + reuse.PARTIAL_SUFFIX))
  with pytest.raises(errors.WorkdirError, match="is the study's own --workdir"):
    reuse.plan(comparison, source, source)
  with pytest.raises(errors.MissingPathError, match="no sweep.json"):
    reuse.plan(comparison, target, str(tmp_path / "nowhere"))


def test_carried_trials_are_reused_too(tmp_path):
  """From a folder carry export wrote (the next session): the small files travel, no
  checkpoints; the copies read back as the originals."""
  control, comparison = _study("control", CONTROL_ARMS), _study("comparison", COMPARISON_ARMS)
  source, carried = str(tmp_path / "control"), str(tmp_path / "carried")
  _ran_study(source, control, unfinished=("mixup_seed1",))
  carry.export(source, carried)
  target = str(tmp_path / "comparison")
  result = reuse.reuse(comparison, target, carried)
  assert list(result["reuse"]) == ["baseline_seed0", "mixup_seed0", "baseline_seed1"]
  assert not os.path.exists(os.path.join(target, "baseline_seed0", "checkpoints"))
  runs, _ = runs_lib.load_runs(comparison, target)
  assert (
    runs["baseline", 1]["summary"]
    == runs_lib.load_runs(control, source)[0]["baseline", 1]["summary"]
  )


def test_command_line(tmp_path):
  control = _study("control", CONTROL_ARMS)
  source = str(tmp_path / "control")
  _ran_study(source, control, changes={"mixup_seed1": {"optimizer.learning_rate": 0.5}})
  study_file = tmp_path / "comparison.py"
  study_file.write_text(
    "from proxy_jax.study.spec import Study\n"
    "def get_study():\n"
    f"  return Study(name='comparison', config={control.config!r}, seeds=(0, 1),\n"
    f"               common={{'num_epochs': 2, 'proxy.schedule': '1,p,1'}}, arms={COMPARISON_ARMS!r})\n"
  )
  command = [
    sys.executable,
    "-m",
    "proxy_jax.study.reuse",
    f"--study={study_file}",
    f"--workdir={tmp_path / 'comparison'}",
    f"--from={source}",
    "--set=data.cache_dir=/tmp/shared_cache",
  ]
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "reused 3 finished run(s)" in done.stdout
  assert "not reused: mixup_seed1: its resolved config differs in optimizer.learning_rate" in (
    done.stdout
  )
  assert "record code version abc123: run the study from a snapshot of it" in done.stdout
  bad = subprocess.run(
    command[:-2] + [f"--from={tmp_path / 'nowhere'}"],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
  assert bad.stderr.startswith("error: --from=") and "no sweep.json" in bad.stderr

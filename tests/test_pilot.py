"""The pilot: the baseline's setting chosen on mean validation accuracy from a finished sweep,
refused on a partial or non-baseline sweep, and read back by study files."""

import json
import os
import subprocess
import sys

import pytest

from proxy_jax.core import io_utils
from proxy_jax import sweep
from proxy_jax.study import pilot, spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (learning rate, weight decay) -> final validation accuracy per seed 0, 1. The test accuracy is
# ranked the other way round, so a choice that read it would pick another setting.
VAL = {
  (0.05, 5e-4): (0.70, 0.74),
  (0.1, 5e-4): (0.75, 0.77),
  (0.1, 1e-4): (0.78, 0.74),
  (0.2, 5e-4): (0.60, 0.62),
}


def _trial(lr, wd, seed):
  overrides = {"optimizer.learning_rate": lr, "optimizer.weight_decay": wd, "seed": seed}
  return {"name": sweep.trial_name(overrides), "overrides": overrides}


def _fake_sweep(workdir, val=VAL, seeds=(0, 1), finished=None, proxy=False):
  """What `python -m proxy_jax.sweep` leaves: sweep.json, the journal, each trial's summary."""
  trials = [_trial(lr, wd, s) for (lr, wd) in val for s in seeds]
  os.makedirs(workdir)
  with open(os.path.join(workdir, sweep.SWEEP_FILE), "w") as f:
    json.dump(
      {
        "config": "configs/x.py",
        "sweep": "configs/sweeps/x.py",
        "common": {"num_epochs": 3},
        "trials": trials,
      },
      f,
    )
  for trial in trials:
    lr, wd, seed = (
      trial["overrides"][k] for k in ("optimizer.learning_rate", "optimizer.weight_decay", "seed")
    )
    accuracy = val[lr, wd][seed]
    done = finished is None or trial["name"] in finished
    sweep.append_record(
      os.path.join(workdir, "journal.jsonl"),
      {
        "trial": trial["name"],
        "status": sweep.FINISHED if done else sweep.STARTED,
        "time": 1.0,
        "commit": "abc",
      },
    )
    if not done:
      continue
    os.makedirs(os.path.join(workdir, trial["name"]))
    summary = {
      "config": {"seed": seed, "proxy": {"enabled": proxy}},
      "num_epochs": 3,
      "final": {"epoch": 3, "val_accuracy": accuracy},
      "best": {"val_accuracy": accuracy, "epoch": 3},
      "test": {"accuracy": 1.0 - accuracy, "loss": 1.0},
      "train_split": {"accuracy": 0.99, "loss": 0.05},
      "history": [{"epoch": 3, "val_accuracy": accuracy}],
      "proxy_steps": [],
    }
    with open(os.path.join(workdir, trial["name"], "summary.json"), "w") as f:
      json.dump(summary, f)
  return trials


def test_the_best_mean_validation_setting_is_chosen(tmp_path):
  workdir, out = str(tmp_path / "pilot"), str(tmp_path / "results")
  _fake_sweep(workdir)
  content = pilot.write_pilot(workdir, out, "python -m proxy_jax.study.pilot")
  # Means: 0.72, 0.76, 0.76, 0.61: a tie, broken by the grid's order.
  assert content["overrides"] == {"optimizer.learning_rate": 0.1, "optimizer.weight_decay": 5e-4}
  assert content["mean_val_accuracy"] == pytest.approx(0.76)
  assert [s["mean_val_accuracy"] for s in content["settings"]] == pytest.approx(
    [0.72, 0.76, 0.76, 0.61]
  )
  assert content["settings"][0]["mean_gap"] == pytest.approx(0.99 - 0.72)
  assert content["common"] == {"num_epochs": 3} and content["commits"] == ["abc"]
  assert io_utils.read_json(os.path.join(out, "chosen.json")) == content
  report = open(os.path.join(out, "pilot.md")).read()
  assert "| 0.1 | 0.0005 | 2 | 76.00 +- 1.41 **(chosen)** | 99.00 | 23.00 |" in report
  assert "on the chosen setting: met." in report
  assert pilot.read_choice(os.path.join(out, "chosen.json")) == content["overrides"]
  # Without the tie the higher mean wins wherever it sits in the grid.
  changed = dict(VAL)
  changed[0.1, 1e-4] = (0.79, 0.74)
  _fake_sweep(str(tmp_path / "other"), val=changed)
  assert pilot.write_pilot(str(tmp_path / "other"), str(tmp_path / "o"))["overrides"] == {
    "optimizer.learning_rate": 0.1,
    "optimizer.weight_decay": 1e-4,
  }


def test_partial_or_non_baseline_sweeps_are_refused(tmp_path):
  trials = [_trial(lr, wd, s) for (lr, wd) in VAL for s in (0, 1)]
  partial = str(tmp_path / "partial")
  _fake_sweep(partial, finished={t["name"] for t in trials[1:]})
  with pytest.raises(spec.StudyError, match="1 of 8 trials have not finished"):
    pilot.write_pilot(partial, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")  # Nothing written.
  proxied = str(tmp_path / "proxied")
  _fake_sweep(proxied, proxy=True)
  with pytest.raises(spec.StudyError, match="tunes the baseline alone"):
    pilot.write_pilot(proxied, str(tmp_path / "out"))
  with pytest.raises(spec.StudyError, match="no sweep.json"):
    pilot.write_pilot(str(tmp_path), str(tmp_path / "out"))
  runs = [
    {"overrides": {"optimizer.learning_rate": lr, "seed": seed}, "summary": None}
    for lr, seed in ((0.1, 0), (0.1, 1), (0.2, 0), (0.2, 2))
  ]
  from proxy_jax.run import records  # pylint: disable=import-outside-toplevel

  for run in runs:
    run["summary"] = records.Summary.from_json({"final": {"val_accuracy": 0.5}})
  with pytest.raises(spec.StudyError, match="different seeds"):
    pilot.settings_table(runs)


def test_read_choice_refuses_a_missing_or_malformed_choice(tmp_path):
  missing = str(tmp_path / "imagenette_mini_pilot" / "chosen.json")
  with pytest.raises(
    spec.StudyError, match="does not exist: this study takes its baseline's setting from a pilot"
  ):
    pilot.read_choice(missing)
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"chosen": {}}))
  with pytest.raises(spec.StudyError, match="not a pilot's chosen.json"):
    pilot.read_choice(str(bad))
  bad.write_text(json.dumps({"overrides": {}}))
  with pytest.raises(spec.StudyError, match="non-empty"):
    pilot.read_choice(str(bad))


@pytest.mark.slow
def test_pilot_command_line(tmp_path):
  workdir, out = str(tmp_path / "pilot"), str(tmp_path / "results")
  env = {**os.environ, "PYTHONPATH": REPO}
  command = [sys.executable, "-m", "proxy_jax.study.pilot", f"--workdir={workdir}", f"--out={out}"]
  refused = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert refused.returncode == 2 and refused.stderr.strip().startswith("error: --workdir")
  _fake_sweep(workdir)
  done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'chosen: {"optimizer.learning_rate": 0.1, "optimizer.weight_decay": 0.0005}' in (
    done.stdout
  )
  assert json.load(open(os.path.join(out, "chosen.json")))["command"].startswith(
    "python -m proxy_jax.study.pilot --workdir="
  )

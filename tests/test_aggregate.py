"""Aggregation of a generated sweep directory: rows, values, groups, curves from event files."""

import json
import os

from clu import metric_writers
import numpy as np
import pandas as pd
import pytest

from proxy_jax import aggregate
from proxy_jax import sweep


def _summary(val_accuracies, test_accuracy, wall_time, proxy_steps):
  history = [
    {
      "epoch": e + 1,
      "train_loss": 1.0 / (e + 1),
      "train_accuracy": 0.5,
      "val_loss": 2.0 - a,
      "val_accuracy": a,
      "learning_rate": 1e-3,
      "epoch_seconds": 1.0,
    }
    for e, a in enumerate(val_accuracies)
  ]
  best = int(np.argmax(val_accuracies))
  final = {
    "epoch": len(val_accuracies),
    "train_loss": history[-1]["train_loss"],
    "train_accuracy": 0.5,
    "val_loss": 2.0 - val_accuracies[-1],
    "val_accuracy": val_accuracies[-1],
    "val_top5": 1.0,
  }
  return {
    "config": {},
    "final": final,
    "best": {"val_accuracy": val_accuracies[best], "epoch": best + 1},
    "test": {"loss": 0.3, "accuracy": test_accuracy, "top5": 1.0},
    "wall_time_s": wall_time,
    "num_epochs": len(val_accuracies),
    "proxy_steps": proxy_steps,
    "skipped_files": [],
    "num_examples": {"train": 100, "val": 20, "test": 20},
    "history": history,
  }


def _config(threshold, seed, model="tiny_cnn"):
  return {
    "seed": seed,
    "model": {"name": model},
    "data": {"name": "digits"},
    "proxy": {"threshold": threshold, "weight": 0.2},
  }


def _write_trial(root, overrides, config, summary, curve, resumed_curve=None):
  trial = {"name": sweep.trial_name(overrides), "overrides": overrides}
  path = os.path.join(root, trial["name"])
  os.makedirs(path)
  with open(os.path.join(path, sweep.TRIAL_FILE), "w") as f:
    json.dump(trial, f)
  if summary is not None:
    with open(os.path.join(path, "summary.json"), "w") as f:
      json.dump({**summary, "config": config}, f)
  else:
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(config, f)
  for points in (curve, resumed_curve):
    if points is None:
      continue
    writer = metric_writers.create_default_writer(path, just_logging=False)
    for step, value in points:
      writer.write_scalars(step, {"val/accuracy": value, "images_per_second": 100.0})
    writer.close()

  return trial["name"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("grid"))
  names = {}
  for threshold, seed, vals, test in [
    (0.5, 0, [0.4, 0.8, 0.7], 0.75),
    (0.5, 1, [0.5, 0.6, 0.9], 0.85),
    (0.9, 0, [0.3, 0.5, 0.6], 0.55),
  ]:
    overrides = {"proxy.threshold": threshold, "seed": seed}
    proxy_steps = [
      {"epoch": 1, "wrong": 10, "chosen": 5, "bank_size": 5, "seconds": 0.5},
      {"epoch": 2, "wrong": 6, "chosen": 3, "bank_size": 8, "seconds": 0.25},
    ]
    curve = [(10, vals[0]), (20, vals[1]), (30, 0.0)]
    # The first event file ran past its last checkpoint (step 30, a stale 0.0); the resumed run
    # logs step 30 again with the real value.
    resumed = [(30, vals[2])]
    summary = _summary(vals, test, 12.5, proxy_steps)
    if seed == 1:  # Scored on its training split; the others predate that score.
      summary["train_split"] = {"loss": 0.05, "accuracy": 0.99, "top5": 1.0}
    names[(threshold, seed)] = _write_trial(
      root, overrides, _config(threshold, seed), summary, curve, resumed
    )
  # A trial that crashed before writing a summary.
  names["crashed"] = _write_trial(
    root, {"proxy.threshold": 0.9, "seed": 1}, _config(0.9, 1), None, None
  )
  sweep.append_record(
    os.path.join(root, "journal.jsonl"),
    {"trial": names["crashed"], "status": sweep.FAILED, "time": 1.0},
  )
  return root, names


def test_rows_and_values(grid):
  root, names = grid
  results, curves, swept = aggregate.load_results(root)
  assert swept == ["threshold", "seed"]
  assert len(results) == 4
  row = results.set_index("trial").loc[names[(0.5, 1)]]
  assert row.threshold == 0.5 and row.seed == 1 and row.model == "tiny_cnn"
  assert row.status == "finished"
  assert row.final_val_accuracy == pytest.approx(0.9)
  assert row.best_val_accuracy == pytest.approx(0.9) and row.best_epoch == 3
  assert row.train_split_accuracy == 0.99 and row.train_split_loss == 0.05
  first = results.set_index("trial").loc[names[(0.5, 0)]]
  # Final and best are kept apart, never averaged.
  assert first.final_val_accuracy == pytest.approx(0.7)
  assert first.best_val_accuracy == pytest.approx(0.8) and first.best_epoch == 2
  assert first.test_accuracy == pytest.approx(0.75) and np.isnan(first.train_split_accuracy)
  assert first.proxy_steps == 2 and first.proxy_wrong == 16 and first.proxy_chosen == 8
  assert first.proxy_bank_size == 8 and first.proxy_seconds == pytest.approx(0.75)
  assert first.wall_time_s == 12.5 and first.num_epochs == 3
  assert first.images_per_second == 100.0
  crashed = results.set_index("trial").loc[names["crashed"]]
  assert crashed.status == "failed" and np.isnan(crashed.final_val_accuracy)
  assert crashed.threshold == 0.9


def test_curves_latest_write_wins(grid):
  root, names = grid
  curve = aggregate.read_scalars(os.path.join(root, names[(0.5, 1)]))
  val = curve[curve.tag == "val/accuracy"]
  assert val.step.tolist() == [10, 20, 30]
  assert val.value.tolist() == pytest.approx([0.5, 0.6, 0.9])


def test_group_query_best(grid):
  root, _ = grid
  results, _, _ = aggregate.load_results(root, with_curves=False)
  grouped = aggregate.group_results(results, ["threshold"]).set_index("threshold")
  assert grouped.loc[0.5, "final_val_accuracy_mean"] == pytest.approx(0.8)
  assert grouped.loc[0.5, "final_val_accuracy_std"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
  assert grouped.loc[0.5, "final_val_accuracy_count"] == 2
  # The crashed trial counts in no mean.
  assert grouped.loc[0.9, "final_val_accuracy_count"] == 1
  subset = aggregate.filter_results(results, "threshold == 0.5 and model == 'tiny_cnn'")
  assert len(subset) == 2
  best = aggregate.best_trials(results, "val_accuracy", top=1)
  assert best.iloc[0].final_val_accuracy == pytest.approx(0.9)
  assert aggregate.best_trials(results, "final_val_loss", top=1).iloc[
    0
  ].final_val_loss == pytest.approx(1.1)
  with pytest.raises(KeyError):
    aggregate.filter_results(results, "no_such_field == 1")


@pytest.mark.slow
def test_cli_writes_tables_and_plots(grid, tmp_path):
  import subprocess
  import sys  # pylint: disable=g-import-not-at-top,multiple-imports

  root, _ = grid
  out = str(tmp_path / "out")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "proxy_jax.aggregate",
      root,
      f"--out={out}",
      "--group-by=threshold",
      "--best=val_accuracy",
      "--query=status == 'finished'",
      "--plot",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "PYTHONPATH": os.getcwd()},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "best by final_val_accuracy" in result.stdout
  table = pd.read_csv(os.path.join(out, "results.csv"))
  assert len(table) == 3
  assert len(pd.read_csv(os.path.join(out, "grouped.csv"))) == 2
  for name in ("accuracy_vs_threshold.png", "accuracy_vs_seed.png", "curves_val_accuracy.png"):
    assert os.path.getsize(os.path.join(out, "plots", name)) > 1000

"""The pilot: the baseline's training setting chosen on the validation split, before any arm runs.

  python -m proxy_jax.sweep --config=configs/imagenette_mini_resnet.py \
      --sweep=configs/sweeps/imagenette_mini_pilot.py --workdir=runs/pilot
  python -m proxy_jax.study.pilot --workdir=runs/pilot \
      --out=experiments/results/imagenette_mini_pilot

The sweep trains the baseline alone over a declared grid (e.g. learning rate x weight decay) and
seeds. This tool reads its finished trials (sweep.json, the journal, each summary.json), groups
them by their overrides other than `seed`, and chooses the setting with the highest mean final
validation accuracy over seeds (ties: the first in the grid's order). Test results are never
read, so nothing of the test split can steer the regime. It writes `chosen.json` (the chosen
overrides and every setting's figures) and `pilot.md` into --out; study files take the chosen
overrides with `read_choice`, and refuse to load before the pilot has run.
"""

import json
import os
import shlex
import sys

from absl import app
from absl import flags
import numpy as np

from proxy_jax import cli, sweep
from proxy_jax.core import io_utils
from proxy_jax.run import records
from proxy_jax.core.io_utils import atomic_write_json, atomic_write_text
from proxy_jax.config import upgrade
from proxy_jax.study import preregistration, spec

CHOICE_FILE = "chosen.json"
REPORT_FILE = "pilot.md"
CRITERION = "highest mean final validation accuracy over seeds"


def _setting_key(overrides: dict) -> str:
  return json.dumps({k: v for k, v in overrides.items() if k != "seed"}, sort_keys=True)


def _finished_runs(workdir: str) -> tuple[list[dict], dict]:
  """([{"name", "overrides", "summary"}] of every trial, sweep.json); StudyError if any trial has
  not finished or is not a baseline run."""
  grid = os.path.join(workdir, sweep.SWEEP_FILE)
  if not os.path.isfile(grid):
    raise spec.StudyError(
      f"--workdir {workdir}: no {sweep.SWEEP_FILE}; run the pilot sweep "
      "(python -m proxy_jax.sweep ...) into it first"
    )
  described = io_utils.read_json(grid, dict)
  states = sweep.trial_states(workdir)
  runs, unfinished = [], []
  for trial in described["trials"]:
    summary = records.read_summary(os.path.join(workdir, trial["name"]))
    if states.get(trial["name"], {}).get("status") != sweep.FINISHED or summary is None:
      unfinished.append(trial["name"])
      continue
    if upgrade.upgrade(summary.config)["proxy"]["enabled"]:
      raise spec.StudyError(
        f"{workdir}/{trial['name']}: proxy.enabled is true; the pilot "
        "tunes the baseline alone (no proxy steps)"
      )
    runs.append({**trial, "summary": summary})
  if unfinished:
    raise spec.StudyError(
      f"{workdir}: {len(unfinished)} of {len(described['trials'])} trials have not finished "
      f"({', '.join(unfinished[:5])}{', ...' if len(unfinished) > 5 else ''}); a choice from "
      "part of the grid is not the declared one: finish the sweep (rerun it, with "
      "--retry-failed for failed trials)"
    )
  return runs, described


def settings_table(runs: list[dict]) -> list[dict]:
  """One row per setting (grid order): its seeds' final validation and training-split
  accuracy, their means, and the gap between them. Every setting must have the same seeds."""
  settings = {}
  for run in runs:
    settings.setdefault(_setting_key(run["overrides"]), []).append(run)
  rows = []
  for key, mine in settings.items():
    val = [r["summary"].final.val_accuracy for r in mine]
    fit = [(r["summary"].train_split or {}).get("accuracy", float("nan")) for r in mine]
    rows.append(
      {
        "overrides": json.loads(key),
        "seeds": [r["overrides"].get("seed") for r in mine],
        "val_accuracy": val,
        "train_split_accuracy": fit,
        "mean_val_accuracy": float(np.mean(val)),
        "std_val_accuracy": float(np.std(val, ddof=1)) if len(val) > 1 else 0.0,
        "mean_train_split_accuracy": float(np.mean(fit)),
        "mean_gap": float(np.mean(np.subtract(fit, val))),
      }
    )
  seed_sets = {tuple(sorted(map(str, r["seeds"]))) for r in rows}
  if len(seed_sets) > 1:
    raise spec.StudyError(
      f"the settings were run with different seeds {sorted(seed_sets)}; "
      "a fair choice compares every setting on the same seeds"
    )
  return rows


def choose(rows: list[dict]) -> dict:
  """The row with the highest mean validation accuracy; the first such in grid order on ties."""
  if not rows:
    raise spec.StudyError("the pilot sweep has no trials")
  best = max(row["mean_val_accuracy"] for row in rows)
  return next(row for row in rows if row["mean_val_accuracy"] == best)


def _report(chosen: dict, rows: list[dict], described: dict, workdir: str, command: str) -> str:
  fields = sorted(chosen["overrides"])
  gate = preregistration.Gate()
  percent = lambda v: "-" if np.isnan(v) else f"{100 * v:.2f}"
  lines = [
    "# Pilot: the baseline's setting, chosen on validation",
    "",
    f"Command: `{command}`",
    "",
    f"Sweep: `{workdir}` (config `{described['config']}`, "
    f"grid `{described['sweep']}`, common overrides "
    f"`{json.dumps(described['common'], sort_keys=True)}`).",
    "",
    f"Criterion: {CRITERION} (ties: the first in the grid's order). Test accuracy is not read.",
    "",
    "| " + " | ".join(fields) + " | seeds | validation accuracy (%) | training-split "
    "accuracy (%) | gap (points) |",
    "|" + "---|" * (len(fields) + 4),
  ]
  for row in rows:
    mark = " **(chosen)**" if row is chosen else ""
    lines.append(
      "| "
      + " | ".join(str(row["overrides"].get(f)) for f in fields)
      + f" | {len(row['seeds'])} | {percent(row['mean_val_accuracy'])} +- "
      f"{percent(row['std_val_accuracy'])}{mark} | "
      f"{percent(row['mean_train_split_accuracy'])} | {percent(row['mean_gap'])} |"
    )
  fits = (
    chosen["mean_train_split_accuracy"] >= gate.min_train_accuracy
    and chosen["mean_gap"] >= gate.min_gap
  )
  lines += [
    "",
    f"Chosen: `{json.dumps(chosen['overrides'], sort_keys=True)}`.",
    "",
    f"The studies' gate (training-split accuracy >= {100 * gate.min_train_accuracy:.0f}%"
    f", >= {100 * gate.min_gap:.0f} points above validation) on the chosen setting: "
    + (
      "met."
      if fits
      else "**not met**: widen or lengthen the baseline (a new pilot) before running any arm."
    ),
  ]
  return "\n".join(lines) + "\n"


def write_pilot(workdir: str, out: str, command: str = "") -> dict:
  """Chooses and writes chosen.json and pilot.md into `out`; returns chosen.json's content."""
  runs, described = _finished_runs(workdir)
  rows = settings_table(runs)
  chosen = choose(rows)
  commits = sorted(
    {
      str(r.get("commit", "unrecorded"))
      for r in sweep.read_journal(workdir)
      if r["status"] == sweep.FINISHED
    }
  )
  content = {
    "overrides": chosen["overrides"],
    "criterion": CRITERION,
    "mean_val_accuracy": chosen["mean_val_accuracy"],
    "seeds": chosen["seeds"],
    "workdir": os.path.abspath(workdir),
    "sweep": described["sweep"],
    "config": described["config"],
    "common": described["common"],
    "commits": commits,
    "command": command,
    "settings": rows,
  }
  os.makedirs(out, exist_ok=True)
  atomic_write_text(
    os.path.join(out, REPORT_FILE), _report(chosen, rows, described, workdir, command)
  )
  atomic_write_json(os.path.join(out, CHOICE_FILE), content)
  return content


# ---------------------------------------------------------------- for study files


def choice_path(pilot_name: str) -> str:
  """<results>/<pilot_name>/chosen.json (results: spec.results_dir())."""
  return os.path.join(spec.results_dir(), pilot_name, CHOICE_FILE)


def read_choice(path: str) -> dict:
  """The chosen overrides ({"optimizer.learning_rate": ..., ...}) of a pilot's chosen.json.

  StudyError when the file is missing or holds no overrides: a study that depends on a pilot
  cannot be defined before the pilot has run.
  """
  if not os.path.isfile(path):
    raise spec.StudyError(
      f"{path} does not exist: this study takes its baseline's setting from a pilot; run the "
      "pilot sweep, then python -m proxy_jax.study.pilot --workdir=<pilot sweep> "
      f"--out={os.path.dirname(path)} (experiments/README.md, 'A fair fight')"
    )
  try:
    overrides = io_utils.read_json(path, dict)["overrides"]
  except (ValueError, KeyError, TypeError) as error:
    raise spec.StudyError(f"{path}: not a pilot's chosen.json ({error!r})") from error
  if not isinstance(overrides, dict) or not overrides:
    raise spec.StudyError(f"{path}: 'overrides' must be a non-empty object, got {overrides!r}")
  return dict(overrides)


# ---------------------------------------------------------------- CLI


def define_flags():
  flags.DEFINE_string("workdir", None, "The pilot sweep's directory.", required=True)
  flags.DEFINE_string("out", None, "Results folder for chosen.json and pilot.md.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  command = shlex.join(["python", "-m", "proxy_jax.study.pilot"] + sys.argv[1:])
  content = write_pilot(flags.FLAGS.workdir, flags.FLAGS.out, command)
  print(open(os.path.join(flags.FLAGS.out, REPORT_FILE)).read())
  print(
    f"chosen: {json.dumps(content['overrides'], sort_keys=True)}; wrote {flags.FLAGS.out}",
    flush=True,
  )


if __name__ == "__main__":
  cli.run(main, define_flags)

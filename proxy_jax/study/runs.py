"""The finished runs of a study, their timing, and the checks that its arms were paired fairly.

For every seed, each arm is checked against the baseline arm of that seed:
  split      split.json's pool fingerprint and indices are identical;
  epochs     the same num_epochs, and a history of that many epochs;
  seed       the run's config.seed is the study's seed;
  init       the same checksum of the initial weights (summary.json `init_checksum`);
  data order the same seed, batch size and number of training examples, of which the epoch
             order (`data.epoch_order`) is a function;
  config     the resolved configs differ only in fields one of the two arms overrides;
  history    for arms that differ from the baseline only in proxy.* fields, the validation
             history before the first proxy step is identical (it only can be if the weights,
             data order and augmentation were); other arms change training from step one;
and every run must come from the same code version (the journal records it) and the same
compute slice (summary.json `compute`: on XLA:CPU the thread count alone changes results).
"""

import os
import subprocess

from proxy_jax import sweep
from proxy_jax.core import errors
from proxy_jax.data import splits
from proxy_jax.run import records
from proxy_jax.config import upgrade
from proxy_jax.study import spec

# The code being versioned is this package: git finds its checkout from the package's folder.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_version(repo: str = _PACKAGE_DIR) -> str:
  """The commit of the code (a COMMIT file of an exported snapshot, else git), "-dirty" when
  tracked files differ from it; "unknown" for an installed package without either."""
  for folder in (repo, os.path.dirname(repo)):  # An export holds COMMIT beside the package.
    path = os.path.join(folder, "COMMIT")
    if os.path.exists(path):
      with open(path) as f:
        return f.read().strip()
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "--short=12", "HEAD"],
      cwd=repo,
      check=True,
      capture_output=True,
      text=True,
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=repo,
      check=True,
      capture_output=True,
      text=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return commit + ("-dirty" if dirty else "")


def _read_split(trial_dir: str) -> dict | None:
  """split.json of a trial (None without one) through splits' one reader."""
  path = os.path.join(trial_dir, "split.json")
  if not os.path.exists(path):
    return None
  try:
    return splits.read_split(path)[0]
  except errors.DamagedFileError as error:
    raise spec.StudyError(
      f"{path} is damaged ({error.cause}); restore it from a backup, or "
      "delete that trial's folder and rerun the study to train it "
      "again"
    ) from error


def _read_summary(trial_dir: str) -> dict | None:
  """summary.json through records' one reader (older files get defaults), as its JSON dict."""
  try:
    summary = records.read_summary(trial_dir)
  except errors.DamagedFileError as error:
    raise spec.StudyError(
      f"{error.path} is damaged ({error.cause}); rerun the study without "
      "--report=only: it runs that trial again, which rebuilds the summary "
      "from its last checkpoint"
    ) from error
  return None if summary is None else summary.to_json()


def load_runs(study: spec.Study, workdir: str) -> tuple[dict, list]:
  """({(arm, seed): run}, missing trial names); a run holds summary, split and its journal."""
  states = sweep.trial_states(workdir)
  attempts = {}
  for record in sweep.read_journal(workdir):
    if record["status"] in (sweep.FINISHED, sweep.FAILED):
      attempts.setdefault(record["trial"], []).append(record)
  runs, missing = {}, []
  for name, (arm, seed) in spec.arm_and_seed(study).items():
    trial_dir = os.path.join(workdir, name)
    summary = _read_summary(trial_dir)
    if states.get(name, {}).get("status") != sweep.FINISHED or summary is None:
      missing.append(name)
      continue
    runs[arm, seed] = {
      "name": name,
      "workdir": trial_dir,
      "summary": summary,
      "split": _read_split(trial_dir),
      "commit": states[name].get("commit", "unrecorded"),
      "process_seconds": sum(float(r.get("seconds", 0.0)) for r in attempts.get(name, [])),
      "attempts": len(attempts.get(name, [])),
      # Copied from another study's workdir by python -m proxy_jax.study.reuse.
      "reused_from": states[name].get("reused_from", ""),
    }
  return runs, missing


def flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def first_proxy_epoch(summary: dict) -> int | None:
  steps = summary.get("proxy_steps") or []
  return min(s["epoch"] for s in steps) if steps else None


def _history(summary: dict, epochs: int) -> list:
  return [(h["val_accuracy"], h["val_loss"]) for h in summary["history"][:epochs]]


def check_pair(study: spec.Study, arm: str, seed: int, run: dict, base: dict) -> dict:
  """The checks of one arm against the baseline arm of the same seed (see the module doc)."""
  s, b = run["summary"], base["summary"]
  split_ok = (
    run["split"] is not None
    and base["split"] is not None
    and all(run["split"].get(k) == base["split"].get(k) for k in ("pool_fingerprint", "indices"))
  )
  epochs_ok = s.get("num_epochs") == b.get("num_epochs") and len(s["history"]) == len(
    b["history"]
  ) == s.get("num_epochs")
  # Both read as today's fields (the one upgrade of old configs), so they compare field by field.
  config = flatten(upgrade.upgrade(s["config"]))
  base_config = flatten(upgrade.upgrade(b["config"]))
  seed_ok = config["seed"] == base_config["seed"] == seed
  init_ok = s.get("init_checksum") is not None and s.get("init_checksum") == b.get("init_checksum")
  sizes, base_sizes = s.get("num_examples") or {}, b.get("num_examples") or {}
  order_ok = (
    seed_ok
    and config["batch_size"] == base_config["batch_size"]
    and sizes.get("train") is not None
    and sizes.get("train") == base_sizes.get("train")
  )
  allowed = set(study.arms[arm]) | set(study.arms[study.baseline])
  differing = sorted(
    k
    for k in set(config) | set(base_config)
    if config.get(k) != base_config.get(k) and k not in allowed  # A key in one only: differs.
  )
  changed = {k for k in allowed if config[k] != base_config[k]}
  proxy_only = all(k.startswith("proxy.") for k in changed)
  history = "n/a (augmentation differs from step one)"
  if arm == study.baseline:
    history = "n/a (baseline)"
  elif proxy_only:
    before = first_proxy_epoch(s)
    before = len(s["history"]) if before is None else before
    same = _history(s, before) == _history(b, before)
    history = f"{'identical' if same else 'DIFFERENT'} for {before} epoch(s)"
  return {
    "seed": seed,
    "arm": arm,
    "split": split_ok,
    "epochs": epochs_ok,
    "seed_ok": seed_ok,
    "init": init_ok,
    "data_order": order_ok,
    "config": not differing,
    "unexpected_config_fields": differing,
    "history": history,
    "commit": run["commit"],
    "compute": records.compute_label(s.get("compute")),
  }


def fairness_checks(study: spec.Study, runs: dict) -> tuple[list, list]:
  """(rows, failures): one row per finished (seed, arm) with a baseline; failures as text."""
  rows, failures = [], []
  for seed in study.seeds:
    base = runs.get((study.baseline, seed))
    if base is None:
      continue
    for arm in study.arms:
      if (arm, seed) not in runs:
        continue
      row = check_pair(study, arm, seed, runs[arm, seed], base)
      rows.append(row)
      names = {
        "split": "split.json differs",
        "epochs": "epochs differ",
        "seed_ok": "seed differs",
        "init": "initial weights differ (init_checksum)",
        "data_order": "data order inputs differ (seed, batch size, train size)",
        "config": f"config differs in {row['unexpected_config_fields']}",
      }
      for key, text in names.items():
        if not row[key]:
          failures.append(f"seed {seed}, arm {arm} vs {study.baseline}: {text}")
      if row["history"].startswith("DIFFERENT"):
        failures.append(
          f"seed {seed}, arm {arm}: validation history before the first proxy "
          f"step differs from {study.baseline}'s"
        )
  commits = sorted({r["commit"] for r in runs.values()})
  if len(commits) > 1:
    failures.append(f"the runs used different code versions: {', '.join(commits)}")
  return rows, failures + compute_failures(runs)


COMPUTE_FIX = (
  "run every trial with the same --parallel / --devices_per_trial on the same kind "
  "of machine; on XLA:CPU the thread count changes results (delete the odd trials' "
  "folders and run the study again to retrain them)"
)


def compute_failures(runs: dict) -> list[str]:
  """One failure if the runs computed on different slices, or one was resumed on another.

  Measured: the digits study's 16 trials run serially (2 cores each) and with --parallel 2 (1
  core each) differed in all 16 summaries, so arms on different slices differ for a reason
  that is not the method. Runs of earlier versions recorded no slice: they are not compared.
  """
  slices, resumed = {}, False
  for (arm, seed), run in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
    compute = run["summary"].get("compute")
    if compute:
      slices.setdefault(records.compute_label(compute), []).append(f"{arm} seed {seed}")
      resumed = resumed or "sessions" in compute  # Summary.compute of a mixed run.
  if len(slices) < 2 and not resumed:
    return []
  named = "; ".join(f"{label} ({', '.join(names)})" for label, names in sorted(slices.items()))
  return [f"the runs used different compute slices: {named}. Fix: {COMPUTE_FIX}"]

r"""Baseline versus Proxy Attention: paired seeds, same split, same initialisation, same epochs.

    PYTHONPATH=. python experiments/compare.py --name=digits --runs=/tmp/exp/digits \
        --seeds=0,1,2 -- --config.num_epochs=20

Every seed trains two arms as `main.py` subprocesses, each in its own workdir under --runs:
`baseline` (--config.proxy.enabled=False) and `proxy`; everything after `--` is passed to both.
Both arms of a seed draw the split, the initial weights, the epoch order and the augmentation
keys from config.seed, so the only difference is the proxy step. This script checks that rather
than assuming it: split.json must be identical across the arms of a seed, and the validation
history before the first proxy step must match exactly (it can only match if the weights, the
data order and the augmentation were the same).

Writes to --out/<name>/: runs.csv (one row per run), summary.md (tables, paired test, checks),
curves.png (validation accuracy per epoch) and paired.png (test accuracy per seed). Finished
runs (those with summary.json) are not trained again, so an interrupted comparison resumes.
"""

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)
from proxy_jax import records  # pylint: disable=g-import-not-at-top,wrong-import-position
ARMS = ("baseline", "proxy")
ARM_FLAGS = {"baseline": ["--config.proxy.enabled=False"], "proxy": []}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--name", required=True, help="experiment name (results subfolder)")
  parser.add_argument("--runs", required=True, help="parent of the run workdirs (not the repo)")
  parser.add_argument("--out", default=os.path.join(_REPO, "experiments", "results"))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--config", default=os.path.join(_REPO, "configs", "default.py"))
  parser.add_argument("--python", default=sys.executable)
  args, overrides = parser.parse_known_args(argv)
  overrides = [o for o in overrides if o != "--"]
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  if len(seeds) < 3:
    parser.error("a paired comparison needs at least 3 seeds")
  return args, seeds, overrides


# ---------------------------------------------------------------- running


def main_command(args, arm, seed, overrides):
  workdir = os.path.join(args.runs, f"{arm}_seed{seed}")
  return workdir, ([args.python, os.path.join(_REPO, "main.py"), f"--config={args.config}",
                    f"--workdir={workdir}", f"--config.seed={seed}"]
                   + overrides + ARM_FLAGS[arm])


def _last_line(path):
  with open(path, errors="replace") as f:
    lines = [line.strip() for line in f if line.strip()]
  return lines[-1].removeprefix("error: ") if lines else "(empty log)"


def train_all(args, seeds, overrides):
  """Runs every (seed, arm) not yet finished, one at a time (the arms share the CPU)."""
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for seed in seeds:
    for arm in ARMS:
      workdir, command = main_command(args, arm, seed, overrides)
      if os.path.exists(os.path.join(workdir, "summary.json")):
        print(f"[compare] {arm} seed {seed}: already done", flush=True)
        continue
      os.makedirs(workdir, exist_ok=True)
      print(f"[compare] {arm} seed {seed}: {shlex.join(command)}", flush=True)
      started = time.time()
      log_path = os.path.join(workdir, "main.log")
      with open(log_path, "a") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=_REPO).returncode
      if status == 2:  # main.py's one-line user error (bad field or data): pass it on as is.
        print(f"error: {arm} seed {seed}: {_last_line(log_path)} (log: {log_path})",
              file=sys.stderr)
        sys.exit(2)
      if status:
        raise subprocess.CalledProcessError(status, command)
      print(f"[compare] {arm} seed {seed}: {time.time() - started:.0f}s", flush=True)


# ---------------------------------------------------------------- checks and statistics


def load_runs(args, seeds, overrides):
  runs = {}
  for seed in seeds:
    for arm in ARMS:
      workdir, _ = main_command(args, arm, seed, overrides)
      summary = records.read_summary(workdir)
      with open(os.path.join(workdir, "split.json")) as f:
        split = json.load(f)
      runs[arm, seed] = {"summary": summary, "split": split}
  return runs


def fairness_checks(runs, seeds):
  """Per seed: identical split, and identical validation history before the first proxy step."""
  rows = []
  for seed in seeds:
    base, prox = runs["baseline", seed], runs["proxy", seed]
    steps = prox["summary"].proxy_steps
    before = steps[0].epoch if steps else len(prox["summary"].history)
    history = lambda run: [(h.val_accuracy, h.val_loss)
                           for h in run["summary"].history[:before]]
    same_split = all(base["split"][k] == prox["split"][k] for k in ("pool_fingerprint", "indices"))
    rows.append({"seed": seed, "same_split": same_split,
                 "epochs_before_first_proxy_step": before,
                 "identical_history_before_proxy": history(base) == history(prox)})
  return rows


def run_rows(runs, seeds):
  rows = []
  for seed in seeds:
    for arm in ARMS:
      summary = runs[arm, seed]["summary"]
      test = summary.test or {}
      steps = summary.proxy_steps
      rows.append({"arm": arm, "seed": seed,
                   "val_accuracy": summary.final.val_accuracy,
                   "best_val_accuracy": summary.best.val_accuracy,
                   "test_accuracy": test.get("accuracy", float("nan")),
                   "test_loss": test.get("loss", float("nan")),
                   "wall_time_s": summary.wall_time_s,
                   "proxy_wrong": " ".join(str(s.wrong) for s in steps),
                   "proxy_chosen": " ".join(str(s.chosen) for s in steps),
                   "bank_size": summary.bank_size,
                   "proxy_seconds": sum(s.seconds for s in steps)})
  return rows


def paired(rows, seeds, metric):
  """Per-seed proxy - baseline differences, paired t-test and exact two-sided sign test."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  value = {(r["arm"], r["seed"]): r[metric] for r in rows}
  base = np.array([value["baseline", s] for s in seeds])
  prox = np.array([value["proxy", s] for s in seeds])
  diffs = prox - base
  if np.allclose(diffs, diffs[0]):
    t_p = float("nan") if diffs[0] == 0 else 0.0  # Zero variance: the t statistic is undefined.
  else:
    t_p = float(stats.ttest_rel(prox, base).pvalue)
  nonzero = diffs[diffs != 0]
  sign_p = (float(stats.binomtest(int(np.sum(nonzero > 0)), len(nonzero)).pvalue)
            if len(nonzero) else 1.0)
  return {"metric": metric, "baseline_mean": base.mean(), "baseline_std": base.std(ddof=1),
          "proxy_mean": prox.mean(), "proxy_std": prox.std(ddof=1), "diffs": diffs,
          "mean_diff": diffs.mean(), "std_diff": diffs.std(ddof=1), "t_p": t_p,
          "sign_p": sign_p, "wins": int(np.sum(diffs > 0)), "losses": int(np.sum(diffs < 0))}


# ---------------------------------------------------------------- writing


def pct(x):
  return f"{100 * x:.2f}"


def write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def summary_markdown(name, command, seeds, rows, comparisons, checks):
  lines = [f"# Baseline vs Proxy Attention: {name}", "", f"Command: `{command}`", "",
           f"Seeds: {', '.join(map(str, seeds))}. Final-epoch metrics (no early stopping); "
           "accuracies in %, mean +- sample std over seeds.", "",
           "| arm | val accuracy | test accuracy | best val accuracy | wall time (s) |",
           "|---|---|---|---|---|"]
  for arm in ARMS:
    mine = [r for r in rows if r["arm"] == arm]
    cell = lambda key: (f"{pct(np.mean([r[key] for r in mine]))} +- "
                        f"{pct(np.std([r[key] for r in mine], ddof=1))}")
    lines.append(f"| {arm} | {cell('val_accuracy')} | {cell('test_accuracy')} | "
                 f"{cell('best_val_accuracy')} | "
                 f"{np.mean([r['wall_time_s'] for r in mine]):.0f} |")
  lines += ["", "Paired by seed (proxy - baseline, percentage points):", "",
            "| metric | " + " | ".join(f"seed {s}" for s in seeds)
            + " | mean diff | wins/losses | paired t-test p | sign test p |",
            "|---|" + "---|" * (len(seeds) + 4)]
  for c in comparisons:
    lines.append(f"| {c['metric']} | " + " | ".join(f"{100 * d:+.2f}" for d in c["diffs"])
                 + f" | {100 * c['mean_diff']:+.2f} +- {100 * c['std_diff']:.2f} | "
                 f"{c['wins']}/{c['losses']} | {c['t_p']:.3f} | {c['sign_p']:.3f} |")
  lines += ["", f"With {len(seeds)} seeds the power is tiny: the exact sign test cannot go "
            f"below p = {2 * 0.5 ** len(seeds):.3f}, and only a difference several times "
            "larger than the seed-to-seed spread would reach p < 0.05 in the t-test.", "",
            "Fairness checks (per seed, baseline vs proxy arm):", "",
            "| seed | same split.json | epochs before first proxy step | "
            "identical val history before it |", "|---|---|---|---|"]
  for c in checks:
    lines.append(f"| {c['seed']} | {c['same_split']} | {c['epochs_before_first_proxy_step']} "
                 f"| {c['identical_history_before_proxy']} |")
  lines += ["", "Proxy steps (proxy arm): wrong / chosen per step, final bank size:", ""]
  for r in rows:
    if r["arm"] == "proxy":
      lines.append(f"- seed {r['seed']}: wrong {r['proxy_wrong']}; chosen {r['proxy_chosen']}; "
                   f"bank {r['bank_size']}; {r['proxy_seconds']:.1f}s in proxy steps")
  return "\n".join(lines) + "\n"


def plot(path_curves, path_paired, runs, seeds, rows, name):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(7, 4.2))
  for arm, color in zip(ARMS, ("tab:blue", "tab:orange")):
    curves = np.array([[h.val_accuracy for h in runs[arm, s]["summary"].history]
                       for s in seeds])
    epochs = np.arange(1, curves.shape[1] + 1)
    mean, std = curves.mean(0), curves.std(0, ddof=1)
    axis.plot(epochs, 100 * mean, color=color, label=f"{arm} (mean of {len(seeds)} seeds)")
    axis.fill_between(epochs, 100 * (mean - std), 100 * (mean + std), color=color, alpha=0.2)
  for step in runs["proxy", seeds[0]]["summary"].proxy_steps:
    axis.axvline(step.epoch + 0.5, color="grey", linestyle=":", linewidth=1)
  axis.set(xlabel="epoch (dotted: proxy steps)", ylabel="validation accuracy (%)",
           title=f"{name}: validation accuracy, mean +- std over seeds")
  axis.legend()
  figure.tight_layout()
  figure.savefig(path_curves, dpi=120)
  plt.close(figure)

  figure, axis = plt.subplots(figsize=(4.5, 4.2))
  value = {(r["arm"], r["seed"]): 100 * r["test_accuracy"] for r in rows}
  for seed in seeds:
    axis.plot([0, 1], [value["baseline", seed], value["proxy", seed]], "o-", color="grey")
    axis.annotate(f"seed {seed}", (1.03, value["proxy", seed]), fontsize=8)
  axis.set_xticks([0, 1], list(ARMS))
  axis.set_xlim(-0.3, 1.5)
  axis.set(ylabel="test accuracy (%)", title=f"{name}: paired test accuracy")
  figure.tight_layout()
  figure.savefig(path_paired, dpi=120)
  plt.close(figure)


def code_version() -> str:
  """The commit the runs used: git, or a COMMIT file in an exported snapshot of the repo."""
  path = os.path.join(_REPO, "COMMIT")
  if os.path.exists(path):
    with open(path) as f:
      return f.read().strip()
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv):
  args, seeds, overrides = parse_args(argv)
  command = (shlex.join(["python", "experiments/compare.py"] + argv)
             + f"` at commit `{code_version()}")
  started = time.time()
  train_all(args, seeds, overrides)
  runs = load_runs(args, seeds, overrides)
  rows = run_rows(runs, seeds)
  comparisons = [paired(rows, seeds, m) for m in ("val_accuracy", "test_accuracy")]
  checks = fairness_checks(runs, seeds)
  out = os.path.join(args.out, args.name)
  os.makedirs(out, exist_ok=True)
  write_csv(os.path.join(out, "runs.csv"), rows)
  text = summary_markdown(args.name, command, seeds, rows, comparisons, checks)
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(text)
  plot(os.path.join(out, "curves.png"), os.path.join(out, "paired.png"), runs, seeds, rows,
       args.name)
  print(text)
  print(f"[compare] wrote {out} in {time.time() - started:.0f}s", flush=True)
  if not all(c["same_split"] and c["identical_history_before_proxy"] for c in checks):
    print("[compare] WARNING: a fairness check failed; see summary.md", flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

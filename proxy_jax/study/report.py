"""The report of a finished study: tables, paired tests, sentences, plots, explanation scores.

Written to `<out>/`: summary.md (everything a reader needs, with the command and commit),
runs.csv (one row per run), paired.csv (every arm against the baseline, per metric),
explanations.csv (one row per run), study.json (the same numbers for programs), and the plots
paired_differences.png, accuracy_vs_time.png, val_curves.png and cams.png. Final-epoch metrics
only: no best-epoch picking, and every seed of every arm counts.
"""

import json
import math
import os
import time

import numpy as np
import pandas as pd

from proxy_jax.run import records
from proxy_jax.core.io_utils import atomic_save_figure, atomic_write, atomic_write_text
from proxy_jax.study import explanations, manipulation, preregistration, spec, stats

METRICS = (("test_accuracy", "test accuracy"), ("val_accuracy", "validation accuracy"))
# Explanation scores: the direction that is better, for the table header.
BETTER = {"deletion_auc": "lower", "insertion_auc": "higher", "average_drop_pct": "lower",
          "increase_in_confidence_pct": "higher"}


def run_rows(study: spec.Study, runs: dict) -> list[dict]:
  rows = []
  for seed in study.seeds:
    for arm in study.arms:
      if (arm, seed) not in runs:
        continue
      run = runs[arm, seed]
      summary = run["summary"]
      test = summary.get("test") or {}
      rates = [h["images_per_second"] for h in summary["history"]
               if h.get("images_per_second") is not None]
      steps = summary.get("proxy_steps") or []
      rows.append({
          "arm": arm, "seed": seed, "trial": run["name"],
          "val_accuracy": summary["final"]["val_accuracy"],
          # The final model on the un-augmented training split (runs from before it: nan).
          "train_split_accuracy": (summary.get("train_split") or {}).get("accuracy",
                                                                         float("nan")),
          "test_accuracy": test.get("accuracy", float("nan")),
          "test_loss": test.get("loss", float("nan")),
          "epochs": summary.get("num_epochs"),
          "wall_time_s": summary.get("wall_time_s", float("nan")),
          "process_seconds": run["process_seconds"], "attempts": run["attempts"],
          # The median skips the first epoch's compilation without dropping anything.
          "images_per_s": float(np.median(rates)) if rates else float("nan"),
          "proxy_steps": len(steps), "proxy_seconds": sum(s.get("seconds", 0.0) for s in steps),
          "init_checksum": summary.get("init_checksum"), "commit": run["commit"],
          "reused_from": run.get("reused_from", ""),
          "compute": records.compute_label(summary.get("compute")),
          **manipulation.run_columns(summary)})
  return rows


def _mean_std(values, digits: int = 2) -> str:
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]  # Not recorded (an older run): left out, not averaged.
  if len(values) < 2:
    return f"{values.mean():.{digits}f}" if len(values) else "-"
  return f"{values.mean():.{digits}f} +- {values.std(ddof=1):.{digits}f}"


def arm_table(study: spec.Study, rows: list[dict]) -> list[str]:
  lines = ["| arm | runs | test accuracy (%) | validation accuracy (%) | training-split "
           "accuracy (%) | wall time per run (s) | train images/s |",
           "|---|---|---|---|---|---|---|"]
  for arm in study.arms:
    mine = [r for r in rows if r["arm"] == arm]
    lines.append(
        f"| {arm} | {len(mine)} | {_mean_std([100 * r['test_accuracy'] for r in mine])} | "
        f"{_mean_std([100 * r['val_accuracy'] for r in mine])} | "
        f"{_mean_std([100 * r['train_split_accuracy'] for r in mine])} | "
        f"{_mean_std([r['wall_time_s'] for r in mine])} | "
        f"{_mean_std([r['images_per_s'] for r in mine])} |")
  return lines


def seed_lines(study: spec.Study, rows: list[dict]) -> list[str]:
  """Every seed's final test accuracy per arm (%), the numbers every figure above comes from."""
  values = {(r["arm"], r["seed"]): r["test_accuracy"] for r in rows}
  lines = ["| seed | " + " | ".join(study.arms) + " |", "|---|" + "---|" * len(study.arms)]
  for seed in study.seeds:
    cells = [f"{100 * values[arm, seed]:.1f}" if (arm, seed) in values else "missing"
             for arm in study.arms]
    lines.append(f"| {seed} | " + " | ".join(cells) + " |")
  return lines


def paired_tables(study: spec.Study, rows: list[dict]) -> dict:
  """metric -> compare_arms rows, with the verdict sentence added."""
  result = {}
  for metric, _ in METRICS:
    values = {(r["arm"], r["seed"]): r[metric] for r in rows
              if not math.isnan(r[metric])}
    compared = stats.compare_arms(values, study.baseline, list(study.arms), list(study.seeds))
    for row in compared:
      row["verdict"] = stats.verdict(row)
    result[metric] = compared
  return result


def _fmt_p(p: float) -> str:
  return "-" if math.isnan(p) else f"{p:.3g}"


def _fmt_interval(low: float, high: float, scale: float = 100.0, digits: int = 2) -> str:
  """An interval, or why there is none (zero spread leaves the t interval undefined)."""
  if math.isnan(low):
    return "undefined (no spread)"
  return f"{scale * low:+.{digits}f} to {scale * high:+.{digits}f}"


def paired_lines(compared: list[dict], label: str, baseline: str) -> list[str]:
  lines = [f"Paired by seed ({label}, arm - {baseline}, percentage points; Holm across "
           f"{len(compared)} compared arm(s); the 95% CI is unadjusted; a t-test p marked * "
           "comes from the exact sign-flip test, as every seed gave the same difference):", "",
           "| arm | n | mean diff | 95% CI | t-test p | Holm t p | sign p | Holm sign p | "
           "wins/losses |", "|---|---|---|---|---|---|---|---|---|"]
  for r in compared:
    lines.append(f"| {r['arm']} | {r['n']} | {100 * r['mean']:+.2f} | "
                 f"{_fmt_interval(r['ci_low'], r['ci_high'])} | {_fmt_p(r['t_p'])}"
                 f"{'*' if r.get('p_method') == 'sign-flip' else ''} | "
                 f"{_fmt_p(r['holm_t_p'])} | {_fmt_p(r['sign_p'])} | "
                 f"{_fmt_p(r['holm_sign_p'])} | {r['wins']}/{r['losses']} |")
  return lines


def explanation_lines(study: spec.Study, rows: list[dict]) -> list[str]:
  if not rows:
    return ["Not computed (--explain=false)."]
  first = rows[0]
  cached = sum(bool(r.get("from_cache")) for r in rows)
  scored_at = sorted({str(r.get("scored_at", "unrecorded")) for r in rows})
  lines = [f"{first['cam_method']} maps of each run's final model for its predicted class, on "
           f"the same {first['images']} {study.explain['split']} images, mean +- std over "
           "seeds; in brackets the paired difference against the baseline with its 95% t "
           "interval (no multiple-testing correction: descriptive). Scored by code version "
           f"{', '.join(scored_at)}; {cached} of {len(rows)} run(s) read back from their "
           "`explanations.json` (scored before for the same settings, images and run).", "",
           "| arm | " + " | ".join(f"{k} ({BETTER[k]} is better)" for k in explanations.SCORES)
           + " | accuracy on these images (%) |", "|---|" + "---|" * (len(BETTER) + 1)]
  for arm in study.arms:
    mine = {r["seed"]: r for r in rows if r["arm"] == arm}
    base = {r["seed"]: r for r in rows if r["arm"] == study.baseline}
    cells = []
    for key in explanations.SCORES:
      digits = 3 if key.endswith("auc") else 1
      cell = _mean_std([r[key] for r in mine.values()], digits)
      shared = [s for s in mine if s in base]
      if arm != study.baseline and len(shared) >= 2:
        t = stats.paired_t([mine[s][key] - base[s][key] for s in shared])
        cell += (f" [{t['mean']:+.{digits}f}, "
                 f"{_fmt_interval(t['ci_low'], t['ci_high'], 1.0, digits)}]")
      cells.append(cell)
    lines.append(f"| {arm} | " + " | ".join(cells) + " | "
                 + _mean_std([100 * r["accuracy"] for r in mine.values()]) + " |")
  return lines


def fairness_lines(checks: list[dict], failures: list[str]) -> list[str]:
  lines = ["Each arm against the baseline arm of the same seed (see proxy_jax/study/runs.py):",
           "", "| seed | arm | same split | same epochs | seed | same init weights | same data "
           "order | config differs only in the arms' fields | val history before the first "
           "proxy step | compute slice |", "|---|---|---|---|---|---|---|---|---|---|"]
  yes = lambda ok: "yes" if ok else "**NO**"
  for c in checks:
    # Rows of study.json files from before the compute slice was recorded lack it.
    lines.append(f"| {c['seed']} | {c['arm']} | {yes(c['split'])} | {yes(c['epochs'])} | "
                 f"{yes(c['seed_ok'])} | {yes(c['init'])} | {yes(c['data_order'])} | "
                 f"{yes(c['config'])} | {c['history']} | {c.get('compute', 'unrecorded')} |")
  lines += ["", "All checks passed." if not failures else
            "FAILED checks:\n" + "\n".join(f"- {f}" for f in failures)]
  return lines


def overhead(rows: list[dict], explain_seconds: float, report_seconds: float) -> dict:
  """The study's time beyond its training runs, from the journal and the runs' own clocks."""
  process = sum(r["process_seconds"] for r in rows)
  training = sum(r["wall_time_s"] for r in rows)
  launching = max(0.0, process - training)
  total = process + explain_seconds + report_seconds
  extra = launching + explain_seconds + report_seconds
  return {"trial_process_s": process, "training_s": training, "launching_s": launching,
          "explanations_s": explain_seconds, "report_s": report_seconds, "total_s": total,
          "overhead_s": extra, "overhead_fraction": extra / total if total else float("nan")}


def overhead_lines(cost: dict) -> list[str]:
  share = 100 * cost["overhead_fraction"]
  return [
      f"- training runs (their own wall time, from start of setup to summary): "
      f"{cost['training_s']:.0f} s",
      f"- launching and lost work (trial process time outside the run's own clock: "
      f"interpreter, imports, device start, failed attempts, work lost since the last "
      f"checkpoint of a resumed trial; a killed study's last attempt leaves no journal record "
      f"and is not counted): {cost['launching_s']:.0f} s",
      f"- explanation scores: {cost['explanations_s']:.0f} s",
      f"- report (loading runs, checks, statistics, plots): {cost['report_s']:.0f} s",
      f"- overhead: {cost['overhead_s']:.0f} s of {cost['total_s']:.0f} s = **{share:.1f}%** "
      f"({'within' if share < 10 else 'ABOVE'} the 10% target)"]


# ---------------------------------------------------------------- plots


def plot_all(study: spec.Study, runs: dict, rows: list[dict], paired: dict, out: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  compared = [r for r in paired["test_accuracy"] if not math.isnan(r["t_p"])]
  figure, axis = plt.subplots(figsize=(7, 0.45 * len(compared) + 1.6))
  positions = np.arange(len(compared))[::-1]
  means = np.array([100 * r["mean"] for r in compared])
  errors = np.array([[100 * (r["mean"] - r["ci_low"]) for r in compared],
                     [100 * (r["ci_high"] - r["mean"]) for r in compared]])
  colors = ["tab:green" if r["holm_t_p"] < 0.05 and r["mean"] > 0 else
            "tab:red" if r["holm_t_p"] < 0.05 else "tab:gray" for r in compared]
  axis.barh(positions, means, xerr=errors, color=colors, capsize=3)
  axis.axvline(0, color="black", linewidth=0.8)
  axis.set_yticks(positions, [r["arm"] for r in compared])
  axis.set(xlabel=f"test accuracy - {study.baseline} (points), mean and 95% t interval",
           title=f"{study.name}: paired differences over seeds\n(coloured where Holm p < 0.05)")
  figure.tight_layout()
  atomic_save_figure(os.path.join(out, "paired_differences.png"), figure, dpi=120)
  plt.close(figure)

  figure, axis = plt.subplots(figsize=(7, 5))
  for arm in study.arms:
    mine = [r for r in rows if r["arm"] == arm]
    if not mine:
      continue
    times = np.array([r["wall_time_s"] for r in mine])
    accuracy = 100 * np.array([r["test_accuracy"] for r in mine])
    spread = lambda v: v.std(ddof=1) if len(v) > 1 else 0.0
    axis.errorbar(times.mean(), accuracy.mean(), xerr=spread(times), yerr=spread(accuracy),
                  fmt="o", capsize=3, label=arm)
    axis.annotate(arm, (times.mean(), accuracy.mean()), fontsize=7, xytext=(4, 3),
                  textcoords="offset points")
  axis.set(xlabel="wall time per run (s)", ylabel="final test accuracy (%)",
           title=f"{study.name}: accuracy against compute (mean +- std over seeds)")
  figure.tight_layout()
  atomic_save_figure(os.path.join(out, "accuracy_vs_time.png"), figure, dpi=120)
  plt.close(figure)

  figure, axis = plt.subplots(figsize=(8, 5))
  colors = plt.get_cmap("tab20")
  for index, arm in enumerate(study.arms):
    curves = [[h["val_accuracy"] for h in runs[arm, s]["summary"]["history"]]
              for s in study.seeds if (arm, s) in runs]
    if not curves:
      continue
    mean = 100 * np.mean(np.array(curves), axis=0)
    # Dark tab20 shades for the first ten arms, then the light ones: neighbours differ.
    shade = (2 * index) % 20 + (index // 10) % 2
    axis.plot(np.arange(1, len(mean) + 1), mean, color=colors(shade), label=arm,
              linewidth=2.2 if arm == study.baseline else 1.2)
  axis.set(xlabel="epoch", ylabel="validation accuracy (%)",
           title=f"{study.name}: validation accuracy, mean over seeds")
  axis.legend(fontsize=7, ncol=2)
  figure.tight_layout()
  atomic_save_figure(os.path.join(out, "val_curves.png"), figure, dpi=120)
  plt.close(figure)


# ---------------------------------------------------------------- writing


def _csv(path: str, rows: list[dict]) -> None:
  frame = pd.DataFrame(rows)
  atomic_write(path, lambda f: frame.to_csv(f, index=False), "w")


def _setting_lines(study: spec.Study, rows: list, declared: list, commits: list, command: str,
                   missing: list) -> list[str]:
  """summary.md's head: the pre-registration, the command, code version, config and arms."""
  lines = [f"# Study: {study.name}", ""] + declared
  if study.description:
    lines += [study.description.strip(), ""]
  lines += [f"Command: `{command}`", "",
            f"Code version of the runs: `{', '.join(commits)}`. Base config "
            f"`{os.path.relpath(study.config.partition(':')[0])}`, "
            f"seeds {', '.join(map(str, study.seeds))}; {len(study.arms)} arms, "
            f"{len(rows)} runs. Common overrides: `{json.dumps(study.common, sort_keys=True)}`.",
            "", "Arms (overrides on top of the common ones):", ""]
  lines += [f"- `{arm}`: `{json.dumps(o, sort_keys=True)}`" for arm, o in study.arms.items()]
  reused = {}
  for row in rows:
    if row["reused_from"]:
      reused.setdefault(row["reused_from"], []).append(row["trial"])
  for source, names in sorted(reused.items()):
    lines += ["", f"Reused: {len(names)} run(s) copied from `{source}`, where another study "
              "ran them with the same resolved config (`python -m proxy_jax.study.reuse`; the "
              f"fairness checks below cover them as any run): {', '.join(names)}."]
  if missing:
    lines += ["", f"**Incomplete study**: {len(missing)} run(s) missing or failed, so the "
              f"affected arms are compared on fewer seeds: {', '.join(missing)}."]
  return lines


def _comparison_lines(study: spec.Study, rows: list, paired: dict) -> list[str]:
  """summary.md's accuracy per arm, the paired comparisons and the verdict per arm."""
  n = len(study.seeds)
  lines = ["", "## Accuracy per arm", "",
            "Final-epoch metrics (no early stopping, no best epoch, no seed dropped), mean +- "
            "sample std over seeds. Training-split accuracy: the final model on the training split "
            "in eval mode, without augmentation. Images/s: median over epochs of the training "
            "throughput.",
            ""] + arm_table(study, rows)
  lines += ["", "## Against the baseline", ""]
  for metric, label in METRICS:
    lines += paired_lines(paired[metric], label, study.baseline) + [""]
  lines += [f"With {n} seeds the exact sign test cannot go below p = "
            f"{stats.smallest_sign_p(n):.3g} (before Holm), and Holm multiplies the smallest "
            f"p-value by {len(study.arms) - 1}: only differences several times the "
            "seed-to-seed spread can reach significance. A difference that is not significant "
            "is not shown to be zero; read the intervals.", "",
            "Every seed is scored on the same test images, so these intervals and tests "
            "measure seed-to-seed variation on that one test set: they are conditional on it, "
            "and say nothing about how the test set itself was sampled.", "",
            "## Verdict per arm", "",
            f"Final test accuracy against `{study.baseline}`, decided by the Holm-corrected "
            "paired t-test at 0.05 (the intervals beside it are unadjusted, so one may "
            "exclude 0 while Holm still does not reject):", ""]
  lines += [f"- **{r['arm']}**: {r['verdict']}." for r in paired["test_accuracy"]]
  return lines


def write_report(study: spec.Study, out: str, *, runs: dict, missing: list, checks: list,
                 failures: list, explanation_rows: list, panels: list, explain_seconds: float,
                 command: str, started: float) -> str:
  """Writes every file of the report; returns summary.md's text.

  `started` is when the report phase began (its time, less `explain_seconds`, is the report's
  share of the overhead).
  """
  os.makedirs(out, exist_ok=True)
  rows = run_rows(study, runs)
  paired = paired_tables(study, rows)
  plot_all(study, runs, rows, paired, out)
  if panels:
    from proxy_jax import faithfulness  # pylint: disable=g-import-not-at-top
    faithfulness.write_figure(panels, os.path.join(out, "cams.png"), study.explain["cam"])
  cost = overhead(rows, explain_seconds, time.time() - started - explain_seconds)
  commits = sorted({r["commit"] for r in rows})
  declared, preregistered = preregistration.report_section(study, rows, spec.results_dir())
  lines = _setting_lines(study, rows, declared, commits, command, missing)
  lines += _comparison_lines(study, rows, paired)
  steps = manipulation.per_step(study, runs)
  manipulation.plot(study, steps, out)
  lines += manipulation.lines(steps)
  lines += ["", "## Every seed", "", "Final test accuracy (%) of every run:", ""]
  lines += seed_lines(study, rows)
  lines += ["", "## Explanation quality", ""] + explanation_lines(study, explanation_rows)
  lines += ["", "## Fairness checks", ""] + fairness_lines(checks, failures)
  lines += ["", "## Study overhead", ""] + overhead_lines(cost)
  lines += ["", "Plots: `paired_differences.png`, `accuracy_vs_time.png` (the equal-compute "
            "view), `val_curves.png`" + (", `manipulation.png`" if steps else "")
            + (", `cams.png`" if panels else "") + ". Tables: "
            "`runs.csv`, `paired.csv`" + (", `explanations.csv`" if explanation_rows else "")
            + "; all numbers: `study.json`."]
  text = "\n".join(lines) + "\n"
  _csv(os.path.join(out, "runs.csv"), rows)
  _csv(os.path.join(out, "paired.csv"),
       [{"metric": m, **{k: v for k, v in r.items() if k not in ("seeds", "diffs")},
         "diffs": " ".join(f"{d:+.6f}" for d in r["diffs"])}
        for m, compared in paired.items() for r in compared])
  if explanation_rows:
    _csv(os.path.join(out, "explanations.csv"), explanation_rows)
  atomic_write_text(os.path.join(out, "study.json"), json.dumps(
      {"study": study.name, "command": command, "commits": commits, "seeds": list(study.seeds),
       "arms": study.arms, "common": study.common, "baseline": study.baseline,
       "missing": missing, "runs": rows, "paired": paired, "explanations": explanation_rows,
       "fairness": checks, "fairness_failures": failures, "overhead": cost,
       "preregistration": preregistered, "manipulation": manipulation.record(steps)},
      indent=1, sort_keys=True, default=str))
  atomic_write_text(os.path.join(out, "summary.md"), text)
  return text

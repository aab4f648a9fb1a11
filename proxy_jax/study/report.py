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

from proxy_jax import faithfulness
from proxy_jax.run import records
from proxy_jax.core.io_utils import atomic_write, atomic_write_text
from proxy_jax.study import declaration_report, manipulation, plots, report_sections, spec, stats

METRICS = (("test_accuracy", "test accuracy"), ("val_accuracy", "validation accuracy"))


def run_rows(study: spec.Study, runs: dict) -> list[dict]:
  rows = []
  for seed in study.seeds:
    for arm in study.arms:
      if (arm, seed) not in runs:
        continue
      run = runs[arm, seed]
      summary = run["summary"]
      test = summary.get("test") or {}
      rates = [
        h["images_per_second"] for h in summary["history"] if h.get("images_per_second") is not None
      ]
      steps = summary.get("proxy_steps") or []
      rows.append(
        {
          "arm": arm,
          "seed": seed,
          "trial": run["name"],
          "val_accuracy": summary["final"]["val_accuracy"],
          # The final model on the un-augmented training split (runs from before it: nan).
          "train_split_accuracy": (summary.get("train_split") or {}).get("accuracy", float("nan")),
          "test_accuracy": test.get("accuracy", float("nan")),
          "test_loss": test.get("loss", float("nan")),
          "epochs": summary.get("num_epochs"),
          "wall_time_s": summary.get("wall_time_s", float("nan")),
          "process_seconds": run["process_seconds"],
          "attempts": run["attempts"],
          # The median skips the first epoch's compilation without dropping anything.
          "images_per_s": float(np.median(rates)) if rates else float("nan"),
          "proxy_steps": len(steps),
          "proxy_seconds": sum(s.get("seconds", 0.0) for s in steps),
          "init_checksum": summary.get("init_checksum"),
          "commit": run["commit"],
          "reused_from": run.get("reused_from", ""),
          "compute": records.compute_label(summary.get("compute")),
          **manipulation.run_columns(summary),
        }
      )
  return rows


def arm_table(study: spec.Study, rows: list[dict]) -> list[str]:
  lines = [
    "| arm | runs | test accuracy (%) | validation accuracy (%) | training-split "
    "accuracy (%) | wall time per run (s) | train images/s |",
    "|---|---|---|---|---|---|---|",
  ]
  for arm in study.arms:
    mine = [r for r in rows if r["arm"] == arm]
    lines.append(
      f"| {arm} | {len(mine)} | {report_sections.mean_std([100 * r['test_accuracy'] for r in mine])} | "
      f"{report_sections.mean_std([100 * r['val_accuracy'] for r in mine])} | "
      f"{report_sections.mean_std([100 * r['train_split_accuracy'] for r in mine])} | "
      f"{report_sections.mean_std([r['wall_time_s'] for r in mine])} | "
      f"{report_sections.mean_std([r['images_per_s'] for r in mine])} |"
    )
  return lines


def seed_lines(study: spec.Study, rows: list[dict]) -> list[str]:
  """Every seed's final test accuracy per arm (%), the numbers every figure above comes from."""
  values = {(r["arm"], r["seed"]): r["test_accuracy"] for r in rows}
  lines = ["| seed | " + " | ".join(study.arms) + " |", "|---|" + "---|" * len(study.arms)]
  for seed in study.seeds:
    cells = [
      f"{100 * values[arm, seed]:.1f}" if (arm, seed) in values else "missing" for arm in study.arms
    ]
    lines.append(f"| {seed} | " + " | ".join(cells) + " |")
  return lines


def paired_tables(study: spec.Study, rows: list[dict]) -> dict:
  """metric -> compare_arms rows, with the verdict sentence added."""
  result = {}
  for metric, _ in METRICS:
    values = {(r["arm"], r["seed"]): r[metric] for r in rows if not math.isnan(r[metric])}
    compared = stats.compare_arms(values, study.baseline, list(study.arms), list(study.seeds))
    for row in compared:
      row["verdict"] = stats.verdict(row)
    result[metric] = compared
  return result


def _fmt_p(p: float) -> str:
  return "-" if math.isnan(p) else f"{p:.3g}"


def paired_lines(compared: list[dict], label: str, baseline: str) -> list[str]:
  lines = [
    f"Paired by seed ({label}, arm - {baseline}, percentage points; Holm across "
    f"{len(compared)} compared arm(s); the 95% CI is unadjusted; a t-test p marked * "
    "comes from the exact sign-flip test, as every seed gave the same difference):",
    "",
    "| arm | n | mean diff | 95% CI | t-test p | Holm t p | sign p | Holm sign p | wins/losses |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in compared:
    lines.append(
      f"| {r['arm']} | {r['n']} | {100 * r['mean']:+.2f} | "
      f"{report_sections.fmt_interval(r['ci_low'], r['ci_high'])} | {_fmt_p(r['t_p'])}"
      f"{'*' if r.get('p_method') == 'sign-flip' else ''} | "
      f"{_fmt_p(r['holm_t_p'])} | {_fmt_p(r['sign_p'])} | "
      f"{_fmt_p(r['holm_sign_p'])} | {r['wins']}/{r['losses']} |"
    )
  return lines


# ---------------------------------------------------------------- plots


# ---------------------------------------------------------------- writing


def _csv(path: str, rows: list[dict]) -> None:
  frame = pd.DataFrame(rows)
  atomic_write(path, lambda f: frame.to_csv(f, index=False), "w")


def _setting_lines(
  study: spec.Study, rows: list, declared: list, commits: list, command: str, missing: list
) -> list[str]:
  """summary.md's head: the pre-registration, the command, code version, config and arms."""
  lines = [f"# Study: {study.name}", ""] + declared
  if study.description:
    lines += [study.description.strip(), ""]
  lines += [
    f"Command: `{command}`",
    "",
    f"Code version of the runs: `{', '.join(commits)}`. Base config "
    f"`{os.path.relpath(study.config.partition(':')[0])}`, "
    f"seeds {', '.join(map(str, study.seeds))}; {len(study.arms)} arms, "
    f"{len(rows)} runs. Common overrides: `{json.dumps(study.common, sort_keys=True)}`.",
    "",
    "Arms (overrides on top of the common ones):",
    "",
  ]
  lines += [f"- `{arm}`: `{json.dumps(o, sort_keys=True)}`" for arm, o in study.arms.items()]
  reused = {}
  for row in rows:
    if row["reused_from"]:
      reused.setdefault(row["reused_from"], []).append(row["trial"])
  for source, names in sorted(reused.items()):
    lines += [
      "",
      f"Reused: {len(names)} run(s) copied from `{source}`, where another study "
      "ran them with the same resolved config (`python -m proxy_jax.study.reuse`; the "
      f"fairness checks below cover them as any run): {', '.join(names)}.",
    ]
  if missing:
    lines += [
      "",
      f"**Incomplete study**: {len(missing)} run(s) missing or failed, so the "
      f"affected arms are compared on fewer seeds: {', '.join(missing)}.",
    ]
  return lines


def _comparison_lines(study: spec.Study, rows: list, paired: dict) -> list[str]:
  """summary.md's accuracy per arm, the paired comparisons and the verdict per arm."""
  n = len(study.seeds)
  lines = [
    "",
    "## Accuracy per arm",
    "",
    "Final-epoch metrics (no early stopping, no best epoch, no seed dropped), mean +- "
    "sample std over seeds. Training-split accuracy: the final model on the training split "
    "in eval mode, without augmentation. Images/s: median over epochs of the training "
    "throughput.",
    "",
  ] + arm_table(study, rows)
  lines += ["", "## Against the baseline", ""]
  for metric, label in METRICS:
    lines += paired_lines(paired[metric], label, study.baseline) + [""]
  lines += [
    f"With {n} seeds the exact sign test cannot go below p = "
    f"{stats.smallest_sign_p(n):.3g} (before Holm), and Holm multiplies the smallest "
    f"p-value by {len(study.arms) - 1}: only differences several times the "
    "seed-to-seed spread can reach significance. A difference that is not significant "
    "is not shown to be zero; read the intervals.",
    "",
    "Every seed is scored on the same test images, so these intervals and tests "
    "measure seed-to-seed variation on that one test set: they are conditional on it, "
    "and say nothing about how the test set itself was sampled.",
    "",
    "## Verdict per arm",
    "",
    f"Final test accuracy against `{study.baseline}`, decided by the Holm-corrected "
    "paired t-test at 0.05 (the intervals beside it are unadjusted, so one may "
    "exclude 0 while Holm still does not reject):",
    "",
  ]
  lines += [f"- **{r['arm']}**: {r['verdict']}." for r in paired["test_accuracy"]]
  return lines


def _files_line(manipulated: bool, cams: bool, explained: bool) -> str:
  plots = (
    [
      "`paired_differences.png`",
      "`accuracy_vs_time.png` (the equal-compute view)",
      "`val_curves.png`",
    ]
    + ["`manipulation.png`"] * manipulated
    + ["`cams.png`"] * cams
  )
  tables = ["`runs.csv`", "`paired.csv`"] + ["`explanations.csv`"] * explained
  return f"Plots: {', '.join(plots)}. Tables: {', '.join(tables)}; all numbers: `study.json`."


def _write_tables(out: str, rows: list, paired: dict, explanation_rows: list) -> None:
  _csv(os.path.join(out, "runs.csv"), rows)
  flat = [
    {
      "metric": metric,
      **{k: v for k, v in r.items() if k not in ("seeds", "diffs")},
      "diffs": " ".join(f"{d:+.6f}" for d in r["diffs"]),
    }
    for metric, compared in paired.items()
    for r in compared
  ]
  _csv(os.path.join(out, "paired.csv"), flat)
  if explanation_rows:
    _csv(os.path.join(out, "explanations.csv"), explanation_rows)


def _record(
  study,
  command,
  commits,
  missing,
  rows,
  paired,
  explanation_rows,
  checks,
  failures,
  cost,
  preregistered,
  steps,
) -> dict:
  """study.json: the report's numbers for programs."""
  return {
    "study": study.name,
    "command": command,
    "commits": commits,
    "seeds": list(study.seeds),
    "arms": study.arms,
    "common": study.common,
    "baseline": study.baseline,
    "missing": missing,
    "runs": rows,
    "paired": paired,
    "explanations": explanation_rows,
    "fairness": checks,
    "fairness_failures": failures,
    "overhead": cost,
    "preregistration": preregistered,
    "manipulation": manipulation.record(steps),
  }


def write_report(
  study: spec.Study,
  out: str,
  *,
  runs: dict,
  missing: list,
  checks: list,
  failures: list,
  explanation_rows: list,
  panels: list,
  explain_seconds: float,
  command: str,
  started: float,
) -> str:
  """Writes every file of the report; returns summary.md's text. `started`: when the report
  phase began (its time, less `explain_seconds`, is the report's share of the overhead)."""
  os.makedirs(out, exist_ok=True)
  rows = run_rows(study, runs)
  paired = paired_tables(study, rows)
  plots.plot_all(study, runs, rows, paired, out)
  if panels:
    faithfulness.write_figure(panels, os.path.join(out, "cams.png"), study.explain["cam"])
  cost = report_sections.overhead(rows, explain_seconds, time.time() - started - explain_seconds)
  commits = sorted({r["commit"] for r in rows})
  declared, preregistered = declaration_report.report_section(study, rows, spec.results_dir())
  lines = _setting_lines(study, rows, declared, commits, command, missing)
  lines += _comparison_lines(study, rows, paired)
  steps = manipulation.per_step(study, runs)
  manipulation.plot(study, steps, out)
  lines += manipulation.lines(steps)
  lines += ["", "## Every seed", "", "Final test accuracy (%) of every run:", ""]
  lines += seed_lines(study, rows)
  lines += ["", "## Explanation quality", ""] + report_sections.explanation_lines(
    study, explanation_rows
  )
  lines += ["", "## Fairness checks", ""] + report_sections.fairness_lines(checks, failures)
  lines += ["", "## Study overhead", ""] + report_sections.overhead_lines(cost)
  lines += ["", _files_line(bool(steps), bool(panels), bool(explanation_rows))]
  text = "\n".join(lines) + "\n"
  _write_tables(out, rows, paired, explanation_rows)
  record = _record(
    study,
    command,
    commits,
    missing,
    rows,
    paired,
    explanation_rows,
    checks,
    failures,
    cost,
    preregistered,
    steps,
  )
  atomic_write_text(
    os.path.join(out, "study.json"), json.dumps(record, indent=1, sort_keys=True, default=str)
  )
  atomic_write_text(os.path.join(out, "summary.md"), text)
  return text

"""Sections of a study's report that stand apart from its comparisons: explanation quality,
the fairness checks, and the study's own overhead beyond training."""

import math

import numpy as np

from proxy_jax.study import explanations, spec, stats


def mean_std(values, digits: int = 2) -> str:
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]  # Not recorded (an older run): left out, not averaged.
  if len(values) < 2:
    return f"{values.mean():.{digits}f}" if len(values) else "-"
  return f"{values.mean():.{digits}f} +- {values.std(ddof=1):.{digits}f}"


def fmt_interval(low: float, high: float, scale: float = 100.0, digits: int = 2) -> str:
  """An interval, or why there is none (zero spread leaves the t interval undefined)."""
  if math.isnan(low):
    return "undefined (no spread)"
  return f"{scale * low:+.{digits}f} to {scale * high:+.{digits}f}"


# Explanation scores: the direction that is better, for the table header.


# Explanation scores: the direction that is better, for the table header.
BETTER = {
  "deletion_auc": "lower",
  "insertion_auc": "higher",
  "average_drop_pct": "lower",
  "increase_in_confidence_pct": "higher",
}


def explanation_lines(study: spec.Study, rows: list[dict]) -> list[str]:
  if not rows:
    return ["Not computed (--explain=false)."]
  first = rows[0]
  cached = sum(bool(r.get("from_cache")) for r in rows)
  scored_at = sorted({str(r.get("scored_at", "unrecorded")) for r in rows})
  lines = [
    f"{first['cam_method']} maps of each run's final model for its predicted class, on "
    f"the same {first['images']} {study.explain['split']} images, mean +- std over "
    "seeds; in brackets the paired difference against the baseline with its 95% t "
    "interval (no multiple-testing correction: descriptive). Scored by code version "
    f"{', '.join(scored_at)}; {cached} of {len(rows)} run(s) read back from their "
    "`explanations.json` (scored before for the same settings, images and run).",
    "",
    "| arm | "
    + " | ".join(f"{k} ({BETTER[k]} is better)" for k in explanations.SCORES)
    + " | accuracy on these images (%) |",
    "|---|" + "---|" * (len(BETTER) + 1),
  ]
  for arm in study.arms:
    mine = {r["seed"]: r for r in rows if r["arm"] == arm}
    base = {r["seed"]: r for r in rows if r["arm"] == study.baseline}
    cells = []
    for key in explanations.SCORES:
      digits = 3 if key.endswith("auc") else 1
      cell = mean_std([r[key] for r in mine.values()], digits)
      shared = [s for s in mine if s in base]
      if arm != study.baseline and len(shared) >= 2:
        t = stats.paired_t([mine[s][key] - base[s][key] for s in shared])
        cell += (
          f" [{t['mean']:+.{digits}f}, {fmt_interval(t['ci_low'], t['ci_high'], 1.0, digits)}]"
        )
      cells.append(cell)
    lines.append(
      f"| {arm} | "
      + " | ".join(cells)
      + " | "
      + mean_std([100 * r["accuracy"] for r in mine.values()])
      + " |"
    )
  return lines


def fairness_lines(checks: list[dict], failures: list[str]) -> list[str]:
  lines = [
    "Each arm against the baseline arm of the same seed (see proxy_jax/study/runs.py):",
    "",
    "| seed | arm | same split | same epochs | seed | same init weights | same data "
    "order | config differs only in the arms' fields | val history before the first "
    "proxy step | compute slice |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  yes = lambda ok: "yes" if ok else "**NO**"
  for c in checks:
    # Rows of study.json files from before the compute slice was recorded lack it.
    lines.append(
      f"| {c['seed']} | {c['arm']} | {yes(c['split'])} | {yes(c['epochs'])} | "
      f"{yes(c['seed_ok'])} | {yes(c['init'])} | {yes(c['data_order'])} | "
      f"{yes(c['config'])} | {c['history']} | {c.get('compute', 'unrecorded')} |"
    )
  lines += [
    "",
    "All checks passed."
    if not failures
    else "FAILED checks:\n" + "\n".join(f"- {f}" for f in failures),
  ]
  return lines


def overhead(rows: list[dict], explain_seconds: float, report_seconds: float) -> dict:
  """The study's time beyond its training runs, from the journal and the runs' own clocks."""
  process = sum(r["process_seconds"] for r in rows)
  training = sum(r["wall_time_s"] for r in rows)
  launching = max(0.0, process - training)
  total = process + explain_seconds + report_seconds
  extra = launching + explain_seconds + report_seconds
  return {
    "trial_process_s": process,
    "training_s": training,
    "launching_s": launching,
    "explanations_s": explain_seconds,
    "report_s": report_seconds,
    "total_s": total,
    "overhead_s": extra,
    "overhead_fraction": extra / total if total else float("nan"),
  }


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
    f"({'within' if share < 10 else 'ABOVE'} the 10% target)",
  ]

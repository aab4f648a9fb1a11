"""The manipulation checks of a study's proxy arms: how much Proxy Attention actually did.

A null result means something only if the method acted. Every proxy step records in its run's
summary.json how many training images were judged wrong, how many were chosen, the bank's size
after the step, and how much the transform changed the chosen images (the share of their pixels,
and the mean absolute change in 0-255 levels of the changed ones and of all;
`proxy.change_figures`). This module turns those records into the runs table's columns, a table
per arm and step (mean +- std over seeds), a plot and study.json's record. Runs from before the
change figures were recorded show them as missing, never as 0.
"""

import math
import os

import numpy as np

from proxy_jax.core.io_utils import atomic_save_figure

STEP_FIELDS = (
  ("wrong", "judged wrong"),
  ("chosen", "chosen"),
  ("bank_share", "bank (% of train)"),
  ("changed_pixel_share", "pixels changed (%)"),
  ("changed_mean_abs", "change of those (levels)"),
)
PERCENT = {"bank_share", "changed_pixel_share"}


def _steps(summary: dict) -> list[dict]:
  """The run's proxy steps with the bank's share of the training split added."""
  train = (summary.get("num_examples") or {}).get("train") or math.nan
  return [
    {**step, "bank_share": step.get("bank_size", 0) / train}
    for step in summary.get("proxy_steps") or []
  ]


def _value(step: dict, field: str) -> float:
  value = step.get(field)
  return math.nan if value is None else float(value)


def run_columns(summary: dict) -> dict:
  """The runs table's manipulation columns of one run (NaN where a run has no proxy step)."""
  steps = _steps(summary)
  chosen = np.array([s.get("chosen", 0) for s in steps], np.float64)
  share = np.array([_value(s, "changed_pixel_share") for s in steps])
  change = np.array([_value(s, "changed_mean_abs") for s in steps])
  # Means over the chosen images of all steps (a step's figures weigh by its chosen images;
  # a step's change of changed pixels weighs by its changed pixels).
  weights, changed = chosen, chosen * np.nan_to_num(share)
  known = ~np.isnan(share)
  return {
    "proxy_wrong_first": steps[0]["wrong"] if steps else math.nan,
    "proxy_wrong_last": steps[-1]["wrong"] if steps else math.nan,
    "proxy_chosen_total": float(chosen.sum()) if steps else math.nan,
    "proxy_bank_final_share": steps[-1]["bank_share"] if steps else math.nan,
    "proxy_changed_pixel_share": (
      float(np.average(share[known], weights=weights[known]))
      if known.any() and weights[known].sum()
      else math.nan
    ),
    "proxy_changed_mean_abs": (
      float(np.average(change[known & (changed > 0)], weights=changed[known & (changed > 0)]))
      if (known & (changed > 0)).any()
      else math.nan
    ),
  }


def per_step(study, runs: dict) -> dict:
  """arm -> list over step index of {field: (mean, std, n)} over the seeds' runs."""
  table = {}
  for arm in study.arms:
    seeds = [_steps(runs[arm, s]["summary"]) for s in study.seeds if (arm, s) in runs]
    count = max((len(steps) for steps in seeds), default=0)
    if not count:
      continue
    rows = []
    for index in range(count):
      row = {"epoch": next(st[index]["epoch"] for st in seeds if len(st) > index)}
      for field, _ in STEP_FIELDS:
        values = np.array([_value(st[index], field) for st in seeds if len(st) > index])
        values = values[~np.isnan(values)]
        row[field] = (
          float(values.mean()) if len(values) else math.nan,
          float(values.std(ddof=1)) if len(values) > 1 else math.nan,
          len(values),
        )
      rows.append(row)
    table[arm] = rows
  return table


def _cell(figure: tuple, field: str) -> str:
  mean, std, n = figure
  if not n:
    return "not recorded"
  scale = 100.0 if field in PERCENT else 1.0
  digits = 1 if field in PERCENT or field == "changed_mean_abs" else 0
  text = f"{scale * mean:.{digits}f}"
  return text if math.isnan(std) else f"{text} +- {scale * std:.{digits}f}"


def lines(table: dict) -> list[str]:
  if not table:
    return []
  out = [
    "",
    "## Manipulation checks",
    "",
    "What each proxy step did, mean +- std over seeds: training images judged wrong, "
    "chosen for proxies, the bank's size after the step (share of the training split), "
    "the share of the chosen images' pixels the transform changed and their mean "
    "absolute change (0-255 levels). Plot: `manipulation.png`.",
    "",
    "| arm | step (after epoch) | " + " | ".join(label for _, label in STEP_FIELDS) + " |",
    "|---|---|" + "---|" * len(STEP_FIELDS),
  ]
  for arm, rows in table.items():
    for index, row in enumerate(rows):
      out.append(
        f"| {arm if index == 0 else ''} | {index} ({row['epoch']}) | "
        + " | ".join(_cell(row[field], field) for field, _ in STEP_FIELDS)
        + " |"
      )
  return out


def plot(study, table: dict, out: str) -> None:
  """manipulation.png: one panel per figure, one line per proxy arm over its steps."""
  if not table:
    return
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axes = plt.subplots(1, len(STEP_FIELDS), figsize=(4 * len(STEP_FIELDS), 3.6))
  for axis, (field, label) in zip(axes, STEP_FIELDS):
    scale = 100.0 if field in PERCENT else 1.0
    for arm, rows in table.items():
      epochs = [r["epoch"] for r in rows]
      means = np.array([r[field][0] for r in rows]) * scale
      stds = np.nan_to_num(np.array([r[field][1] for r in rows])) * scale
      axis.errorbar(epochs, means, yerr=stds, marker="o", capsize=3, label=arm)
    if not any(r[field][2] for rows in table.values() for r in rows):
      axis.text(0.5, 0.5, "not recorded by these runs", ha="center", transform=axis.transAxes)
    axis.set(xlabel="proxy step after epoch", title=label)
    if field in ("wrong", "chosen"):
      axis.set_yscale("log")
  axes[0].legend(fontsize=8)
  figure.suptitle(f"{study.name}: what the proxy steps did (mean +- std over seeds)")
  figure.tight_layout()
  atomic_save_figure(os.path.join(out, "manipulation.png"), figure, dpi=110)
  plt.close(figure)


def record(table: dict) -> dict:
  """study.json's manipulation checks: arm -> steps -> field -> {mean, std, n}."""
  return {
    arm: [
      {"epoch": r["epoch"], **{f: dict(zip(("mean", "std", "n"), r[f])) for f, _ in STEP_FIELDS}}
      for r in rows
    ]
    for arm, rows in table.items()
  }

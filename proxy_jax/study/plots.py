"""The plots of a study's report: the paired differences, accuracy against wall time (the
equal-compute view) and the validation curves, each a PNG in the report's folder."""

import math
import os

import numpy as np

from proxy_jax.core.io_utils import atomic_save_figure


def plot_all(study, runs: dict, rows: list[dict], paired: dict, out: str) -> None:
  """paired_differences.png, accuracy_vs_time.png and val_curves.png in `out`."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  for name, draw, size in (
    ("paired_differences.png", _paired_differences, None),
    ("accuracy_vs_time.png", _accuracy_vs_time, (7, 5)),
    ("val_curves.png", _val_curves, (8, 5)),
  ):
    compared = [r for r in paired["test_accuracy"] if not math.isnan(r["t_p"])]
    figure, axis = plt.subplots(figsize=size or (7, 0.45 * len(compared) + 1.6))
    draw(axis, study, runs, rows, compared, plt)
    figure.tight_layout()
    atomic_save_figure(os.path.join(out, name), figure, dpi=120)
    plt.close(figure)


def _paired_differences(axis, study, runs, rows, compared, plt) -> None:
  del runs, rows, plt
  positions = np.arange(len(compared))[::-1]
  means = np.array([100 * r["mean"] for r in compared])
  errors = np.array(
    [
      [100 * (r["mean"] - r["ci_low"]) for r in compared],
      [100 * (r["ci_high"] - r["mean"]) for r in compared],
    ]
  )
  held = lambda r: r["holm_t_p"] < 0.05
  colors = [
    "tab:green" if held(r) and r["mean"] > 0 else "tab:red" if held(r) else "tab:gray"
    for r in compared
  ]
  axis.barh(positions, means, xerr=errors, color=colors, capsize=3)
  axis.axvline(0, color="black", linewidth=0.8)
  axis.set_yticks(positions, [r["arm"] for r in compared])
  axis.set(
    xlabel=f"test accuracy - {study.baseline} (points), mean and 95% t interval",
    title=f"{study.name}: paired differences over seeds\n(coloured where Holm p < 0.05)",
  )


def _accuracy_vs_time(axis, study, runs, rows, compared, plt) -> None:
  del runs, compared, plt
  spread = lambda v: v.std(ddof=1) if len(v) > 1 else 0.0
  for arm in study.arms:
    mine = [r for r in rows if r["arm"] == arm]
    if not mine:
      continue
    times = np.array([r["wall_time_s"] for r in mine])
    accuracy = 100 * np.array([r["test_accuracy"] for r in mine])
    axis.errorbar(
      times.mean(),
      accuracy.mean(),
      xerr=spread(times),
      yerr=spread(accuracy),
      fmt="o",
      capsize=3,
      label=arm,
    )
    axis.annotate(
      arm, (times.mean(), accuracy.mean()), fontsize=7, xytext=(4, 3), textcoords="offset points"
    )
  axis.set(
    xlabel="wall time per run (s)",
    ylabel="final test accuracy (%)",
    title=f"{study.name}: accuracy against compute (mean +- std over seeds)",
  )


def _val_curves(axis, study, runs, rows, compared, plt) -> None:
  del rows, compared
  colors = plt.get_cmap("tab20")
  for index, arm in enumerate(study.arms):
    curves = [
      [h["val_accuracy"] for h in runs[arm, s]["summary"]["history"]]
      for s in study.seeds
      if (arm, s) in runs
    ]
    if not curves:
      continue
    mean = 100 * np.mean(np.array(curves), axis=0)
    # Dark tab20 shades for the first ten arms, then the light ones: neighbours differ.
    shade = (2 * index) % 20 + (index // 10) % 2
    axis.plot(
      np.arange(1, len(mean) + 1),
      mean,
      color=colors(shade),
      label=arm,
      linewidth=2.2 if arm == study.baseline else 1.2,
    )
  axis.set(
    xlabel="epoch",
    ylabel="validation accuracy (%)",
    title=f"{study.name}: validation accuracy, mean over seeds",
  )
  axis.legend(fontsize=7, ncol=2)

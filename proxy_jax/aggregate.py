"""One table of a sweep (or of any directory of runs): one row per trial, and its curves.

  python -m proxy_jax.aggregate runs/grid [--query "model == 'resnet18'"] \
      [--group-by threshold,weight] [--best val_accuracy] [--plot]

Each row holds the trial's swept fields (read back from its resolved config, so an arm that left a
field at its default still has it), its final and best validation metrics, test metrics, epochs,
wall time and proxy statistics, all from `summary.json`. Final and best are separate columns and
never averaged across rounds (the thesis's "accuracy" mixed intermediate rounds). Curves come from
the TensorBoard event files through tensorboard's own reader. Writes results.csv (and .parquet when
a Parquet engine is installed), curves.csv and, with --group-by, grouped.csv.
"""

import os

from absl import app
from absl import flags
import numpy as np
import pandas as pd

from proxy_jax import cli
from proxy_jax.config import fields as config_fields
from proxy_jax.core import errors
from proxy_jax.core import io_utils
from proxy_jax.run import records
from proxy_jax import sweep as sweep_lib
from proxy_jax.core.io_utils import atomic_save_figure, atomic_write

# Config fields that always get a column (so a query on them works even when not swept).
IDENTITY_FIELDS = ("model.name", "data.name", "seed")
COLUMN_ALIASES = {"model.name": "model", "data.name": "dataset", "data.source": "data_source"}
DEFAULT_METRICS = ("final_val_accuracy", "best_val_accuracy", "test_accuracy", "final_val_loss")
CURVE_PLOT_TAGS = ("val/accuracy", "train/loss")


def column_name(key: str, all_keys) -> str:
  """ "proxy.threshold" -> "threshold"; the full key (dots as _) when the short one is ambiguous."""
  if key in COLUMN_ALIASES:
    return COLUMN_ALIASES[key]
  short = key.rsplit(".", 1)[-1]
  clashes = {k for k in all_keys if k.rsplit(".", 1)[-1] == short and k not in COLUMN_ALIASES}
  return short if len(clashes) <= 1 else key.replace(".", "_")


TRIAL_FILE_FIX = (
  "restore it from a backup, or copy the trial's entry of the sweep's "
  f"{sweep_lib.SWEEP_FILE} into it"
)


def _read_json(path: str, fix: str):
  """A run's JSON object, None if the file is absent; a damaged one is a DamagedFileError."""
  if not os.path.exists(path):
    return None
  return io_utils.read_json(path, dict, fix)


# ---------------------------------------------------------------- TensorBoard curves


def read_scalars(workdir: str) -> pd.DataFrame:
  """All scalar summaries of a run as (tag, step, value, wall_time), one row per (tag, step).

  clu/TF2 writers store scalars as tensor summaries of the "scalars" plugin, older writers as
  simple values; both are read. A resumed run re-logs steps after its checkpoint in a new event
  file: the latest write of a step wins, so a curve never holds two values for one step.
  """
  # Imported here: tensorboard is heavy and only curves need it.
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  # pylint: enable=g-import-not-at-top
  columns = ["tag", "step", "value", "wall_time"]
  if not any(".tfevents." in name for name in os.listdir(workdir)):
    return pd.DataFrame(columns=columns)
  accumulator = event_accumulator.EventAccumulator(
    workdir,
    size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0},
    purge_orphaned_data=False,
  )
  accumulator.Reload()
  tags = accumulator.Tags()
  rows = [
    (tag, e.step, float(e.value), e.wall_time)
    for tag in tags[event_accumulator.SCALARS]
    for e in accumulator.Scalars(tag)
  ]
  for tag in tags[event_accumulator.TENSORS]:
    if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
      continue
    for event in accumulator.Tensors(tag):
      value = tensor_util.make_ndarray(event.tensor_proto)
      if value.size == 1:
        rows.append((tag, event.step, float(value.reshape(())), event.wall_time))
  frame = pd.DataFrame(rows, columns=columns)
  frame = frame.sort_values("wall_time", kind="stable").drop_duplicates(
    ["tag", "step"], keep="last"
  )
  return frame.sort_values(["tag", "step"]).reset_index(drop=True)


# ---------------------------------------------------------------- rows


def find_trials(root: str) -> list[str]:
  """The run directories under `root`: root itself for a single run, else its subdirectories."""

  def is_run(path):
    return any(
      os.path.exists(os.path.join(path, f))
      for f in (records.SUMMARY_FILE, records.CONFIG_FILE, sweep_lib.TRIAL_FILE)
    )

  if not os.path.isdir(root):
    raise errors.MissingPathError(f"{root!r} is not a directory")
  if is_run(root):
    return [root]
  return [
    os.path.join(root, d)
    for d in sorted(os.listdir(root))
    if os.path.isdir(os.path.join(root, d)) and is_run(os.path.join(root, d))
  ]


def summary_metrics(summary: records.Summary | None) -> dict:
  """The result columns of one run; every value None (counts 0) for a run without a summary."""
  summary = summary or records.Summary.from_json({})
  final = summary.final or records.EpochRecord()
  test, steps, sizes = summary.test or {}, summary.proxy_steps, summary.num_examples or {}
  fit = summary.train_split or {}  # The final model on the un-augmented training split.

  def total(field):
    return float(sum(getattr(step, field) or 0 for step in steps))

  return {
    "final_epoch": final.epoch if summary.final else None,
    "final_train_loss": final.train_loss,
    "final_train_accuracy": final.train_accuracy,
    "final_val_loss": final.val_loss,
    "final_val_accuracy": final.val_accuracy,
    "final_val_top5": final.val_top5,
    "train_split_loss": fit.get("loss"),
    "train_split_accuracy": fit.get("accuracy"),
    "best_val_accuracy": summary.best.val_accuracy if summary.best.epoch >= 0 else None,
    "best_epoch": summary.best.epoch if summary.best.epoch >= 0 else None,
    "test_loss": test.get("loss"),
    "test_accuracy": test.get("accuracy"),
    "test_top5": test.get("top5"),
    "num_epochs": summary.num_epochs,
    "wall_time_s": summary.wall_time_s,
    "proxy_steps": len(steps),
    "proxy_wrong": total("wrong"),
    "proxy_chosen": total("chosen"),
    "proxy_bank_size": steps[-1].bank_size if steps else 0,
    "proxy_seconds": total("seconds"),
    "num_train": sizes.get("train"),
    "num_val": sizes.get("val"),
    "num_test": sizes.get("test"),
    "skipped_files": len(summary.skipped_files or []),
  }


def load_results(root: str, with_curves: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, list]:
  """(results, curves, swept columns); results has one row per trial directory."""
  states = sweep_lib.trial_states(root)
  trials = []
  for path in find_trials(root):
    trial = _read_json(os.path.join(path, sweep_lib.TRIAL_FILE), TRIAL_FILE_FIX) or {}
    summary = records.read_summary(path)
    config = (
      (summary.config if summary else None)
      or _read_json(os.path.join(path, records.CONFIG_FILE), records.CONFIG_FIX)
      or {}
    )
    trials.append((path, trial.get("overrides", {}), summary, config))
  swept = sorted({k for _, overrides, _, _ in trials for k in overrides})
  fields = list(dict.fromkeys([*swept, *IDENTITY_FIELDS]))
  names = {key: column_name(key, fields) for key in fields}
  rows, curves = [], []
  for path, overrides, summary, config in trials:
    name = os.path.basename(os.path.normpath(path))
    state = states.get(name, {}).get("status")
    row = {
      "trial": name,
      "status": "finished" if summary else (state or "incomplete"),
      "workdir": path,
    }
    for key in fields:
      value = config_fields.get_field(config, key, None)
      row[names[key]] = overrides.get(key) if value is None else value
    row.update(summary_metrics(summary))
    if with_curves:
      scalars = read_scalars(path)
      if len(scalars):
        speed = scalars[scalars.tag == "images_per_second"].value
        row["images_per_second"] = float(speed.median()) if len(speed) else np.nan
        curves.append(scalars.assign(trial=name))
    rows.append(row)
  results = pd.DataFrame(rows)
  curve_frame = (
    pd.concat(curves, ignore_index=True)
    if curves
    else pd.DataFrame(columns=["tag", "step", "value", "wall_time", "trial"])
  )
  return results, curve_frame, [names[k] for k in swept]


# ---------------------------------------------------------------- queries


def metric_column(results: pd.DataFrame, name: str) -> str:
  """ "val_accuracy" means the final value; "best_val_accuracy" must be asked for by name."""
  for candidate in (name, f"final_{name}", f"test_{name}"):
    if candidate in results.columns:
      return candidate
  raise KeyError(f"no metric {name!r}; columns: {', '.join(results.columns)}")


def best_trials(results: pd.DataFrame, metric: str, top: int = 5) -> pd.DataFrame:
  column = metric_column(results, metric)
  lower_is_better = any(word in column for word in ("loss", "seconds", "wall_time"))
  return results.dropna(subset=[column]).sort_values(column, ascending=lower_is_better).head(top)


def group_results(results: pd.DataFrame, by: list[str], metrics=DEFAULT_METRICS) -> pd.DataFrame:
  """Mean, std and count of each metric over the trials of each group (typically the seeds)."""
  missing = [c for c in by if c not in results.columns]
  if missing:
    raise KeyError(f"cannot group by {missing}; columns: {', '.join(results.columns)}")
  metrics = [m for m in metrics if m in results.columns]
  grouped = results.groupby(by, dropna=False)[metrics].agg(["mean", "std", "count"])
  grouped.columns = [f"{metric}_{stat}" for metric, stat in grouped.columns]
  if metrics:
    grouped = grouped.sort_values(f"{metrics[0]}_mean", ascending=False)
  return grouped.reset_index()


def filter_results(results: pd.DataFrame, query: str) -> pd.DataFrame:
  try:
    return results.query(query)
  except (pd.errors.UndefinedVariableError, NameError) as error:
    raise KeyError(f"--query {query!r}: {error}; columns: {', '.join(results.columns)}") from error


# ---------------------------------------------------------------- output


def write_table(frame: pd.DataFrame, path: str) -> list[str]:
  """CSV always; Parquet next to it when pyarrow or fastparquet is installed."""
  atomic_write(path, lambda f: frame.to_csv(f, index=False), "w")
  written = [path]
  try:
    frame.to_parquet(os.path.splitext(path)[0] + ".parquet", index=False)
    written.append(os.path.splitext(path)[0] + ".parquet")
  except ImportError:
    pass
  return written


def _arm_label(row, fields):
  return ", ".join(f"{f}={row[f]}" for f in fields) or "all"


def plot_results(
  results: pd.DataFrame, curves: pd.DataFrame, swept: list[str], out_dir: str
) -> list[str]:
  """Accuracy versus each swept field (mean and std over the rest), and curves per arm."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  written = []
  metrics = [
    m
    for m in ("final_val_accuracy", "best_val_accuracy", "test_accuracy")
    if m in results.columns and results[m].notna().any()
  ]
  for field in swept:
    if field not in results.columns or not metrics:
      continue
    stats = results.groupby(results[field].astype(str))[metrics].agg(["mean", "std"])
    figure, axis = plt.subplots(figsize=(6, 4))
    positions = np.arange(len(stats))
    for offset, metric in enumerate(metrics):
      axis.errorbar(
        positions + 0.08 * (offset - 1),
        stats[(metric, "mean")],
        yerr=stats[(metric, "std")].fillna(0),
        marker="o",
        capsize=3,
        label=metric,
      )
    axis.set_xticks(positions, stats.index)
    axis.set(xlabel=field, ylabel="accuracy", title=f"accuracy vs {field} (mean ± std)")
    axis.legend()
    figure.tight_layout()
    path = os.path.join(out_dir, f"accuracy_vs_{field}.png")
    atomic_save_figure(path, figure, dpi=100)
    plt.close(figure)
    written.append(path)
  arms = [f for f in swept if f != "seed"]
  labels = {row.trial: _arm_label(row._asdict(), arms) for row in results.itertuples()}
  for tag in CURVE_PLOT_TAGS:
    tagged = curves[curves.tag == tag]
    if tagged.empty:
      continue
    tagged = tagged.assign(arm=tagged.trial.map(labels))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for arm, points in tagged.groupby("arm"):
      mean = points.groupby("step").value.mean()
      axis.plot(mean.index, mean.values, label=arm)
    axis.set(xlabel="step", ylabel=tag, title=f"{tag} per arm (mean over seeds)")
    if tagged.arm.nunique() <= 20:
      axis.legend(fontsize=7)
    figure.tight_layout()
    path = os.path.join(out_dir, f"curves_{tag.replace('/', '_')}.png")
    atomic_save_figure(path, figure, dpi=100)
    plt.close(figure)
    written.append(path)
  return written


# ---------------------------------------------------------------- CLI


def define_flags():
  flags.DEFINE_string("query", "", "pandas query on the rows, e.g. \"cam_method == 'gradcampp'\".")
  flags.DEFINE_list("group_by", [], "Columns to group by: mean, std, count over the rest (seeds).")
  flags.DEFINE_string("best", "", "Rank by this metric (val_accuracy = final value).")
  flags.DEFINE_integer("top", 5, "Rows shown by --best.")
  flags.DEFINE_bool("plot", False, "Write PNG plots under <out>/plots.")
  flags.DEFINE_string("out", "", "Output directory (default: the run directory).")
  flags.DEFINE_bool("curves", True, "Read TensorBoard event files (curves.csv, plots).")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m proxy_jax.aggregate RUN_DIR [flags]")
  f = flags.FLAGS
  root = argv[1]
  out = f.out or root
  results, curves, swept = load_results(root, with_curves=f.curves or f.plot)
  if results.empty:
    raise errors.MissingPathError(f"no runs found under {root}")
  os.makedirs(out, exist_ok=True)
  if f.query:
    results = filter_results(results, f.query)
    curves = curves[curves.trial.isin(results.trial)]
  written = write_table(results, os.path.join(out, "results.csv"))
  if len(curves):
    written += write_table(curves, os.path.join(out, "curves.csv"))
  shown = ["trial", "status", *swept] + [m for m in DEFAULT_METRICS if m in results.columns]
  with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 200):
    print(results[shown].to_string(index=False))
    if f.group_by:
      grouped = group_results(results, f.group_by)
      written += write_table(grouped, os.path.join(out, "grouped.csv"))
      print(f"\ngrouped by {', '.join(f.group_by)}:\n" + grouped.to_string(index=False))
    if f.best:
      column = metric_column(results, f.best)
      best = best_trials(results, f.best, f.top)
      print(f"\nbest by {column}:\n" + best[["trial", *swept, column]].to_string(index=False))
  if f.plot:
    written += plot_results(results, curves, swept, os.path.join(out, "plots"))
  print("\nwrote " + ", ".join(written))


if __name__ == "__main__":
  cli.run(main, define_flags)

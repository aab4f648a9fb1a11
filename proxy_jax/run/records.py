"""What a run records: the per-epoch and per-proxy-step rows, the checkpointed progress and the
summary, as dataclasses with one JSON reader and writer each.

`RunProgress` is the loop's bookkeeping saved in every checkpoint (Orbax's `meta` item);
`Summary` is `<workdir>/summary.json`, written once when a run completes. Both read older files:
missing fields take their defaults and fields this module does not know are kept (in `extra`)
and written back unchanged, so workdirs and results from earlier versions stay readable.
`read_summary` is the one parser of summary.json (aggregate, experiments and the trainer use it),
`read_recorded_config` of config.json; a damaged file is an `errors.DamagedFileError` saying what
to do.
"""

import dataclasses
import hashlib
import os

from proxy_jax.core import errors, io_utils
from proxy_jax.core.io_utils import atomic_write_json

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"  # The resolved config, written by config_lib when a run starts.
CONFIG_FIX = (
  "it records the config this workdir's run was started with: restore it from a "
  "backup of the workdir, or train in a new --workdir"
)


def _from_dict(cls, raw: dict | None):
  """`cls` from a JSON object: known fields by name, the rest kept in `extra` if `cls` has it."""
  raw = dict(raw or {})
  names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
  known = {k: raw.pop(k) for k in list(raw) if k in names}
  if "extra" in {f.name for f in dataclasses.fields(cls)}:
    known["extra"] = raw
  return cls(**known)


def _to_dict(record) -> dict:
  out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "extra"}
  out.update(getattr(record, "extra", None) or {})
  return out


class _FlatRecord:
  """A record whose fields are plain JSON values."""

  @classmethod
  def from_json(cls, raw: dict | None):
    return _from_dict(cls, raw)

  def to_json(self) -> dict:
    return _to_dict(self)


@dataclasses.dataclass
class EpochRecord(_FlatRecord):
  """One row of the history: train and validation metrics after an epoch, and its speed."""

  # Every field has a default so that rows of older or hand-made files still read.
  epoch: int = 0
  train_loss: float | None = None
  train_accuracy: float | None = None
  val_loss: float | None = None
  val_accuracy: float | None = None
  val_top5: float | None = None
  learning_rate: float | None = None
  epoch_seconds: float | None = None
  images_per_second: float | None = None
  extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ProxyStepRecord(_FlatRecord):
  """One proxy step: how many training examples were wrong, how many became proxies, and how
  much the transform changed the chosen images (the manipulation check, `proxy.change_figures`;
  None in records of runs from before it was measured, and then left out of the JSON)."""

  index: int = 0
  epoch: int = 0  # Completed epochs when it ran.
  wrong: int = 0
  chosen: int = 0
  bank_size: int = 0
  seconds: float = 0.0
  changed_pixel_share: float | None = None  # Of the chosen crops' pixels, in [0, 1].
  changed_mean_abs: float | None = None  # Mean |proxy - original| of those pixels, 0-255 levels.
  mean_abs_change: float | None = None  # The same over every pixel of the chosen crops.
  extra: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    out = _to_dict(self)
    for field in CHANGE_FIELDS:
      if out[field] is None:
        del out[field]  # A record read from an older file is written back unchanged.
    return out


CHANGE_FIELDS = ("changed_pixel_share", "changed_mean_abs", "mean_abs_change")


@dataclasses.dataclass
class Best(_FlatRecord):
  val_accuracy: float = -1.0
  epoch: int = -1


@dataclasses.dataclass
class RunProgress:
  """The loop's bookkeeping, checkpointed with the state: a resumed run continues from it."""

  epoch: int = 0  # Completed epochs.
  proxy_steps_done: int = 0
  history: list[EpochRecord] = dataclasses.field(default_factory=list)
  proxy_steps: list[ProxyStepRecord] = dataclasses.field(default_factory=list)
  best: Best = dataclasses.field(default_factory=Best)
  bank_size: int = 0
  elapsed_s: float = 0.0  # Wall time of all sessions up to this checkpoint.
  # The distinct compute slices (`parallel.compute_slice`) of the sessions that trained it, in
  # order: a run resumed on another slice is itself a mix. Checkpoints of earlier versions lack
  # it (their sessions' slices are unknown), and an empty list is not written.
  compute_slices: list = dataclasses.field(default_factory=list)
  extra: dict = dataclasses.field(default_factory=dict)

  def add_epoch(self, row: EpochRecord) -> None:
    self.history.append(row)
    self.epoch = row.epoch
    if row.val_accuracy > self.best.val_accuracy:
      self.best = Best(row.val_accuracy, row.epoch)

  def add_compute_slice(self, compute: dict) -> None:
    if compute not in self.compute_slices:
      self.compute_slices.append(compute)

  def summary_compute(self) -> dict | None:
    """Summary.compute: the one slice every session used, or {"sessions": [...]} if they
    differed (a study refuses such a run)."""
    if len(self.compute_slices) > 1:
      return {"sessions": list(self.compute_slices)}
    return self.compute_slices[0] if self.compute_slices else None

  def add_proxy_step(self, record: ProxyStepRecord) -> None:
    self.proxy_steps.append(record)
    self.proxy_steps_done = record.index + 1
    self.bank_size = record.bank_size

  @classmethod
  def from_json(cls, raw: dict) -> "RunProgress":
    progress = _from_dict(cls, raw)
    progress.history = [EpochRecord.from_json(r) for r in progress.history]
    progress.proxy_steps = [ProxyStepRecord.from_json(r) for r in progress.proxy_steps]
    progress.best = Best.from_json(progress.best if isinstance(progress.best, dict) else None)
    return progress

  def to_json(self) -> dict:
    out = _to_dict(self)
    out.update(
      history=[r.to_json() for r in self.history],
      proxy_steps=[r.to_json() for r in self.proxy_steps],
      best=self.best.to_json(),
    )
    if not self.compute_slices:  # Newer than most checkpoints: a read-back meta is unchanged.
      del out["compute_slices"]
    return out


@dataclasses.dataclass
class Summary:
  """`summary.json`: the config, final/best/test metrics, the history and the proxy steps."""

  config: dict
  final: EpochRecord | None
  best: Best
  test: dict | None  # {"loss", "accuracy", "top5"} on the test split, None without one.
  num_epochs: int | None
  wall_time_s: float | None
  history: list[EpochRecord]
  proxy_steps: list[ProxyStepRecord]
  bank_size: int = 0
  skipped_files: list = dataclasses.field(default_factory=list)
  num_examples: dict = dataclasses.field(default_factory=dict)
  # Checksum of the initial weights (tree_checksum): a study checks its arms share them.
  init_checksum: str | None = None
  # {"loss", "accuracy", "top5"} of the final model on the training split in eval mode (no
  # augmentation): how far it fits its training data. Absent from files of runs without it.
  train_split: dict | None = None
  # Where it computed (`parallel.compute_slice`: platform, device kind, devices, processes, CPU
  # threads), or {"sessions": [slice, ...]} when resumed on another: on XLA:CPU the thread count
  # changes the last bits of reductions, so a study checks its runs share one. Absent from files
  # of runs without it.
  compute: dict | None = None
  extra: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_json(cls, raw: dict) -> "Summary":
    raw = dict(raw)
    for field, default in (
      ("config", {}),
      ("final", None),
      ("best", None),
      ("test", None),
      ("num_epochs", None),
      ("wall_time_s", None),
      ("history", []),
      ("proxy_steps", []),
    ):
      raw.setdefault(field, default)
    summary = _from_dict(cls, raw)
    summary.final = EpochRecord.from_json(summary.final) if summary.final else None
    summary.best = Best.from_json(summary.best)
    summary.history = [EpochRecord.from_json(r) for r in summary.history or []]
    summary.proxy_steps = [ProxyStepRecord.from_json(r) for r in summary.proxy_steps or []]
    return summary

  def to_json(self) -> dict:
    out = _to_dict(self)
    out.update(
      final=self.final.to_json() if self.final else None,
      best=self.best.to_json(),
      history=[r.to_json() for r in self.history],
      proxy_steps=[r.to_json() for r in self.proxy_steps],
    )
    for field in ("train_split", "compute"):
      if out[field] is None:
        # Optional and newer than most files: omitted rather than written as null, so a file
        # read and written back is unchanged.
        del out[field]
    return out


def compute_label(compute: dict | None) -> str:
  """A compute slice in words, e.g. "cpu (cpu) x1, 1 process(es), 2 CPU thread(s)"."""
  if not compute:
    return "unrecorded"
  if "sessions" in compute:
    return "resumed on another slice: " + " then ".join(
      compute_label(c) for c in compute["sessions"]
    )
  label = (
    f"{compute.get('platform')} ({compute.get('device_kind')}) x{compute.get('devices')}"
    f", {compute.get('processes')} process(es)"
  )
  if compute.get("cpu_threads") is not None:
    label += f", {compute['cpu_threads']} CPU thread(s)"
  return label


def summary_path(workdir: str) -> str:
  return os.path.join(workdir, SUMMARY_FILE)


SUMMARY_FIX = (
  "run main.py again with the same config and --workdir: it rebuilds summary.json "
  "from the run's last checkpoint"
)


def read_summary(workdir_or_path: str) -> Summary | None:
  """The summary of a run directory (or of a summary.json path); None if it has none.

  A damaged file raises `errors.DamagedFileError` (a ValueError) naming it.
  """
  path = workdir_or_path
  if os.path.isdir(path):
    path = summary_path(path)
  if not os.path.exists(path):
    return None
  raw = io_utils.read_json(path, dict, SUMMARY_FIX)
  try:
    summary = Summary.from_json(raw)
    if not isinstance(summary.config, dict) or (
      summary.test is not None and not isinstance(summary.test, dict)
    ):
      raise TypeError("config or test is not a JSON object")
  except (TypeError, ValueError, AttributeError) as error:
    raise errors.DamagedFileError(path, f"not a run summary: {error}", SUMMARY_FIX) from error
  return summary


def read_recorded_config(workdir: str) -> dict:
  """The resolved config recorded in `workdir`; DamagedFileError if config.json is damaged."""
  return io_utils.read_json(os.path.join(workdir, CONFIG_FILE), dict, CONFIG_FIX)


def write_summary(workdir: str, summary: Summary) -> None:
  atomic_write_json(summary_path(workdir), summary.to_json())


def tree_checksum(tree) -> str:
  """sha256 (16 hex digits) of every leaf's path, dtype, shape and bytes: equal iff identical.

  Recorded for the initial weights in summary.json, so a study can check that its arms started
  from the same initialisation instead of assuming it.
  """
  import jax  # pylint: disable=g-import-not-at-top  (the rest of this module needs no JAX)
  import numpy as np  # pylint: disable=g-import-not-at-top

  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    array = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()[:16]

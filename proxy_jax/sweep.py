"""Resumable grid search: one fresh `main.py` subprocess per trial, a crash-safe journal.

  python -m proxy_jax.sweep --config=configs/dogs.py --sweep=configs/sweeps/proxy_grid.py \
      --workdir=runs/grid [--shard=0/4] [--dry-run] [--retry-failed]

A sweep file defines `get_sweep()` returning a list of override dicts ({"proxy.threshold": 0.85,
...}), usually built with `product`, `zip_fields` and `concat` from this module, or of named
trials `(name, overrides)` (a study's arms, see proxy_jax/study). Each trial runs as its own
process so a crash, a leak or accelerator memory held by one trial cannot reach the next, in
`<workdir>/<trial name>`, a name derived from its overrides alone (stable when the grid grows)
unless the trial is named. The journal (`journal*.jsonl`, one JSON object per line, appended with fsync) records
started / finished / failed; a torn last line from a kill is ignored. Re-running the command skips
finished trials, re-runs an interrupted one (training resumes from its checkpoint) and retries
failed ones only with --retry-failed.
"""

import ctypes
import fcntl
import hashlib
import importlib.util
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from proxy_jax import cli
from proxy_jax import config_fields
from proxy_jax import errors, io_utils, records
from proxy_jax.io_utils import atomic_write_json

STARTED, FINISHED, FAILED = "started", "finished", "failed"
TRIAL_FILE = "sweep_trial.json"  # In each trial workdir: its name and overrides.
SWEEP_FILE = "sweep.json"        # In the sweep workdir: the whole grid.
ERROR_TAIL_CHARS = 4000
MAX_NAME_CHARS = 150
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------- grid helpers (for sweep files)


def product(*grids, **fields):
  """Cartesian product: product(a=[1, 2], b=[3]) or product(list_of_dicts, other_list, c=[..])."""
  factors = [list(g) for g in grids] + [[{k: v} for v in vs] for k, vs in fields.items()]
  trials = []
  for combination in itertools.product(*factors):
    merged = {}
    for part in combination:
      merged.update(part)
    trials.append(merged)
  return trials


def zip_fields(**fields):
  """Fields varied together: zip_fields(a=[1, 2], b=[3, 4]) -> [{a:1, b:3}, {a:2, b:4}]."""
  lengths = {len(v) for v in fields.values()}
  if len(lengths) > 1:
    sizes = {k: len(v) for k, v in fields.items()}
    raise ValueError(f"zip_fields needs equal lengths, got {sizes}")
  return [dict(zip(fields, values)) for values in zip(*fields.values())]


def concat(*grids):
  return [dict(trial) for grid in grids for trial in grid]


# ---------------------------------------------------------------- trials


def format_value(value) -> str:
  """A value as ml_collections' `--config.x=` parser reads it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value)


def trial_name(overrides: dict) -> str:
  """Stable, filesystem-safe, unique name from the overrides alone (never from the grid).

  Keys are sorted; a key is shortened to its last component unless two keys of this trial share
  it (data.name and model.name). A short hash of the exact overrides is appended whenever
  sanitising or truncating lost information, so distinct trials never share a directory.
  """
  if not overrides:
    return "default"
  last = [k.rsplit(".", 1)[-1] for k in overrides]
  parts = []
  for key in sorted(overrides):
    short = key.rsplit(".", 1)[-1]
    parts.append(f"{short if last.count(short) == 1 else key}={format_value(overrides[key])}")
  raw = ",".join(parts)
  name = re.sub(r"[^A-Za-z0-9._=+,-]", "_", raw)
  if name != raw or len(name) > MAX_NAME_CHARS or name.startswith("."):
    canonical = json.dumps(overrides, sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    name = f"{name[:MAX_NAME_CHARS].lstrip('.')}-{digest}"
  return name


def load_python_file(path: str):
  spec = importlib.util.spec_from_file_location(
      "_sweep_" + re.sub(r"\W", "_", os.path.basename(path)), path)
  if spec is None or spec.loader is None or not os.path.isfile(path):
    raise errors.MissingPathError(f"cannot load {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def check_trial_name(name: str) -> str:
  """A given trial name must be a plain directory name; returns it."""
  if (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._=+,-]+", name)
      or name.startswith(".") or len(name) > MAX_NAME_CHARS):
    raise errors.ConfigError(f"trial name {name!r} is not a plain directory name (letters, "
                             f"digits and ._=+,- only, not starting with '.', at most "
                             f"{MAX_NAME_CHARS} characters)")
  return name


def named_trials(grid, source: str) -> list[dict]:
  """[{"name", "overrides"}] from override dicts or (name, overrides) pairs; names unique."""
  trials, seen = [], {}
  for item in grid:
    if isinstance(item, tuple):
      name, overrides = item
      name = check_trial_name(name)
    else:
      name, overrides = trial_name(item), item
    if name in seen:
      raise errors.ConfigError(f"{source}: trials {seen[name]} and {overrides} share the name "
                               f"{name!r}")
    seen[name] = overrides
    trials.append({"name": name, "overrides": dict(overrides)})
  return trials


def load_sweep(sweep_path: str) -> tuple[list[dict], dict]:
  """(trials, common): trials [{"name", "overrides"}] in the sweep file's order.

  The optional `get_common()` of a sweep file gives overrides for every trial (a shorter run for a
  smoke test); they are not part of trial names. Duplicate trials are an error.
  """
  module = load_python_file(sweep_path)
  common = dict(module.get_common()) if hasattr(module, "get_common") else {}
  return named_trials(module.get_sweep(), sweep_path), common


def check_overrides(config_path: str, trials: list[dict], common: dict) -> None:
  """Fails before launching anything when an override names a field the config lacks."""
  path, _, argument = config_path.partition(":")
  module = load_python_file(path)
  config = module.get_config(argument) if argument else module.get_config()
  for trial in [{"name": "(common)", "overrides": common}] + trials:
    for key in trial["overrides"]:
      if not config_fields.has_field(config, key):
        raise errors.ConfigError(f"trial {trial['name']}: the config has no field {key!r}; "
                                 f"closest: {', '.join(errors.closest_fields(key, config))}")


def parse_shard(text: str) -> tuple[int, int]:
  match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
  if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
    raise errors.ConfigError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
  return int(match.group(1)), int(match.group(2))


def shard_trials(trials: list, index: int, count: int) -> list:
  """Round robin, so shards get a similar mix of cheap and costly trials; disjoint and complete."""
  return trials[index::count]


# ---------------------------------------------------------------- journal


def journal_path(workdir: str, shard: tuple[int, int]) -> str:
  # One file per shard: machines of a job array never append to the same file.
  index, count = shard
  return os.path.join(workdir, "journal.jsonl" if count == 1 else
                      f"journal-shard{index}of{count}.jsonl")


JOURNAL_FIX = ("delete that line, or the whole file: a trial no line marks finished or failed "
               "runs again (resuming from its checkpoint; a finished run is not trained again)")


def _journal_record(line: bytes, path: str, number: int) -> dict | None:
  """The record of one journal line; None for a blank line or one torn by a kill mid-write.

  A torn line is the start of a record: ASCII, opening a JSON object it never closes. Any other
  line that is not a record (garbled bytes, another JSON type) raises DamagedFileError.
  """
  text = line.strip()
  if not text:
    return None
  where = f"line {number}"
  try:
    record = json.loads(text)
  except ValueError as error:
    if text.startswith(b"{") and not text.endswith(b"}") and text.isascii():
      return None
    raise errors.DamagedFileError(path, f"{where} is not a JSON record: {error}",
                                  JOURNAL_FIX) from error
  if not (isinstance(record, dict) and isinstance(record.get("trial"), str)
          and record.get("status") in (STARTED, FINISHED, FAILED)):
    raise errors.DamagedFileError(path, f"{where} is not a trial record: {text[:80]!r}",
                                  JOURNAL_FIX)
  return record


def read_journal(workdir: str) -> list[dict]:
  """All records of all shards' journals, oldest first; torn last lines are skipped.

  A line garbled otherwise raises `errors.DamagedFileError` naming the file and the line.
  """
  records = []
  if not os.path.isdir(workdir):
    return records
  for name in sorted(os.listdir(workdir)):
    if not (name.startswith("journal") and name.endswith(".jsonl")):
      continue
    path = os.path.join(workdir, name)
    with open(path, "rb") as f:
      for number, line in enumerate(f, start=1):
        record = _journal_record(line, path, number)
        if record is not None:
          records.append(record)
  records.sort(key=lambda r: r.get("time", 0.0) if isinstance(r.get("time"), (int, float))
               else 0.0)
  return records


def trial_states(workdir: str) -> dict[str, dict]:
  """The latest journal record of every trial."""
  return {r["trial"]: r for r in read_journal(workdir)}


def append_record(path: str, record: dict) -> None:
  """Appends one line durably; first ends a torn line a kill may have left."""
  line = io_utils.strict_json_dumps(record, path, indent=None, default=str).encode() + b"\n"
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
  try:
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
      line = b"\n" + line
    os.write(fd, line)
    os.fsync(fd)
  finally:
    os.close(fd)


# ---------------------------------------------------------------- running one trial


def _die_with_parent():
  """In the child: SIGKILL when the sweep dies, so a killed sweep leaves no orphan training."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except OSError:
    pass


def trial_command(trial: dict, config: str, trial_dir: str, python: str, program: str,
                  common: dict) -> list[str]:
  """The trial's own overrides come last, so they win over the common ones."""
  overrides = {**common, **trial["overrides"]}
  return [python, program, f"--config={config}", f"--workdir={trial_dir}",
          *(f"--config.{key}={format_value(value)}" for key, value in overrides.items())]


def _tail(path: str, offset: int) -> str:
  with open(path, "rb") as f:
    f.seek(max(offset, os.path.getsize(path) - ERROR_TAIL_CHARS))
    return f.read().decode(errors="replace")


class TrialBusy(Exception):
  """Another sweep process is running this trial right now."""


def run_trial(command: list[str], trial_dir: str, timeout: float | None) -> tuple[int, str]:
  """Runs one trial to completion; returns (exit code, tail of its log from this attempt).

  An exclusive lock on the trial directory keeps two sweep processes (a re-launch while the first
  still runs) from training the same workdir at once; the kernel drops it if we are killed.
  """
  os.makedirs(trial_dir, exist_ok=True)
  lock = open(os.path.join(trial_dir, ".sweep.lock"), "w")
  try:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
      raise TrialBusy(trial_dir) from error
    log_path = os.path.join(trial_dir, "train.log")
    with open(log_path, "ab") as log:
      offset = log.tell()
      log.write(f"\n==== {time.ctime()} {' '.join(command)}\n".encode())
      log.flush()
      process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 preexec_fn=_die_with_parent)
      try:
        code = process.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
        log.write(f"\n==== killed after {timeout} s (--trial_timeout)\n".encode())
      except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): stop the child; the journal keeps "started" so the
        # next run resumes this trial from its checkpoint.
        process.kill()
        process.wait()
        raise
    return code, _tail(log_path, offset)
  finally:
    lock.close()


# ---------------------------------------------------------------- the sweep


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return (f"{hours}h" if hours else "") + f"{rest // 60:02d}m{rest % 60:02d}s"


def failure_reason(log_tail: str, code: int) -> str:
  """One line saying why a trial failed: its last `error: ...` line (a user error, e.g. a
  damaged file in its workdir), else the last line of its log."""
  lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
  errors_named = [line for line in lines if line.startswith("error: ")]
  if errors_named:
    return errors_named[-1]
  return lines[-1] if lines else f"exit status {code}"


def recheck_finished(trials: list[dict], states: dict, workdir: str) -> dict:
  """`states` where a finished trial whose summary.json is now missing or damaged counts as
  started: running it again rebuilds the summary from its last checkpoint."""
  states = dict(states)
  for trial in trials:
    state = states.get(trial["name"], {})
    if state.get("status") != FINISHED:
      continue
    trial_dir = os.path.join(workdir, trial["name"])
    try:
      problem = None if records.read_summary(trial_dir) else "has no summary.json"
    except errors.DamagedFileError as error:
      problem = f"has a damaged summary.json ({error.cause})"
    if problem:
      print(f"  {trial['name']} finished but {problem}: running it again", flush=True)
      states[trial["name"]] = {**state, "status": STARTED}
  return states


def plan(trials: list[dict], states: dict, retry_failed: bool) -> list[tuple[dict, str]]:
  """(trial, action) with action "skip-finished", "skip-failed", "resume", "retry" or "run"."""
  actions = []
  for trial in trials:
    status = states.get(trial["name"], {}).get("status")
    if status == FINISHED:
      action = "skip-finished"
    elif status == FAILED:
      action = "retry" if retry_failed else "skip-failed"
    elif status == STARTED:
      action = "resume"
    else:
      action = "run"
    actions.append((trial, action))
  return actions


def add_set_overrides(common: dict, extra) -> dict:
  """`common` updated with "field=value" strings (the --set flag); values stay strings."""
  common = dict(common)
  for item in extra:
    key, sep, value = item.partition("=")
    if not sep:
      raise errors.ConfigError(f"--set expects field=value, got {item!r}")
    common[key] = value
  return common


def run_sweep(config: str, sweep: str, workdir: str, shard: tuple[int, int] = (0, 1),
              retry_failed: bool = False, dry_run: bool = False, python: str = sys.executable,
              program: str = os.path.join(_REPO_ROOT, "main.py"), extra: tuple = (),
              trial_timeout: float | None = None) -> dict:
  """Runs this shard's pending trials of a sweep file; returns counts (see run_trials).

  `extra` holds "field=value" overrides for every trial (the --set flag).
  """
  all_trials, common = load_sweep(sweep)
  return run_trials(config, all_trials, add_set_overrides(common, extra), workdir, shard,
                    retry_failed, dry_run, python, program, trial_timeout, label=sweep)


def run_trials(config: str, all_trials: list[dict], common: dict, workdir: str,
               shard: tuple[int, int] = (0, 1), retry_failed: bool = False,
               dry_run: bool = False, python: str = sys.executable,
               program: str = os.path.join(_REPO_ROOT, "main.py"),
               trial_timeout: float | None = None, label: str = "",
               record_fields: dict | None = None) -> dict:
  """Runs this shard's pending trials in order; returns counts {"finished", "failed", ...}.

  `label` names the grid in the log and sweep.json; `record_fields` (e.g. the code version) go
  into every journal record this process writes.
  """
  check_overrides(config, all_trials, common)
  trials = shard_trials(all_trials, *shard)
  actions = plan(trials, recheck_finished(trials, trial_states(workdir), workdir), retry_failed)
  todo = [(t, a) for t, a in actions if not a.startswith("skip")]
  counts = {"total": len(trials), "grid": len(all_trials),
            "finished_before": sum(a == "skip-finished" for _, a in actions),
            "failed_skipped": sum(a == "skip-failed" for _, a in actions),
            "finished": 0, "failed": 0, "busy": 0}
  print(f"sweep {label}: {len(all_trials)} trials, shard {shard[0]}/{shard[1]} has {len(trials)}"
        f" ({counts['finished_before']} finished, {counts['failed_skipped']} failed and skipped,"
        f" {len(todo)} to run)", flush=True)
  if dry_run:
    for trial, action in actions:
      print(f"  {action:14s} {trial['name']}  " + " ".join(
          f"--config.{k}={format_value(v)}" for k, v in trial["overrides"].items()))
    return counts
  os.makedirs(workdir, exist_ok=True)
  atomic_write_json(os.path.join(workdir, SWEEP_FILE),
                    {"config": config, "sweep": label, "common": common,
                     "trials": all_trials})
  journal = journal_path(workdir, shard)
  base = {**(record_fields or {}), "host": socket.gethostname(), "pid": os.getpid(),
          "shard": f"{shard[0]}/{shard[1]}"}
  durations = []
  for position, (trial, action) in enumerate(todo):
    trial_dir = os.path.join(workdir, trial["name"])
    os.makedirs(trial_dir, exist_ok=True)
    atomic_write_json(os.path.join(trial_dir, TRIAL_FILE), trial)
    eta = (f", ETA {_duration(sum(durations) / len(durations) * (len(todo) - position))}"
           if durations else "")
    done = counts["finished_before"] + counts["finished"]
    print(f"[{position + 1}/{len(todo)}] {action} {trial['name']} ({done}/{len(trials)} done"
          f"{eta})", flush=True)
    command = trial_command(trial, config, trial_dir, python, program, common)
    start = time.time()
    append_record(journal, {**base, "trial": trial["name"], "status": STARTED, "time": start,
                            "action": action, "overrides": trial["overrides"]})
    try:
      code, tail = run_trial(command, trial_dir, trial_timeout)
    except TrialBusy:
      counts["busy"] += 1
      print(f"  busy: another sweep process holds {trial_dir}; skipped", flush=True)
      continue
    seconds = time.time() - start
    durations.append(seconds)
    finished = code == 0 and os.path.exists(os.path.join(trial_dir, "summary.json"))
    record = {**base, "trial": trial["name"], "time": time.time(), "seconds": seconds,
              "returncode": code, "status": FINISHED if finished else FAILED}
    if not finished:
      record.update(reason=failure_reason(tail, code), error=tail[-ERROR_TAIL_CHARS:])
      print(f"  FAILED (exit {code}) after {_duration(seconds)}: {record['reason']}\n  log: "
            f"{os.path.join(trial_dir, 'train.log')}\n" + tail[-800:], flush=True)
    else:
      print(f"  finished in {_duration(seconds)}", flush=True)
    append_record(journal, record)
    counts["finished" if finished else "failed"] += 1
  print(f"shard {shard[0]}/{shard[1]}: {counts['finished_before'] + counts['finished']}/"
        f"{len(trials)} finished, {counts['failed']} failed now, {counts['failed_skipped']} failed"
        " earlier (rerun with --retry-failed)", flush=True)
  return counts


# ---------------------------------------------------------------- CLI


def define_flags():
  # Defined on demand, not at import: sweep files and other tools import this module.
  flags.DEFINE_string("config", "configs/default.py", "Config file passed to every trial.")
  flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().", required=True)
  flags.DEFINE_string("workdir", None, "Sweep directory (one subdirectory per trial).",
                      required=True)
  define_runner_flags("Override for every trial, e.g. --set num_epochs=2.")


def define_runner_flags(set_help: str):
  """The flags of every tool that runs trials through this runner (sweeps and studies)."""
  flags.DEFINE_string("shard", "0/1", "i/n: run the i-th of n disjoint parts (0-based).")
  flags.DEFINE_bool("dry_run", False, "List the trials and their state; run nothing.")
  flags.DEFINE_bool("retry_failed", False, "Run trials the journal marks failed again.")
  flags.DEFINE_multi_string("set", [], set_help)
  flags.DEFINE_float("trial_timeout", None, "Kill and fail a trial after this many seconds.")
  flags.DEFINE_string("python", sys.executable, "Interpreter for the trials.")
  flags.DEFINE_string("program", os.path.join(_REPO_ROOT, "main.py"), "Training entry point.")


def _raise_interrupt(signum, frame):
  del frame
  raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # A batch scheduler's SIGTERM stops the trial like Ctrl-C: journal says "started", resumable.
  signal.signal(signal.SIGTERM, _raise_interrupt)
  f = flags.FLAGS
  counts = run_sweep(f.config, f.sweep, f.workdir, parse_shard(f.shard), f.retry_failed,
                     f.dry_run, f.python, f.program, tuple(f.set), f.trial_timeout)
  logging.info("sweep counts: %s", counts)
  if counts["failed"]:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, define_flags)

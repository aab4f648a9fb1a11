"""Running a sweep's trials: one fresh training subprocess per trial, journaled, resumable.

Each trial runs as its own process so a crash, a leak or accelerator memory held by one trial
cannot reach the next, in `<workdir>/<trial name>`. Re-running skips finished trials, re-runs an
interrupted one (training resumes from its checkpoint) and retries failed ones only with
`retry_failed`.
"""

import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time

from absl import flags

from proxy_jax.io_utils import atomic_write_json
from proxy_jax.sweep import files, grid, journal

TRIAL_FILE = "sweep_trial.json"  # In each trial workdir: its name and overrides.
SWEEP_FILE = "sweep.json"        # In the sweep workdir: the whole grid.
ERROR_TAIL_CHARS = 4000
# The training program of a trial: `python -m proxy_jax.main` unless a script is given.
TRAINER_MODULE = "proxy_jax.main"


def _die_with_parent():
  """In the child: SIGKILL when the sweep dies, so a killed sweep leaves no orphan training."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except OSError:
    pass


def trial_command(trial: dict, config: str, trial_dir: str, python: str, program: str,
                  common: dict) -> list[str]:
  """The trial's own overrides come last, so they win over the common ones.

  `program` is a training script, or "" for the installed trainer (`-m proxy_jax.main`).
  """
  overrides = {**common, **trial["overrides"]}
  launcher = [program] if program else ["-m", TRAINER_MODULE]
  return [python, *launcher, f"--config={config}", f"--workdir={trial_dir}",
          *(f"--config.{key}={grid.format_value(value)}" for key, value in overrides.items())]


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


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return (f"{hours}h" if hours else "") + f"{rest // 60:02d}m{rest % 60:02d}s"


def run_sweep(config: str, sweep: str, workdir: str, shard: tuple[int, int] = (0, 1),
              retry_failed: bool = False, dry_run: bool = False, python: str = sys.executable,
              program: str = "", extra: tuple = (),
              trial_timeout: float | None = None) -> dict:
  """Runs this shard's pending trials of a sweep file; returns counts (see run_trials).

  `extra` holds "field=value" overrides for every trial (the --set flag).
  """
  all_trials, common = files.load_sweep(sweep)
  return run_trials(config, all_trials, grid.add_set_overrides(common, extra), workdir, shard,
                    retry_failed, dry_run, python, program, trial_timeout, label=sweep)


def run_trials(config: str, all_trials: list[dict], common: dict, workdir: str,
               shard: tuple[int, int] = (0, 1), retry_failed: bool = False,
               dry_run: bool = False, python: str = sys.executable, program: str = "",
               trial_timeout: float | None = None, label: str = "",
               record_fields: dict | None = None) -> dict:
  """Runs this shard's pending trials in order; returns counts {"finished", "failed", ...}.

  `label` names the grid in the log and sweep.json; `record_fields` (e.g. the code version) go
  into every journal record this process writes.
  """
  files.check_overrides(config, all_trials, common)
  trials = grid.shard_trials(all_trials, *shard)
  actions = journal.plan(trials, journal.trial_states(workdir), retry_failed)
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
          f"--config.{k}={grid.format_value(v)}" for k, v in trial["overrides"].items()))
    return counts
  os.makedirs(workdir, exist_ok=True)
  atomic_write_json(os.path.join(workdir, SWEEP_FILE),
                    {"config": config, "sweep": label, "common": common,
                     "trials": all_trials})
  base = {**(record_fields or {}), "host": socket.gethostname(), "pid": os.getpid(),
          "shard": f"{shard[0]}/{shard[1]}"}
  launch = dict(config=config, python=python, program=program, common=common,
                trial_timeout=trial_timeout, journal_file=journal.journal_path(workdir, shard),
                base=base)
  durations = []
  for position, (trial, action) in enumerate(todo):
    eta = (f", ETA {_duration(sum(durations) / len(durations) * (len(todo) - position))}"
           if durations else "")
    done = counts["finished_before"] + counts["finished"]
    print(f"[{position + 1}/{len(todo)}] {action} {trial['name']} ({done}/{len(trials)} done"
          f"{eta})", flush=True)
    outcome, seconds = _launch(trial, action, os.path.join(workdir, trial["name"]), **launch)
    counts[outcome] += 1
    if seconds is not None:
      durations.append(seconds)
  print(f"shard {shard[0]}/{shard[1]}: {counts['finished_before'] + counts['finished']}/"
        f"{len(trials)} finished, {counts['failed']} failed now, {counts['failed_skipped']} failed"
        " earlier (rerun with --retry-failed)", flush=True)
  return counts


def _launch(trial: dict, action: str, trial_dir: str, *, config: str, python: str,
            program: str, common: dict, trial_timeout: float | None, journal_file: str,
            base: dict) -> tuple[str, float | None]:
  """Runs one trial and journals it; ("finished" | "failed" | "busy", seconds or None)."""
  os.makedirs(trial_dir, exist_ok=True)
  atomic_write_json(os.path.join(trial_dir, TRIAL_FILE), trial)
  command = trial_command(trial, config, trial_dir, python, program, common)
  start = time.time()
  journal.append_record(journal_file, {**base, "trial": trial["name"],
                                       "status": journal.STARTED, "time": start,
                                       "action": action, "overrides": trial["overrides"]})
  try:
    code, tail = run_trial(command, trial_dir, trial_timeout)
  except TrialBusy:
    print(f"  busy: another sweep process holds {trial_dir}; skipped", flush=True)
    return "busy", None
  seconds = time.time() - start
  finished = code == 0 and os.path.exists(os.path.join(trial_dir, "summary.json"))
  record = {**base, "trial": trial["name"], "time": time.time(), "seconds": seconds,
            "returncode": code, "status": journal.FINISHED if finished else journal.FAILED}
  if not finished:
    record["error"] = tail[-ERROR_TAIL_CHARS:]
    print(f"  FAILED (exit {code}) after {_duration(seconds)}; log: "
          f"{os.path.join(trial_dir, 'train.log')}\n" + tail[-800:], flush=True)
  else:
    print(f"  finished in {_duration(seconds)}", flush=True)
  journal.append_record(journal_file, record)
  return ("finished" if finished else "failed"), seconds


def define_runner_flags(set_help: str):
  """The flags of every tool that runs trials through this runner (sweeps and studies)."""
  flags.DEFINE_string("shard", "0/1", "i/n: run the i-th of n disjoint parts (0-based).")
  flags.DEFINE_bool("dry_run", False, "List the trials and their state; run nothing.")
  flags.DEFINE_bool("retry_failed", False, "Run trials the journal marks failed again.")
  flags.DEFINE_multi_string("set", [], set_help)
  flags.DEFINE_float("trial_timeout", None, "Kill and fail a trial after this many seconds.")
  flags.DEFINE_string("python", sys.executable, "Interpreter for the trials.")
  flags.DEFINE_string("program", "", "Training script of a trial (default: python -m "
                      f"{TRAINER_MODULE}).")

"""Running a sweep's trials: one fresh training subprocess per trial, journaled, resumable.

Each trial runs as its own process so a crash, a leak or accelerator memory held by one trial
cannot reach the next, in `<workdir>/<trial name>`. Re-running skips finished trials, re-runs an
interrupted one (training resumes from its checkpoint) and retries failed ones only with
`retry_failed`.

With `parallel` N > 1, up to N trials run at once, each in its own slice of the machine
(`slots.py`: disjoint cores, or GPUs); a failed trial does not stop the others. Every trial
process dies with the thread that started it (PR_SET_PDEATHSIG), so a runner killed even by
SIGKILL takes all its trials down, and an interrupted runner kills them and journals none of
them as failed: re-running resumes each, and every trial finishes exactly once.
"""

from concurrent import futures
import contextlib
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from proxy_jax.run import workdir_lock
from proxy_jax.core.io_utils import atomic_write_json
from proxy_jax.sweep import files, grid, journal, slots

TRIAL_FILE = "sweep_trial.json"  # In each trial workdir: its name and overrides.
SWEEP_FILE = "sweep.json"        # In the sweep workdir: the whole grid.
SWEEP_LOCK_FILE = ".sweep.lock"  # In each trial workdir, held while the sweep runs the trial.
ERROR_TAIL_CHARS = 4000
# The training program of a trial: `python -m proxy_jax.main` unless a script is given.
TRAINER_MODULE = "proxy_jax.main"


def _die_with_parent():
  """In the child: SIGKILL when the sweep dies, so a killed sweep leaves no orphan training."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except OSError:
    pass


def _child_setup(cores):
  """preexec_fn of a trial: die with the runner, and run on `cores` only (None: inherit)."""
  def setup():
    _die_with_parent()
    if cores is not None:
      os.sched_setaffinity(0, cores)
  return setup


class _Running:
  """The trial processes alive now, so that an interrupted runner can stop them all."""

  def __init__(self):
    self.lock, self.processes, self.stopping = threading.Lock(), set(), threading.Event()

  def add(self, process) -> None:
    with self.lock:
      if self.stopping.is_set():
        process.kill()
      self.processes.add(process)

  def discard(self, process) -> None:
    with self.lock:
      self.processes.discard(process)

  def stop_all(self) -> None:
    with self.lock:
      self.stopping.set()
      for process in self.processes:
        process.kill()


_RUNNING = _Running()


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


def run_trial(command: list[str], trial_dir: str, timeout: float | None,
              slot: slots.Slot = slots.Slot("this machine")) -> tuple[int, str]:
  """Runs one trial to completion in `slot`; returns (exit code, tail of its log from this
  attempt).

  A lock of its own on the trial directory keeps two sweep processes (a re-launch while the first
  still runs) from both launching the trial: the second skips it (TrialBusy) instead of failing
  on the run's lock; the kernel drops the lock if we are killed.
  """
  with contextlib.ExitStack() as stack:
    try:
      stack.enter_context(workdir_lock.hold(trial_dir, lock_file=SWEEP_LOCK_FILE))
    except workdir_lock.WorkdirBusyError as error:
      raise TrialBusy(trial_dir) from error
    log_path = os.path.join(trial_dir, "train.log")
    with open(log_path, "ab") as log:
      offset = log.tell()
      log.write(f"\n==== {time.ctime()} on {slot.label}: {' '.join(command)}\n".encode())
      log.flush()
      process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **slot.env},
                                 preexec_fn=_child_setup(slot.cores))
      _RUNNING.add(process)
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
      finally:
        _RUNNING.discard(process)
    return code, _tail(log_path, offset)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return (f"{hours}h" if hours else "") + f"{rest // 60:02d}m{rest % 60:02d}s"


def run_sweep(config: str, sweep: str, workdir: str, shard: tuple[int, int] = (0, 1),
              retry_failed: bool = False, dry_run: bool = False, python: str = sys.executable,
              program: str = "", extra: tuple = (),
              trial_timeout: float | None = None, parallel: int = 1,
              devices_per_trial: int = 0) -> dict:
  """Runs this shard's pending trials of a sweep file; returns counts (see run_trials).

  `extra` holds "field=value" overrides for every trial (the --set flag).
  """
  all_trials, common = files.load_sweep(sweep)
  return run_trials(config, all_trials, grid.add_set_overrides(common, extra), workdir, shard,
                    retry_failed, dry_run, python, program, trial_timeout, label=sweep,
                    parallel=parallel, devices_per_trial=devices_per_trial)


def failure_reason(log_tail: str, code: int) -> str:
  """One line saying why a trial failed: its last `error: ...` line (a user error, e.g. a
  damaged file in its workdir), else the last line of its log."""
  lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
  named = [line for line in lines if line.startswith("error: ")]
  if named:
    return named[-1]
  return lines[-1] if lines else f"exit status {code}"


def run_trials(config: str, all_trials: list[dict], common: dict, workdir: str,
               shard: tuple[int, int] = (0, 1), retry_failed: bool = False,
               dry_run: bool = False, python: str = sys.executable, program: str = "",
               trial_timeout: float | None = None, label: str = "",
               record_fields: dict | None = None, parallel: int = 1,
               devices_per_trial: int = 0) -> dict:
  """Runs this shard's pending trials in order; returns counts {"finished", "failed", ...}.

  `label` names the grid in the log and sweep.json; `record_fields` (e.g. the code version) go
  into every journal record this process writes. `parallel` trials run at once, each in its
  slot (slots.plan_slots with `devices_per_trial`).
  """
  machine = slots.plan_slots(parallel, devices_per_trial)
  files.check_overrides(config, all_trials, common)
  trials = grid.shard_trials(all_trials, *shard)
  states = journal.recheck_finished(trials, journal.trial_states(workdir), workdir)
  actions = journal.plan(trials, states, retry_failed)
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
  _run_todo(todo, len(trials), counts, machine, workdir, launch)
  print(f"shard {shard[0]}/{shard[1]}: {counts['finished_before'] + counts['finished']}/"
        f"{len(trials)} finished, {counts['failed']} failed now, {counts['failed_skipped']} failed"
        " earlier (rerun with --retry-failed)", flush=True)
  return counts


def _run_todo(todo: list, num_trials: int, counts: dict, machine: list, workdir: str,
              launch: dict) -> None:
  """Runs `todo` [(trial, action)], one trial per free slot of `machine`, adding to `counts`."""
  durations, free = [], queue.Queue()
  for slot in machine:
    free.put(slot)

  def run(position: int, trial: dict, action: str):
    slot = free.get()  # Never waits: at most len(machine) runs hold a slot at once.
    try:
      left = (len(todo) - position) / len(machine)
      eta = f", ETA {_duration(sum(durations) / len(durations) * left)}" if durations else ""
      done = counts["finished_before"] + counts["finished"]
      print(f"[{position + 1}/{len(todo)}] {action} {trial['name']} on {slot.label} "
            f"({done}/{num_trials} done{eta})", flush=True)
      return _launch(trial, action, os.path.join(workdir, trial["name"]), slot=slot, **launch)
    finally:
      free.put(slot)

  def count(outcome: str, seconds: float | None) -> None:
    counts[outcome] += 1
    if seconds is not None:
      durations.append(seconds)

  _run_all(run, todo, len(machine), count)


def _run_all(run, todo: list, workers: int, count) -> None:
  """count(*run(position, trial, action)) for each of `todo`, `workers` at a time.

  One worker runs them in this thread, in order. Interrupted (Ctrl-C, SIGTERM), the runner
  kills every running trial, starts no other, and re-raises.
  """
  if workers == 1:
    for position, (trial, action) in enumerate(todo):
      count(*run(position, trial, action))
    return
  pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="trial")
  try:
    pending = [pool.submit(run, position, trial, action)
               for position, (trial, action) in enumerate(todo)]
    for future in futures.as_completed(pending):
      count(*future.result())
  except BaseException:
    _RUNNING.stop_all()
    pool.shutdown(wait=True, cancel_futures=True)
    _RUNNING.stopping.clear()
    raise
  pool.shutdown(wait=True)


def _launch(trial: dict, action: str, trial_dir: str, *, config: str, python: str,
            program: str, common: dict, trial_timeout: float | None, journal_file: str,
            base: dict, slot: slots.Slot) -> tuple[str, float | None]:
  """Runs one trial and journals it; ("finished" | "failed" | "busy", seconds or None).

  A trial the runner itself killed while stopping stays "started" in the journal (resumable).
  """
  if _RUNNING.stopping.is_set():
    return "busy", None
  os.makedirs(trial_dir, exist_ok=True)
  atomic_write_json(os.path.join(trial_dir, TRIAL_FILE), trial)
  command = trial_command(trial, config, trial_dir, python, program, common)
  start = time.time()
  journal.append_record(journal_file, {**base, "trial": trial["name"],
                                       "status": journal.STARTED, "time": start,
                                       "action": action, "overrides": trial["overrides"]})
  try:
    code, tail = run_trial(command, trial_dir, trial_timeout, slot)
  except TrialBusy:
    print(f"  busy: another sweep process holds {trial_dir}; skipped", flush=True)
    return "busy", None
  if _RUNNING.stopping.is_set() and code != 0:  # Killed by this runner: not the trial's fault.
    return "busy", None
  seconds = time.time() - start
  finished = code == 0 and os.path.exists(os.path.join(trial_dir, "summary.json"))
  record = {**base, "trial": trial["name"], "time": time.time(), "seconds": seconds,
            "returncode": code, "status": journal.FINISHED if finished else journal.FAILED}
  if not finished:
    record.update(reason=failure_reason(tail, code), error=tail[-ERROR_TAIL_CHARS:])
    print(f"  {trial['name']} FAILED (exit {code}) after {_duration(seconds)}: "
          f"{record['reason']}\n  log: "
          f"{os.path.join(trial_dir, 'train.log')}\n" + tail[-800:], flush=True)
  else:
    print(f"  {trial['name']} finished in {_duration(seconds)}", flush=True)
  journal.append_record(journal_file, record)
  return ("finished" if finished else "failed"), seconds


def define_runner_flags(set_help: str):
  """The flags of every tool that runs trials through this runner (sweeps and studies)."""
  flags.DEFINE_string("shard", "0/1", "i/n: run the i-th of n disjoint parts (0-based).")
  flags.DEFINE_bool("dry_run", False, "List the trials and their state; run nothing.")
  flags.DEFINE_bool("retry_failed", False, "Run trials the journal marks failed again.")
  flags.DEFINE_multi_string("set", [], set_help)
  flags.DEFINE_float("trial_timeout", None, "Kill and fail a trial after this many seconds.")
  flags.DEFINE_integer("parallel", 1, "Trials run at once, each on its own cores or GPUs.")
  flags.DEFINE_integer("devices_per_trial", 0, "GPUs of each trial with --parallel (0: 1 where "
                       "GPUs are visible, else CPU cores split evenly).")
  flags.DEFINE_string("python", sys.executable, "Interpreter for the trials.")
  flags.DEFINE_string("program", "", "Training script of a trial (default: python -m "
                      f"{TRAINER_MODULE}).")

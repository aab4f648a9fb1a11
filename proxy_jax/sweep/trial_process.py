"""One trial as a process: its command line, its run under a lock in its own slice of the
machine, its end (exit code and log tail) and the one-line reason of a failure.

Every trial process dies with the thread that started it (PR_SET_PDEATHSIG), so a runner killed
even by SIGKILL takes all its trials down; `RUNNING` lets an interrupted runner stop the others.
"""

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time

from proxy_jax.run import workdir_lock
from proxy_jax.sweep import grid, slots

SWEEP_LOCK_FILE = ".sweep.lock"  # In each trial workdir, held while the sweep runs the trial.
# The training program of a trial: `python -m proxy_jax.main` unless a script is given.
TRAINER_MODULE = "proxy_jax.main"
ERROR_TAIL_CHARS = 4000


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


RUNNING = _Running()


def trial_command(
  trial: dict, config: str, trial_dir: str, python: str, program: str, common: dict
) -> list[str]:
  """The trial's own overrides come last, so they win over the common ones.

  `program` is a training script, or "" for the installed trainer (`-m proxy_jax.main`).
  """
  overrides = {**common, **trial["overrides"]}
  launcher = [program] if program else ["-m", TRAINER_MODULE]
  return [
    python,
    *launcher,
    f"--config={config}",
    f"--workdir={trial_dir}",
    *(f"--config.{key}={grid.format_value(value)}" for key, value in overrides.items()),
  ]


def _tail(path: str, offset: int) -> str:
  with open(path, "rb") as f:
    f.seek(max(offset, os.path.getsize(path) - ERROR_TAIL_CHARS))
    return f.read().decode(errors="replace")


class TrialBusy(Exception):
  """Another sweep process is running this trial right now."""


def run_trial(
  command: list[str],
  trial_dir: str,
  timeout: float | None,
  slot: slots.Slot = slots.Slot("this machine"),
) -> tuple[int, str]:
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
      process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **slot.env},
        preexec_fn=_child_setup(slot.cores),
      )
      RUNNING.add(process)
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
        RUNNING.discard(process)
    return code, _tail(log_path, offset)


def failure_reason(log_tail: str, code: int) -> str:
  """One line saying why a trial failed: its last `error: ...` line (a user error, e.g. a
  damaged file in its workdir), else the last line of its log."""
  lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
  named = [line for line in lines if line.startswith("error: ")]
  if named:
    return named[-1]
  return lines[-1] if lines else f"exit status {code}"

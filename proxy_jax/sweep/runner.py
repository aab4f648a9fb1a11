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
import os
import queue
import socket
import sys
import time

from absl import flags

from proxy_jax.core.io_utils import atomic_write_json
from proxy_jax.sweep import files, grid, journal, slots, trial_process
from proxy_jax.sweep.trial_process import TrialBusy, failure_reason, run_trial, trial_command

TRIAL_FILE = "sweep_trial.json"  # In each trial workdir: its name and overrides.
SWEEP_FILE = "sweep.json"  # In the sweep workdir: the whole grid.


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return (f"{hours}h" if hours else "") + f"{rest // 60:02d}m{rest % 60:02d}s"


def run_sweep(
  config: str,
  sweep: str,
  workdir: str,
  shard: tuple[int, int] = (0, 1),
  retry_failed: bool = False,
  dry_run: bool = False,
  python: str = sys.executable,
  program: str = "",
  extra: tuple = (),
  trial_timeout: float | None = None,
  parallel: int = 1,
  devices_per_trial: int = 0,
) -> dict:
  """Runs this shard's pending trials of a sweep file; returns counts (see run_trials).

  `extra` holds "field=value" overrides for every trial (the --set flag).
  """
  all_trials, common = files.load_sweep(sweep)
  return run_trials(
    config,
    all_trials,
    grid.add_set_overrides(common, extra),
    workdir,
    shard,
    retry_failed,
    dry_run,
    python,
    program,
    trial_timeout,
    label=sweep,
    parallel=parallel,
    devices_per_trial=devices_per_trial,
  )


def run_trials(
  config: str,
  all_trials: list[dict],
  common: dict,
  workdir: str,
  shard: tuple[int, int] = (0, 1),
  retry_failed: bool = False,
  dry_run: bool = False,
  python: str = sys.executable,
  program: str = "",
  trial_timeout: float | None = None,
  label: str = "",
  record_fields: dict | None = None,
  parallel: int = 1,
  devices_per_trial: int = 0,
) -> dict:
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
  counts = _counts(trials, all_trials, actions)
  print(
    f"sweep {label}: {len(all_trials)} trials, shard {shard[0]}/{shard[1]} has {len(trials)}"
    f" ({counts['finished_before']} finished, {counts['failed_skipped']} failed and skipped,"
    f" {len(todo)} to run)",
    flush=True,
  )
  if dry_run:
    _list_trials(actions)
    return counts
  launch = _launch_settings(
    config,
    all_trials,
    common,
    workdir,
    shard,
    label,
    record_fields,
    python=python,
    program=program,
    trial_timeout=trial_timeout,
  )
  _run_todo(todo, len(trials), counts, machine, workdir, launch)
  print(
    f"shard {shard[0]}/{shard[1]}: {counts['finished_before'] + counts['finished']}/"
    f"{len(trials)} finished, {counts['failed']} failed now, {counts['failed_skipped']} failed"
    " earlier (rerun with --retry-failed)",
    flush=True,
  )
  return counts


def _counts(trials: list, all_trials: list, actions: list) -> dict:
  done_before = sum(a == "skip-finished" for _, a in actions)
  failed_before = sum(a == "skip-failed" for _, a in actions)
  return {
    "total": len(trials),
    "grid": len(all_trials),
    "finished_before": done_before,
    "failed_skipped": failed_before,
    "finished": 0,
    "failed": 0,
    "busy": 0,
  }


def _list_trials(actions: list) -> None:
  for trial, action in actions:
    overrides = " ".join(
      f"--config.{k}={grid.format_value(v)}" for k, v in trial["overrides"].items()
    )
    print(f"  {action:14s} {trial['name']}  {overrides}")


def _launch_settings(
  config, all_trials, common, workdir, shard, label, record_fields, **settings
) -> dict:
  """Writes sweep.json; the arguments every `_launch` of this process takes."""
  os.makedirs(workdir, exist_ok=True)
  atomic_write_json(
    os.path.join(workdir, SWEEP_FILE),
    {"config": config, "sweep": label, "common": common, "trials": all_trials},
  )
  base = {
    **(record_fields or {}),
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "shard": f"{shard[0]}/{shard[1]}",
  }
  return dict(
    config=config,
    common=common,
    journal_file=journal.journal_path(workdir, shard),
    base=base,
    **settings,
  )


def _run_todo(
  todo: list, num_trials: int, counts: dict, machine: list, workdir: str, launch: dict
) -> None:
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
      print(
        f"[{position + 1}/{len(todo)}] {action} {trial['name']} on {slot.label} "
        f"({done}/{num_trials} done{eta})",
        flush=True,
      )
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
    pending = [
      pool.submit(run, position, trial, action) for position, (trial, action) in enumerate(todo)
    ]
    for future in futures.as_completed(pending):
      count(*future.result())
  except BaseException:
    trial_process.RUNNING.stop_all()
    pool.shutdown(wait=True, cancel_futures=True)
    trial_process.RUNNING.stopping.clear()
    raise
  pool.shutdown(wait=True)


def _launch(
  trial: dict,
  action: str,
  trial_dir: str,
  *,
  config: str,
  python: str,
  program: str,
  common: dict,
  trial_timeout: float | None,
  journal_file: str,
  base: dict,
  slot: slots.Slot,
) -> tuple[str, float | None]:
  """Runs one trial and journals it; ("finished" | "failed" | "busy", seconds or None).

  A trial the runner itself killed while stopping stays "started" in the journal (resumable).
  """
  if trial_process.RUNNING.stopping.is_set():
    return "busy", None
  os.makedirs(trial_dir, exist_ok=True)
  atomic_write_json(os.path.join(trial_dir, TRIAL_FILE), trial)
  command = trial_command(trial, config, trial_dir, python, program, common)
  start = time.time()
  journal.append_record(
    journal_file,
    {
      **base,
      "trial": trial["name"],
      "status": journal.STARTED,
      "time": start,
      "action": action,
      "overrides": trial["overrides"],
    },
  )
  try:
    code, tail = run_trial(command, trial_dir, trial_timeout, slot)
  except TrialBusy:
    print(f"  busy: another sweep process holds {trial_dir}; skipped", flush=True)
    return "busy", None
  if (
    trial_process.RUNNING.stopping.is_set() and code != 0
  ):  # Killed by this runner: not the trial's fault.
    return "busy", None
  seconds = time.time() - start
  finished = code == 0 and os.path.exists(os.path.join(trial_dir, "summary.json"))
  journal.append_record(
    journal_file, _outcome_record(trial, trial_dir, base, code, tail, seconds, finished)
  )
  return ("finished" if finished else "failed"), seconds


def _outcome_record(trial, trial_dir, base, code, tail, seconds, finished) -> dict:
  """The journal record of a trial that ended; a failure is also printed with its reason."""
  record = {
    **base,
    "trial": trial["name"],
    "time": time.time(),
    "seconds": seconds,
    "returncode": code,
    "status": journal.FINISHED if finished else journal.FAILED,
  }
  if finished:
    print(f"  {trial['name']} finished in {_duration(seconds)}", flush=True)
    return record
  record.update(reason=failure_reason(tail, code), error=tail[-trial_process.ERROR_TAIL_CHARS :])
  print(
    f"  {trial['name']} FAILED (exit {code}) after {_duration(seconds)}: "
    f"{record['reason']}\n  log: {os.path.join(trial_dir, 'train.log')}\n" + tail[-800:],
    flush=True,
  )
  return record


def define_runner_flags(set_help: str):
  """The flags of every tool that runs trials through this runner (sweeps and studies)."""
  flags.DEFINE_string("shard", "0/1", "i/n: run the i-th of n disjoint parts (0-based).")
  flags.DEFINE_bool("dry_run", False, "List the trials and their state; run nothing.")
  flags.DEFINE_bool("retry_failed", False, "Run trials the journal marks failed again.")
  flags.DEFINE_multi_string("set", [], set_help)
  flags.DEFINE_float("trial_timeout", None, "Kill and fail a trial after this many seconds.")
  flags.DEFINE_integer("parallel", 1, "Trials run at once, each on its own cores or GPUs.")
  flags.DEFINE_integer(
    "devices_per_trial",
    0,
    "GPUs of each trial with --parallel (0: 1 where "
    "GPUs are visible, else CPU cores split evenly).",
  )
  flags.DEFINE_string("python", sys.executable, "Interpreter for the trials.")
  flags.DEFINE_string(
    "program",
    "",
    f"Training script of a trial (default: python -m {trial_process.TRAINER_MODULE}).",
  )

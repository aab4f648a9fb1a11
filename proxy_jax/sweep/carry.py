"""Carrying a sweep's finished trials from one working session to the next, through the checkout.

  python -m proxy_jax.sweep.carry export --workdir=runs/pilot \
      --to=experiments/results/imagenette_mini_pilot/trials
  python -m proxy_jax.sweep.carry restore \
      --from=experiments/results/imagenette_mini_pilot/trials --workdir=runs/pilot

A sweep's (or study's) workdir lives outside the checkout and ends with the session; only what
is committed survives. `export` copies what the sweep, the pilot and a study's report read of
each FINISHED trial: sweep.json, one journal.jsonl holding every record of those trials in
their original order (a study's records keep their code version), and each trial's small files
(its top-level .json, .txt and .log files up to 1 MiB: summary.json, config.json, split.json,
classes.json, sweep_trial.json, log.txt, train.log). Checkpoints, TensorBoard event files and
images stay behind, so a report made from carried trials lacks what reads them: a study's
cams.png, its explanation scores unless a report scored the trials before the export (each
trial's explanations.json travels and is read back; otherwise report with --explain=false),
aggregate's TensorBoard curves (curves.csv, --plot) and the runs' augmented_examples.png.
Tables, paired tests, fairness checks, val_curves.png (from summary.json's history) and the
pilot's choice read the same. Unfinished trials are left out: they run again from scratch next
time. Exporting again mirrors the workdir's finished trials
(newly finished ones are added); it refuses to drop a trial it exported before.

`restore` copies them into a workdir (creating it) and appends their journal records, so
re-running the sweep skips them and runs the rest. It never overwrites anything: a trial folder
already in the workdir must hold the same files (it is then left as it is), else nothing is
restored and the command ends with one `error:` line.
"""

import json
import os

from absl import app
from absl import flags

from proxy_jax import cli
from proxy_jax.core import errors, io_utils
from proxy_jax.run import records
from proxy_jax.sweep import journal
from proxy_jax.sweep.runner import SWEEP_FILE

JOURNAL_FILE = "journal.jsonl"  # The one journal of an exported folder.
CARRIED_SUFFIXES = (".json", ".txt", ".log")
MAX_CARRIED_BYTES = 1 << 20  # A bigger file is not a record a reader needs; it stays behind.
NOT_STARTED = "not started"
SWEEP_FIX = "it describes the sweep's grid: restore it from git or a backup"


def carried_files(trial_dir: str) -> tuple[list[str], list[str]]:
  """(names of the trial's files that travel, names of small-text files too big to travel).

  Top-level regular files ending in .json, .txt or .log; not hidden ones (locks, temporaries
  of atomic writes), never the checkpoints/ folder, event files or images.
  """
  carried, too_big = [], []
  for name in sorted(os.listdir(trial_dir)):
    path = os.path.join(trial_dir, name)
    if (
      name.startswith(".")
      or not name.endswith(CARRIED_SUFFIXES)
      or os.path.islink(path)
      or not os.path.isfile(path)
    ):
      continue
    (carried if os.path.getsize(path) <= MAX_CARRIED_BYTES else too_big).append(name)
  return carried, too_big


def _summary_reads(trial_dir: str) -> bool:
  """Whether the trial's summary.json reads back (the sweep's own test of a finished trial)."""
  try:
    return records.read_summary(trial_dir) is not None
  except errors.DamagedFileError:
    return False


def trial_states(workdir: str) -> tuple[list[str], dict[str, str]]:
  """(finished trials in the grid's order, {every other trial: its state}).

  The grid is sweep.json's trials, then any the journal names beyond them. A trial counts as
  finished as the sweep counts it: its latest record says finished and its summary.json reads
  back (journal.recheck_finished runs any other again).
  """
  described = io_utils.read_json(os.path.join(workdir, SWEEP_FILE), dict, SWEEP_FIX)
  latest = {r["trial"]: r["status"] for r in journal.read_journal(workdir)}
  names = dict.fromkeys([t["name"] for t in described.get("trials", [])] + list(latest))
  finished, others = [], {}
  for name in names:
    state = latest.get(name, NOT_STARTED)
    if state == journal.FINISHED and not _summary_reads(os.path.join(workdir, name)):
      state = "finished without a readable summary.json"
    if state == journal.FINISHED:
      finished.append(name)
    else:
      others[name] = state
  return finished, others


def _subfolders(folder: str) -> list[str]:
  if not os.path.isdir(folder):
    return []
  return sorted(
    name
    for name in os.listdir(folder)
    if not name.startswith(".") and os.path.isdir(os.path.join(folder, name))
  )


def _read_bytes(path: str) -> bytes | None:
  if not os.path.isfile(path):
    return None
  with open(path, "rb") as f:
    return f.read()


def _write_if_changed(path: str, data: bytes) -> None:
  # Unchanged files are not rewritten: exporting twice leaves the folder as it was.
  if _read_bytes(path) != data:
    io_utils.atomic_write(path, lambda f: f.write(data), "wb")


def _journal_bytes(kept: list[dict], path: str) -> bytes:
  # One record a line, spelled as journal.append_record spells them.
  return b"".join(
    io_utils.strict_json_dumps(r, path, indent=None, default=str).encode() + b"\n" for r in kept
  )


def _mirror_trial(source: str, target: str, names: list[str]) -> None:
  """`target` holds exactly `names`, as in `source` (a stale small file of an older export
  goes; folders are not touched)."""
  os.makedirs(target, exist_ok=True)
  for name in names:
    _write_if_changed(os.path.join(target, name), _read_bytes(os.path.join(source, name)))
  for name in os.listdir(target):
    path = os.path.join(target, name)
    if name not in names and os.path.isfile(path) and not os.path.islink(path):
      os.remove(path)


def export(workdir: str, to: str) -> dict:
  """Writes the finished trials of `workdir` into `to`; returns {"exported": [names],
  "left_out": {name: state}, "too_big": ["trial/file"]}."""
  if not os.path.isfile(os.path.join(workdir, SWEEP_FILE)):
    raise errors.MissingPathError(
      f"--workdir={workdir}: no {SWEEP_FILE}, so not the workdir of a sweep or study that has run"
    )
  finished, others = trial_states(workdir)
  dropped = [name for name in _subfolders(to) if name not in finished]
  if dropped:
    raise errors.WorkdirError(
      f"--to={to} holds {len(dropped)} trial(s) that {workdir} has not finished "
      f"({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''}); exporting would drop "
      f"them: restore them first (python -m proxy_jax.sweep.carry restore --from={to} "
      f"--workdir={workdir}), or export into an empty folder"
    )
  kept = [r for r in journal.read_journal(workdir) if r["trial"] in set(finished)]
  os.makedirs(to, exist_ok=True)
  _write_if_changed(os.path.join(to, SWEEP_FILE), _read_bytes(os.path.join(workdir, SWEEP_FILE)))
  journal_file = os.path.join(to, JOURNAL_FILE)
  _write_if_changed(journal_file, _journal_bytes(kept, journal_file))
  too_big = []
  for name in finished:
    names, big = carried_files(os.path.join(workdir, name))
    too_big += [f"{name}/{b}" for b in big]
    _mirror_trial(os.path.join(workdir, name), os.path.join(to, name), names)
  return {"exported": finished, "left_out": others, "too_big": too_big}


def _record_key(record: dict) -> str:
  return json.dumps(record, sort_keys=True, default=str)


def read_carried(source: str) -> tuple[list[dict], dict[str, list[str]]]:
  """(journal records, {trial: its carried file names}) of an exported folder; a folder that is
  not what `export` writes is a MissingPathError or DamagedFileError."""
  if not os.path.isfile(os.path.join(source, SWEEP_FILE)):
    raise errors.MissingPathError(
      f"--from={source}: no {SWEEP_FILE}, so not a folder written "
      "by python -m proxy_jax.sweep.carry export"
    )
  io_utils.read_json(os.path.join(source, SWEEP_FILE), dict, SWEEP_FIX)
  carried = journal.read_journal(source)
  latest = {r["trial"]: r["status"] for r in carried}
  trials = {name: carried_files(os.path.join(source, name))[0] for name in _subfolders(source)}
  fix = "check it out again from git, or export it again from the sweep's workdir"
  for name in sorted(set(trials) | set(latest)):
    if latest.get(name) != journal.FINISHED or not _summary_reads(os.path.join(source, name)):
      raise errors.DamagedFileError(
        os.path.join(source, name),
        "not a finished trial with its journal record and summary.json",
        fix,
      )
  return carried, trials


def _conflicts(source: str, workdir: str, carried: list[dict], trials: dict) -> list[str]:
  """Carried trials the workdir already holds otherwise: a folder with other (or missing)
  files, or journal records of its own."""
  keys = {_record_key(r) for r in carried}
  own = {
    r["trial"]
    for r in journal.read_journal(workdir)
    if r["trial"] in trials and _record_key(r) not in keys
  }
  conflicts = []
  for name, names in trials.items():
    target = os.path.join(workdir, name)
    differing = [
      f
      for f in names
      if _read_bytes(os.path.join(target, f)) != _read_bytes(os.path.join(source, name, f))
    ]
    if os.path.lexists(target) and not os.path.isdir(target):
      conflicts.append(f"{name} (not a folder)")
    elif os.path.isdir(target) and differing:
      conflicts.append(f"{name} ({', '.join(differing[:3])} missing or different)")
    elif name in own:
      conflicts.append(f"{name} (the workdir's journal has records of its own for it)")
  return conflicts


def restore(source: str, workdir: str) -> dict:
  """Copies the carried trials of `source` into `workdir`; returns {"restored": [names],
  "present": [names already there, identical], "kept_sweep_file": bool}. Raises WorkdirError,
  writing nothing, if the workdir holds any of them otherwise."""
  carried, trials = read_carried(source)
  conflicts = _conflicts(source, workdir, carried, trials)
  if conflicts:
    raise errors.WorkdirError(
      f"--workdir={workdir} already holds {len(conflicts)} of the carried trials otherwise: "
      f"{'; '.join(conflicts[:3])}{'; ...' if len(conflicts) > 3 else ''}. Nothing was "
      "restored (nothing is ever overwritten): restore into a new --workdir, or move those "
      "trial folders and the workdir's journal aside"
    )
  os.makedirs(workdir, exist_ok=True)
  described = _read_bytes(os.path.join(source, SWEEP_FILE))
  own_described = _read_bytes(os.path.join(workdir, SWEEP_FILE))
  if own_described is None:
    io_utils.atomic_write(os.path.join(workdir, SWEEP_FILE), lambda f: f.write(described), "wb")
  restored, present = [], []
  for name, names in trials.items():
    target = os.path.join(workdir, name)
    if os.path.isdir(target):  # No conflict, so it holds the same files already.
      present.append(name)
      continue
    os.makedirs(target)
    # summary.json last: a restore killed midway leaves a trial the sweep runs again.
    for file_name in sorted(names, key=lambda n: n == records.SUMMARY_FILE):
      data = _read_bytes(os.path.join(source, name, file_name))
      io_utils.atomic_write(os.path.join(target, file_name), lambda f, d=data: f.write(d), "wb")
    restored.append(name)
  # The records go last, and only those the workdir lacks: restoring again appends nothing.
  existing = {_record_key(r) for r in journal.read_journal(workdir)}
  journal_file = journal.journal_path(workdir, (0, 1))
  for record in carried:
    if _record_key(record) not in existing:
      journal.append_record(journal_file, record)
  return {
    "restored": restored,
    "present": present,
    "kept_sweep_file": own_described not in (None, described),
  }


# ---------------------------------------------------------------- CLI


def define_flags():
  flags.DEFINE_string("workdir", None, "The sweep's (or study's) workdir.", required=True)
  flags.DEFINE_string(
    "to",
    None,
    "export: the folder in the checkout to write (e.g. experiments/results/<name>/trials).",
  )
  flags.DEFINE_string("from", None, "restore: a folder written by export.")


def _states_text(left_out: dict) -> str:
  counts = {}
  for state in left_out.values():
    counts[state] = counts.get(state, 0) + 1
  return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def main(argv):
  if len(argv) != 2 or argv[1] not in ("export", "restore"):
    raise app.UsageError(
      "usage: python -m proxy_jax.sweep.carry export --workdir=W --to=F | "
      "restore --from=F --workdir=W"
    )
  f = flags.FLAGS
  if argv[1] == "export":
    if not f.to:
      raise errors.UserError("export needs --to=<folder in the checkout>")
    result = export(f.workdir, f.to)
    left_out = result["left_out"]
    print(
      f"exported {len(result['exported'])} finished trial(s) to {f.to}; "
      f"{len(left_out)} unfinished left out"
      + (f" ({_states_text(left_out)}), to run again from scratch" if left_out else "")
      + (f"; too big to carry: {', '.join(result['too_big'])}" if result["too_big"] else ""),
      flush=True,
    )
    return
  source = f["from"].value
  if not source:
    raise errors.UserError("restore needs --from=<folder written by export>")
  result = restore(source, f.workdir)
  print(
    f"restored {len(result['restored'])} trial(s) into {f.workdir} "
    f"({len(result['present'])} already there and identical); re-running the sweep skips "
    "them and runs the rest"
    + ("; kept the workdir's own sweep.json" if result["kept_sweep_file"] else ""),
    flush=True,
  )


if __name__ == "__main__":
  cli.run(main, define_flags)

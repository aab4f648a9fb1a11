"""The sweep journal: one JSON object per line (started / finished / failed), appended with fsync.

One file per shard (`journal*.jsonl`); a torn last line from a kill is ignored when read.
"""

import os
import json

from proxy_jax import io_utils

STARTED, FINISHED, FAILED = "started", "finished", "failed"


def journal_path(workdir: str, shard: tuple[int, int]) -> str:
  # One file per shard: machines of a job array never append to the same file.
  index, count = shard
  return os.path.join(workdir, "journal.jsonl" if count == 1 else
                      f"journal-shard{index}of{count}.jsonl")


def read_journal(workdir: str) -> list[dict]:
  """All records of all shards' journals, oldest first; torn or garbled lines are skipped."""
  records = []
  if not os.path.isdir(workdir):
    return records
  for name in sorted(os.listdir(workdir)):
    if not (name.startswith("journal") and name.endswith(".jsonl")):
      continue
    with open(os.path.join(workdir, name), "rb") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict) and "trial" in record and "status" in record:
          records.append(record)
  records.sort(key=lambda r: r.get("time", 0.0))
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

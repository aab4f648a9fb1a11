"""The sweep journal: one JSON object per line (started / finished / failed), appended with fsync.

One file per shard (`journal*.jsonl`); a torn line from a kill is ignored when read, any other
damage (a line changed since it was written included: each carries its digest,
`proxy_jax.core.digests`) is an `errors.DamagedFileError` naming the file, the line and what to do.
"""

import os
import json

from proxy_jax.core import digests, errors, io_utils
from proxy_jax.run import records

STARTED, FINISHED, FAILED = "started", "finished", "failed"


def journal_path(workdir: str, shard: tuple[int, int]) -> str:
  # One file per shard: machines of a job array never append to the same file.
  index, count = shard
  return os.path.join(
    workdir, "journal.jsonl" if count == 1 else f"journal-shard{index}of{count}.jsonl"
  )


JOURNAL_FIX = (
  "delete that line, or the whole file: a trial no line marks finished or failed "
  "runs again (resuming from its checkpoint; a finished run is not trained again)"
)


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
    raise errors.DamagedFileError(
      path, f"{where} is not a JSON record: {error}", JOURNAL_FIX
    ) from error
  if not (
    isinstance(record, dict)
    and isinstance(record.get("trial"), str)
    and record.get("status") in (STARTED, FINISHED, FAILED)
  ):
    raise errors.DamagedFileError(
      path, f"{where} is not a trial record: {text[:80]!r}", JOURNAL_FIX
    )
  try:
    return digests.checked(record, path)
  except digests.Mismatch as error:
    raise errors.DamagedFileError(path, f"{where}: {error.cause}", JOURNAL_FIX) from error


def read_journal(workdir: str) -> list[dict]:
  """All records of all shards' journals, oldest first; torn lines are skipped, any other
  garbled line raises `errors.DamagedFileError` naming the file and the line."""
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
  records.sort(key=lambda r: r.get("time", 0.0))
  return records


def trial_states(workdir: str) -> dict[str, dict]:
  """The latest journal record of every trial."""
  return {r["trial"]: r for r in read_journal(workdir)}


def append_record(path: str, record: dict) -> None:
  """Appends one line durably; first ends a torn line a kill may have left."""
  # The digest is of the record as it reads back (strict JSON, numbers as JSON has them).
  value = json.loads(io_utils.strict_json_dumps(record, path, indent=None, default=str))
  line = json.dumps(digests.with_digest(value), sort_keys=True, allow_nan=False).encode() + b"\n"
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
  try:
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
      line = b"\n" + line
    os.write(fd, line)
    os.fsync(fd)
  finally:
    os.close(fd)


def recheck_finished(trials: list[dict], states: dict, workdir: str) -> dict:
  """`states` where a finished trial whose summary.json is now missing or damaged counts as
  started: running it again rebuilds the summary from its last checkpoint."""
  states = dict(states)
  for trial in trials:
    state = states.get(trial["name"], {})
    if state.get("status") != FINISHED:
      continue
    try:
      summary = records.read_summary(os.path.join(workdir, trial["name"]))
      problem = None if summary else "has no summary.json"
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

"""One run per workdir: an exclusive lock on `<workdir>/.run.lock` for as long as a run trains.

Two runs writing one workdir (a double launch, two shards given the same trial) would each
overwrite the other's checkpoints. The lock is `flock(2)` on the lock file: the kernel drops it
when its holder exits or dies (SIGKILL, an OOM kill, a crash) and a rebooted machine holds none,
so a lock never outlives its run and a file left by a dead process blocks nothing. The file
holds the holder's pid, host and start time so that a refused run can say who holds it. The
file itself is never deleted: deleting it would let two runs lock two different files.

Where the filesystem offers no locks at all, the run goes ahead with a warning.
"""

import contextlib
import errno
import fcntl
import os
import socket
import time

from absl import logging

from proxy_jax.core import errors

LOCK_FILE = ".run.lock"


class WorkdirBusyError(errors.UserError, RuntimeError):
  """Another live process holds the workdir's lock."""


def _make_workdir(workdir: str) -> bool:
  """Creates `workdir` (and its parents) if needed; True if this call created it."""
  if os.path.isdir(workdir):
    return False
  try:
    os.makedirs(os.path.dirname(os.path.abspath(workdir)), exist_ok=True)
    os.mkdir(workdir)
    return True
  except FileExistsError:
    if os.path.isdir(workdir):  # Another process made it just now.
      return False
    raise errors.WorkdirError(
      f"--workdir {workdir}: cannot create it (a file is in the way)"
    ) from None
  except OSError as error:
    raise errors.WorkdirError(
      f"--workdir {workdir}: cannot create it ({error.strerror})"
    ) from error


def holder_description(path: str) -> str:
  """'process 123 on host gpu-7 (since 2026-12-06 03:40:00 UTC)', from the lock file."""
  try:
    with open(path) as f:
      fields = dict(part.split("=", 1) for part in f.read().split() if "=" in part)
  except (OSError, ValueError):
    fields = {}
  if "pid" not in fields:
    return "another process (it has not written its pid yet)"
  since = f" (since {fields['since'].replace('T', ' ')} UTC)" if "since" in fields else ""
  return f"process {fields['pid']} on host {fields.get('host', '?')}{since}"


def _lock(fd: int, path: str, workdir: str) -> bool:
  """Takes the lock without waiting; False where the filesystem has no locks."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    holder = holder_description(path)
    raise WorkdirBusyError(
      f"--workdir {workdir} is in use by {holder}: wait for that run to end or stop it, or "
      f"train in another --workdir (a lock outlives no process, so {path} never needs "
      "deleting)"
    ) from None
  except OSError as error:
    if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      raise
    logging.warning(
      "%s: this filesystem has no file locks (%s); nothing stops a second run "
      "from using this workdir at the same time.",
      workdir,
      error.strerror,
    )
    return False


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True, lock_file: str = LOCK_FILE):
  """Holds the workdir's lock (creating the workdir) for the `with` block; yields whether this
  call created the workdir. WorkdirBusyError if a live process holds it. `enabled=False` (the
  processes of a multi-process run but the first) only creates the workdir. The sweep runner
  holds a trial's `lock_file` of its own while the trial's run holds LOCK_FILE."""
  created = _make_workdir(workdir)
  if not enabled:
    yield created
    return
  path = os.path.join(workdir, lock_file)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    if _lock(fd, path, workdir):
      since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
      record = f"pid={os.getpid()} host={socket.gethostname()} since={since}\n".encode()
      os.ftruncate(fd, 0)
      os.pwrite(fd, record, 0)
    yield created
  finally:
    os.close(fd)  # Releases the lock.

"""The disk under a workdir: which filesystem, how much is free, and a full disk as an error.

A write that fails for lack of space must stop a run in one line that says where and how much,
not in the tracebacks of the threads that were writing. `full_disk_error` finds the OSError
behind a failure however it was wrapped (TensorStore reports a full disk in its message, not as
an OSError), and `stderr_to_log` keeps writer threads' own reports off the console.
"""

import contextlib
import logging as std_logging
import errno
import os
import re
import shutil
import sys
import tempfile
import threading

from absl import logging


@contextlib.contextmanager
def stderr_to_log():
  """Everything written to file descriptor 2 meanwhile (Python and C++ threads alike) goes to
  the log at debug level instead of the console."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode(errors="replace").strip()
      if text:
        logging.debug("checkpoint writer output:\n%s", text)


def full_disk_error(error: BaseException) -> OSError | None:
  """The OSError behind a failed save (Orbax and TensorStore wrap it), else None. TensorStore
  reports a full disk in a message, not as an OSError: that becomes one."""
  seen = error
  for _ in range(20):
    if isinstance(seen, OSError):
      return seen
    text = str(seen)
    if "No space left on device" in text or "ENOSPC" in text:
      # TensorStore names the file it failed to write: 'Failed writing: "<path>"'.
      written = re.search(r'Failed writing: "([^"]+)"', text)
      return OSError(errno.ENOSPC, "No space left on device", written.group(1) if written else None)
    seen = seen.__cause__ or seen.__context__
    if seen is None:
      return None
  return None


def mount_point(path: str) -> str:
  """The mount point of the filesystem holding `path` (the device a user frees space on)."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  while not os.path.ismount(path):
    path = os.path.dirname(path)
  return path


def free_bytes(path: str) -> int:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def no_space_message(error: OSError, detail: str = "") -> str:
  """`no space left on <mount> writing <path>[ (detail)]`."""
  path = os.path.abspath(error.filename or ".")
  return f"no space left on {mount_point(path)} writing {path}" + (f" ({detail})" if detail else "")


def silence_dropped_writers() -> None:
  """After a failed write, for the rest of the process: asyncio's "Task exception was never
  retrieved" and unraisable errors of the writer's dropped callbacks ("Event loop is closed"),
  which Python reports when it collects them at exit, are not printed; the failure was."""
  std_logging.getLogger("asyncio").disabled = True
  sys.unraisablehook = lambda unraisable: None
  # TensorStore's callbacks into the writer's closed event loop fail in threads it owns, whose
  # errors Python prints through these hooks.
  threading.excepthook = lambda args: None
  sys.excepthook = _quiet_if_event_loop_closed(sys.excepthook)


def _quiet_if_event_loop_closed(hook):
  def quiet(kind, value, traceback):
    if isinstance(value, RuntimeError) and "Event loop is closed" in str(value):
      return
    hook(kind, value, traceback)

  return quiet

"""What a run prints: plain lines a person reads on the console, full detail in the workdir's log.

Without `--verbose` the console shows the project's own INFO lines without absl's prefix
(level, timestamp, thread, file:line) and only warnings and errors from the libraries (clu's
"Setting work unit notes", JAX's backend probing, Orbax's save steps stay out); a warning or
an error is one line starting with its level. With `--verbose` the console is absl's own, every
logger at INFO, each line prefixed.

`log_file(workdir)` keeps the full detail, absl's prefix included, in `<workdir>/log.txt`
(`log.process<i>.txt` on the other hosts of a multi-host run) while a run trains; only Orbax's
INFO lines (some 60 for each checkpoint it saves) stay out of it, its warnings do not.

`quiet_native_logs()` must run before TensorFlow or XLA load their C++ libraries: it keeps their
INFO lines (oneDNN's notice, TPU probing) off stderr unless the user set TF_CPP_MIN_LOG_LEVEL.
"""

import contextlib
import logging as std_logging
import os
import sys

from absl import logging

LOG_FILE = "log.txt"
# The package's folder (this module is in proxy_jax/core/).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def quiet_native_logs() -> None:
  """C++ loggers of TensorFlow and XLA: warnings and errors only (1 drops INFO)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


class ProjectLinesOnly(std_logging.Filter):
  """INFO lines of this package's modules, and warnings and errors from anyone."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or os.path.abspath(record.pathname).startswith(
      _PACKAGE_DIR
    )


def not_orbax_info(record: std_logging.LogRecord) -> bool:
  return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


class PlainFormatter(std_logging.Formatter):
  """The message alone for INFO; "warning: ..." / "error: ..." above it."""

  def format(self, record: std_logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= std_logging.ERROR:
      message = f"error: {message}"
    elif record.levelno >= std_logging.WARNING:
      message = f"warning: {message}"
    if record.exc_info:
      message += "\n" + self.formatException(record.exc_info)
    return message


def configure(verbose: bool) -> None:
  """Sets up the console once the flags are parsed (absl's handler is installed by then)."""
  if verbose:
    return
  quiet_native_logs()
  handler = logging.get_absl_handler()
  handler.setFormatter(PlainFormatter())
  if not any(isinstance(f, ProjectLinesOnly) for f in handler.filters):
    handler.addFilter(ProjectLinesOnly())


def ranges(numbers) -> str:
  """[0, 1, 2, 5] -> "0-2,5" (CPU core lists)."""
  runs = []
  for number in sorted(numbers):
    if runs and number == runs[-1][1] + 1:
      runs[-1][1] = number
    else:
      runs.append([number, number])
  return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def log_machine(devices: list) -> None:
  """One line: the devices and the CPU cores this process may run on (a sweep's --parallel
  gives each trial its own)."""
  kinds = sorted({d.platform for d in devices})
  logging.info(
    "%d %s device(s); CPU cores %s", len(devices), "/".join(kinds), ranges(os.sched_getaffinity(0))
  )


def log_file_name(process_index: int) -> str:
  return LOG_FILE if process_index == 0 else f"log.process{process_index}.txt"


class _LogFileHandler(std_logging.FileHandler):
  """A log file that goes quiet when its disk is full: the run's own error says so once, not
  a "Logging error" traceback per line."""

  def handleError(self, record):  # noqa: N802 (logging's name)
    if isinstance(sys.exc_info()[1], OSError):
      return
    super().handleError(record)

  def flush(self):
    try:
      super().flush()
    except OSError:
      pass

  def close(self):
    try:
      super().close()
    except OSError:
      pass


@contextlib.contextmanager
def log_file(workdir: str, process_index: int = 0):
  """Appends every log line (all loggers, absl's prefix) to the workdir's log while inside."""
  handler = _LogFileHandler(os.path.join(workdir, log_file_name(process_index)), encoding="utf-8")
  handler.setFormatter(logging.PythonFormatter())
  handler.addFilter(not_orbax_info)
  root = std_logging.getLogger()
  root.addHandler(handler)
  try:
    yield handler
  finally:
    root.removeHandler(handler)
    handler.close()

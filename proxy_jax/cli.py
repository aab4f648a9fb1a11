"""The command-line convention of every program: user errors as one line, absl flags.

A `errors.UserError` (or a bad flag, or a full disk) ends a program as one line,
`error: <message>`, on stderr with exit status 2; any other exception keeps its traceback.

    if __name__ == "__main__":
      cli.run(main, define_flags)   # python -m proxy_jax.<tool>: absl flags, hyphens allowed
      cli.run_main(main)            # absl programs with their own flags, instead of app.run
      cli.run_plain(main)           # argparse programs: main() -> exit status

Tool flags are spelled with hyphens or underscores (`--top-k=3` is `--top_k=3`); `--config.*`
overrides of ml_collections are passed through untouched. `main.py` keeps absl's own parser,
as flax's examples do.
"""

import errno
import os
import re
import sys
from typing import Callable

from absl import flags

from proxy_jax.config import fields as config_fields, files as config_files
from proxy_jax.core import console, disk, errors

EXIT_USER_ERROR = 2


def report(error) -> int:
  """Prints `error: <message>` on stderr; returns the exit status for a user error."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  return EXIT_USER_ERROR


def exit_with(error) -> None:
  sys.exit(report(error))


def _guard(call):
  """`call()`; a UserError, or a full disk anywhere, ends the program as one line, status 2."""
  try:
    return call()
  except errors.UserError as error:
    exit_with(error)
  except OSError as error:
    if error.errno != errno.ENOSPC:
      raise
    exit_with(disk.no_space_message(error) + ": free space and run the same command to resume")


def run_plain(main, *args):
  """Calls `main(*args)` and exits with its status; a UserError becomes one line and status 2."""
  status = _guard(lambda: main(*args))
  sys.exit(status or 0)


def run_main(main, flags_parser=None, config_default=None, config_flag="config"):
  """absl's `app.run(main)`, with user errors (flags included) as one line and status 2.

  `config_default` is the default of the program's ml_collections config flag, if it has one,
  so that an override naming no field can be told apart from other parse errors.
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  parse = flags_parser or (lambda argv: flags.FLAGS(argv))

  def guarded_parser(argv):
    try:
      if config_default is not None:
        _check_config_file(_config_path(argv, config_default, config_flag), config_flag)
      return parse(argv)
    except (flags.Error, errors.UserError) as error:
      exit_with(error)
    except (AttributeError, KeyError):
      message = unknown_override(argv, config_default, config_flag)
      if message is None:
        raise
      exit_with(message)

  def guarded_main(argv):
    return _guard(lambda: main(argv))

  app.run(guarded_main, flags_parser=guarded_parser)


def hyphen_flags_parser(argv: list[str]):
  """absl flags with --dry-run spelled as well as --dry_run."""
  fixed = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("--config."):
      name, sep, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + sep + value
    fixed.append(arg)
  return flags.FLAGS(fixed)


def run(
  main: Callable[[list[str]], None],
  define_flags: Callable[[], None],
  config_default: str | None = None,
) -> None:
  """Defines a tool's flags (only when it is the program, never at import) and runs `main`.

  A user error (`errors.UserError`, a bad flag) ends as one `error: ...` line with status 2;
  `config_default` is the default of the tool's `--config` flag, if it has one. The console
  shows what `main.py` shows: this package's lines plain, other libraries' warnings and errors
  only (JAX's backend probing and TensorFlow's start-up chatter are not the tool's output).
  """
  define_flags()

  def quiet_main(argv):
    console.configure(verbose=False)
    return main(argv)

  run_main(quiet_main, flags_parser=hyphen_flags_parser, config_default=config_default)


def define_config_flag(default: str, help_string: str, name: str = "config"):
  """`config_flags.DEFINE_config_file` (locked), where an unknown override is one line.

  ml_collections applies the overrides already when the flag is defined (if no --config= is
  given), so this is where `--config.no_such_field=1` fails.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  try:
    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except (AttributeError, KeyError):
    message = unknown_override(sys.argv, default, name)
    if message is None:
      raise
    exit_with(message)


def unknown_override(argv, default, name="config"):
  """'--config.x: no such field; closest: ...' for the first override naming no field, or None."""
  path = _config_path(argv, default, name)
  if not path:
    return None
  try:
    config = config_files.load_config(path, name)
  except Exception:  # pylint: disable=broad-except
    return None  # The config file itself is broken: the original traceback says how.
  fields = config_fields.field_names(config)
  for arg in argv[1:]:
    match = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
    if match and match.group(1) not in fields:
      field = match.group(1)
      return f"--{name}.{field}: {path.partition(':')[0]} has no such field; closest: " + ", ".join(
        f"{name}.{c}" for c in config_fields.closest_fields(field, config)
      )
  return None


def _check_config_file(path, name):
  # ml_collections defers a missing file to a traceback at first use; say it up front.
  if not os.path.isfile(path.partition(":")[0]):
    raise errors.MissingPathError(f"--{name}={path}: no such config file")


def _config_path(argv, default, name):
  path = default
  for index, arg in enumerate(argv[1:], start=1):
    if arg.startswith(f"--{name}=") or arg.startswith(f"-{name}="):
      path = arg.split("=", 1)[1]
    elif arg in (f"--{name}", f"-{name}") and index + 1 < len(argv):
      path = argv[index + 1]
  return path

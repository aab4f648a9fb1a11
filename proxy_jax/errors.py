"""User errors: the project's own config, data and workdir errors, and how a CLI reports them.

A `UserError` is something the user can fix (a field, a file, a folder); every command line
prints it as one line, `error: <message>`, on stderr and exits with status 2. Any other
exception is a bug or an environment fault and keeps its traceback.

Each subclass also derives from the builtin its callers used to catch (`ValueError`,
`FileNotFoundError`), so `except ValueError` keeps working.

    if __name__ == "__main__":
      errors.run_main(main)          # absl programs, instead of app.run(main)
      errors.run_plain(main)         # argparse programs: main() -> exit status
"""

import difflib
import os
import re
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
  """An error the user can fix; reported as one line, without a traceback."""


class ConfigError(UserError, ValueError):
  """A config field holds a value that cannot work, or names no field."""


class DataError(UserError, ValueError):
  """The dataset cannot give a usable run (no readable image, an empty class or split)."""


class WorkdirError(UserError, ValueError):
  """The workdir holds a run that does not match this one."""


class MissingPathError(UserError, FileNotFoundError):
  """A file or folder the user named does not exist or holds nothing usable."""


class DamagedFileError(UserError, ValueError):
  """A file the project wrote and reads back is truncated, empty or garbled.

  The message names the file, what is wrong with it and what to do; `path` and `cause` are
  kept for callers that recover (a journal line, a trial marked failed).
  """

  def __init__(self, path: str, cause: str, fix: str):
    super().__init__(f"{path} is damaged ({cause}); {fix}")
    self.path, self.cause, self.fix = path, cause, fix


def report(error) -> int:
  """Prints `error: <message>` on stderr; returns the exit status for a user error."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  return EXIT_USER_ERROR


def exit_with(error) -> None:
  sys.exit(report(error))


def run_plain(main, *args):
  """Calls `main(*args)` and exits with its status; a UserError becomes one line and status 2."""
  try:
    status = main(*args)
  except UserError as error:
    exit_with(error)
  sys.exit(status or 0)


def run_main(main, flags_parser=None, config_default=None, config_flag="config"):
  """absl's `app.run(main)`, with user errors (flags included) as one line and status 2.

  `config_default` is the default of the program's ml_collections config flag, if it has one,
  so that an override naming no field can be told apart from other parse errors.
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  parse = flags_parser or (lambda argv: flags.FLAGS(argv))

  def guarded_parser(argv):
    try:
      if config_default is not None:
        _check_config_file(_config_path(argv, config_default, config_flag), config_flag)
      return parse(argv)
    except (flags.Error, UserError) as error:
      exit_with(error)
    except (AttributeError, KeyError):
      message = unknown_override(argv, config_default, config_flag)
      if message is None:
        raise
      exit_with(message)

  def guarded_main(argv):
    try:
      return main(argv)
    except UserError as error:
      exit_with(error)

  app.run(guarded_main, flags_parser=guarded_parser)


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


# ---------------------------------------------------------------- unknown config fields


def unknown_override(argv, default, name="config"):
  """'--config.x: no such field; closest: ...' for the first override naming no field, or None."""
  path = _config_path(argv, default, name)
  if not path:
    return None
  try:
    from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
    config = config_flags.ConfigFileFlagParser(name=name).parse(path)
  except Exception:  # pylint: disable=broad-except
    return None  # The config file itself is broken: the original traceback says how.
  fields = _field_names(config)
  for arg in argv[1:]:
    match = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
    if match and match.group(1) not in fields:
      field = match.group(1)
      return (f"--{name}.{field}: {path.partition(':')[0]} has no such field; closest: "
              + ", ".join(f"{name}.{c}" for c in closest_fields(field, config)))
  return None


def closest_fields(field: str, config, count: int = 3) -> list[str]:
  """The `count` dotted field names of `config` most like `field` (difflib's ratio)."""
  return difflib.get_close_matches(field, sorted(_field_names(config)), n=count, cutoff=0.0)


def _check_config_file(path, name):
  # ml_collections defers a missing file to a traceback at first use; say it up front.
  if not os.path.isfile(path.partition(":")[0]):
    raise MissingPathError(f"--{name}={path}: no such config file")


def _config_path(argv, default, name):
  path = default
  for index, arg in enumerate(argv[1:], start=1):
    if arg.startswith(f"--{name}=") or arg.startswith(f"-{name}="):
      path = arg.split("=", 1)[1]
    elif arg in (f"--{name}", f"-{name}") and index + 1 < len(argv):
      path = argv[index + 1]
  return path


def _field_names(config, prefix=""):
  """Every dotted field name of a ConfigDict, sub-dicts included."""
  names = set()
  for key, value in config.items():
    names.add(prefix + key)
    if hasattr(value, "items"):
      names |= _field_names(value, f"{prefix}{key}.")
  return names

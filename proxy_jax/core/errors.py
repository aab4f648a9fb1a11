"""User errors: the project's own config, data and workdir exception types.

A `UserError` is something the user can fix (a field, a file, a folder); every command line
prints it as one line, `error: <message>`, on stderr and exits with status 2 (`cli`). Any other
exception is a bug or an environment fault and keeps its traceback.

Each subclass also derives from the builtin its callers catch (`ValueError`,
`FileNotFoundError`), so `except ValueError` keeps working.
"""


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


def fail_field(field: str, value, allowed: str):
  """Raises the one-line ConfigError of every config check: "config.<field>=<value> is invalid:
  <allowed>", `field` dotted from the config's root ("augment.mix")."""
  raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")

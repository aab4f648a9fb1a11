"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half.

Files get the permissions an ordinary `open()` would give them (0666 less the umask), not the
temporary file's private 0600: results are meant to be shared. JSON is strict: NaN and
infinities, which `json` would write as bare tokens no other parser accepts, are written as
null and named in a top-level "non_finite" entry.

`read_json` is the one reader of the JSON files the project writes and reads back: a file that
is empty, truncated, garbled, of the wrong JSON type or changed since it was written (its digest,
`proxy_jax.core.digests`) raises `errors.DamagedFileError` naming the file and what to do, which
every command line prints as one `error:` line.
"""

import json
import math
import os
import tempfile

from absl import logging
import numpy as np

from proxy_jax.core import digests, errors

NON_FINITE_KEY = "non_finite"


def _current_umask() -> int:
  # /proc avoids os.umask's set-and-restore, which briefly changes it for every thread.
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_write(path: str, write, mode: str):
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
  try:
    os.fchmod(fd, 0o666 & ~_current_umask())
    with os.fdopen(fd, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


_PLAIN = (dict, list, tuple, str, bytes, int, float, type(None))


def strict_json_value(obj):
  """(obj with NumPy values as Python ones and non-finite floats as None, {key path: value}).

  Key paths read like `history[2].train_loss`; values are "NaN", "Infinity" or "-Infinity".
  """
  non_finite = {}

  def clean(value, where):
    if not isinstance(value, _PLAIN) and hasattr(value, "__array__"):  # e.g. jax.Array
      value = np.asarray(value)
    if isinstance(value, np.ndarray):
      value = value.tolist()
    elif isinstance(value, np.generic):
      value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
      non_finite[where or "(top level)"] = (
        "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
      )
      return None
    if isinstance(value, dict):
      return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value

  return clean(obj, ""), non_finite


def strict_json_dumps(obj, name: str = "JSON", indent: int | None = 2, default=None) -> str:
  """Strict JSON text of `obj` (see module docstring), indented, keys sorted.

  A dict gets the "non_finite" note as a key of its own; any other top-level value keeps its
  shape and the note goes to the log.
  """
  value, non_finite = strict_json_value(obj)
  if non_finite:
    if isinstance(value, dict):
      value[NON_FINITE_KEY] = non_finite
    else:
      logging.warning("%s: non-finite values written as null: %s", name, non_finite)
  return json.dumps(
    value, indent=indent, sort_keys=True, allow_nan=False, default=default or _jsonable
  )


def atomic_write_json(path: str, obj) -> None:
  """Strict JSON (module docstring); a JSON object also holds the digest of its content
  (`digests.DIGEST_KEY`), which `read_json` checks."""
  text = strict_json_dumps(obj, path)  # Fails (with nothing written) if obj cannot be encoded.
  value = json.loads(text)
  if isinstance(value, dict):
    text = json.dumps(digests.with_digest(value), indent=2, sort_keys=True, allow_nan=False)
  atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text), "w")


def atomic_save_npy(path: str, array) -> None:
  atomic_write(path, lambda f: np.save(f, np.asarray(array)), "wb")


def atomic_save_figure(path: str, figure, **savefig_options) -> None:
  """A matplotlib figure as a PNG at `path`, never half-written."""
  atomic_write(path, lambda f: figure.savefig(f, format="png", **savefig_options), "wb")


_JSON_TYPE_NAMES = {dict: "a JSON object", list: "a JSON list", str: "a JSON string"}


def json_type_name(kind) -> str:
  return _JSON_TYPE_NAMES.get(kind, f"a JSON {kind.__name__}")


def read_json(
  path: str, expect: type | None = None, fix: str = "delete it or restore it from a backup"
):
  """The value of the JSON file `path`, which must be of type `expect` (dict, list) if given.

  A missing file raises FileNotFoundError, as `open` does; an empty, truncated or garbled file,
  or one of another JSON type, raises `errors.DamagedFileError` whose message ends with `fix`.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if not raw.strip():
    raise errors.DamagedFileError(path, f"empty ({len(raw)} bytes)", fix)
  try:
    value = json.loads(raw)
  except UnicodeDecodeError as error:
    raise errors.DamagedFileError(path, f"not UTF-8 text at byte {error.start}", fix) from error
  except ValueError as error:
    raise errors.DamagedFileError(path, f"not valid JSON: {error}", fix) from error
  if expect is not None and not isinstance(value, expect):
    raise errors.DamagedFileError(
      path, f"it holds {json_type_name(type(value))}, not {json_type_name(expect)}", fix
    )
  try:
    return digests.checked(value, path)
  except digests.Mismatch as error:
    raise errors.DamagedFileError(path, error.cause, fix) from error


def _jsonable(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")

"""SHA-256 digests of what a run writes, checked before anything written is used again.

A bad disk sector or a faulty copy can change bytes without changing a file's size or making it
unreadable; a trainer that then resumes from those bytes turns a hardware fault into a wrong
published number. So, as trusted storage does, what the project writes carries a digest of its
content, and a reader checks it first:

  * a JSON object file (`io_utils.atomic_write_json`: summary.json, config.json, split.json,
    sweep.json, a decoded cache's index, ...) holds the digest of its own content under
    `DIGEST_KEY`, written in the same atomic write; `io_utils.read_json` checks and removes it;
  * a sweep journal line holds the digest of its record the same way;
  * a checkpoint holds `MANIFEST` (the size and CRC-32 of every other file in it, written once
    Orbax has finished the checkpoint; `checksum_of_file` says why CRC-32 there) and a run's checkpoints folder holds `SINCE_FILE` (the first epoch
    saved with manifests: a newer checkpoint without one was cut off before its manifest and is
    not trusted; an older one was written before digests existed and is restored unverified);
  * a decoded cache entry's index holds the digests of its arrays.

Files written before digests existed have none and are read unverified.
"""

from concurrent import futures
import hashlib
import json
import os
import zlib

DIGEST_KEY = "_sha256"
MANIFEST = "DIGESTS.json"
SINCE_FILE = "digests-since.json"
_CHUNK = 1 << 22  # 4 MiB: hashlib and zlib release the GIL on chunks this size.
_PARALLEL_BYTES = 64 << 20


class Mismatch(ValueError):
  """Content that does not match its digest; `path` names the file, `cause` says how, `kind` is
  "missing" (a listed file is gone) or "digest" (bytes changed, or a file added)."""

  def __init__(self, path: str, cause: str, kind: str = "digest"):
    super().__init__(f"{path}: {cause}")
    self.path, self.cause, self.kind = path, cause, kind


def canonical(value) -> bytes:
  """The bytes a JSON value's digest is taken of: independent of indentation and key order."""
  return json.dumps(
    value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
  ).encode()


def of_value(value) -> str:
  return hashlib.sha256(canonical(value)).hexdigest()


def with_digest(obj: dict) -> dict:
  """`obj` with the digest of the rest of it under DIGEST_KEY."""
  rest = {k: v for k, v in obj.items() if k != DIGEST_KEY}
  return {**rest, DIGEST_KEY: of_value(rest)}


def checked(obj, path: str):
  """`obj` without its digest, after checking it (Mismatch if it does not match); a value
  without one (another JSON type, or written before digests) is returned as it is."""
  if not isinstance(obj, dict) or DIGEST_KEY not in obj:
    return obj
  rest = {k: v for k, v in obj.items() if k != DIGEST_KEY}
  if obj[DIGEST_KEY] != of_value(rest):
    raise Mismatch(
      path,
      "its content does not match the digest written with it (changed "
      "after it was written: a bad disk or copy)",
    )
  return rest


def of_file(path: str) -> str:
  hashed = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      hashed.update(block)
  return hashed.hexdigest()


def _files(directory: str) -> list[str]:
  """Every file under `directory` but the manifest, as sorted relative paths."""
  found = []
  for root, _, names in os.walk(directory):
    for name in names:
      relative = os.path.relpath(os.path.join(root, name), directory)
      if relative != MANIFEST:
        found.append(relative)
  return sorted(found)


def checksum_of_file(path: str) -> str:
  """CRC-32 of a file's bytes, as 8 hex digits with its size ("<size>:<crc>").

  A checkpoint's files are checked with CRC-32, as gzip, PNG and TensorStore check theirs: it
  detects any burst of up to 32 changed bits and misses random damage with probability 2^-32,
  and zlib computes it at about 5 GB/s here against SHA-256's 1.6, which would cost about 15% of
  a ResNet-50 checkpoint's save on this CPU (benchmarks/checkpoint_digest.py). The size is
  checked too.
  """
  crc = 0
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      crc = zlib.crc32(block, crc)
  return f"{os.path.getsize(path)}:{crc & 0xFFFFFFFF:08x}"


def manifest_of(directory: str) -> dict:
  """{relative path: checksum} of every file under `directory` (the manifest left out); files
  are read in parallel (zlib releases the GIL)."""
  names = _files(directory)
  total = sum(os.path.getsize(os.path.join(directory, name)) for name in names)
  if total < _PARALLEL_BYTES:  # Starting threads would cost more than they save.
    return {name: checksum_of_file(os.path.join(directory, name)) for name in names}
  with futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    sums = pool.map(lambda name: checksum_of_file(os.path.join(directory, name)), names)
    return dict(zip(names, sums))


def has_manifest(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, MANIFEST))


def verify_manifest(directory: str, read_manifest) -> None:
  """Mismatch naming the first file that is missing, added or changed since the manifest;
  `read_manifest(path)` reads the manifest's {relative path: sha256} (Mismatch if damaged)."""
  listed = read_manifest(os.path.join(directory, MANIFEST))
  present = _files(directory)
  actual = manifest_of(directory)
  for name in sorted(set(listed) - set(present)):
    raise Mismatch(
      os.path.join(directory, name), "listed in its checkpoint's manifest but missing", "missing"
    )
  for name in present:
    if name not in listed:
      raise Mismatch(
        os.path.join(directory, name),
        "not in its checkpoint's manifest (added after the checkpoint was written)",
      )
    if actual[name] != listed[name]:
      raise Mismatch(
        os.path.join(directory, name),
        "its bytes do not match the digest "
        "written with its checkpoint (changed after it was written: a bad disk "
        "or copy)",
      )

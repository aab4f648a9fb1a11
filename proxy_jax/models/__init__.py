"""Model registry: `create(name, ...)` builds any supported classifier.

Every model exposes `features(x, train)` -> `(B, h, w, C)` and `head(features)` -> float32
logits, with `__call__ == head(features(x))`, and names its head and classifier as class
attributes (`model_class(name).HEAD_MODULES`, `.CLASSIFIER`, ...); see `common.py`. Use them through
`model.apply(variables, x, method="features")` / `method="head"`.
"""

from typing import Any

import jax
import jax.numpy as jnp

from proxy_jax.models.efficientnet import LITE, EfficientNetLite
from proxy_jax.models.resnet import ResNet
from proxy_jax.models.tiny import TinyCNN
from proxy_jax.models.vgg import VGG
from proxy_jax.models.vit import ViT

# Images at or below this size get the small-image stem unless the config says otherwise.
SMALL_IMAGE_MAX = 64

_RESNETS = {
  "resnet18": ((2, 2, 2, 2), False),
  "resnet34": ((3, 4, 6, 3), False),
  "resnet50": ((3, 4, 6, 3), True),
}
_VITS = {"vit_ti16": (192, 12, 3), "vit_s16": (384, 12, 6), "vit_b16": (768, 12, 12)}
MODEL_NAMES = ("tiny_cnn", *_RESNETS, "vgg16_bn", *_VITS, *LITE)
# The resolution a model family was trained at, where it has its own (else ImageNet's 224).
_NATIVE = {name: resolution for name, (_, _, resolution, _) in LITE.items()}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# "auto": bfloat16 compute where the hardware has fast bf16 matrix units, float32 elsewhere.
DTYPE_CHOICES = ("auto", *DTYPES)
BFLOAT16_BACKENDS = ("gpu", "tpu")


def resolve_dtype(dtype: str, backend: str | None = None) -> str:
  """The compute dtype a model is built with: "auto" becomes "bfloat16" on GPU/TPU and
  "float32" on CPU (XLA:CPU has no fast bf16 path); other names are returned unchanged.

  `backend` defaults to `jax.default_backend()` of this process, so a run resumed on other
  hardware computes in that hardware's dtype (parameters are float32 either way).
  """
  if dtype not in DTYPE_CHOICES:
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
  if dtype != "auto":
    return dtype
  backend = backend or jax.default_backend()
  return "bfloat16" if backend in BFLOAT16_BACKENDS else "float32"


SMALL_STEM_CHOICES = ("auto", "true", "false")


def use_small_stem(image_size: int, small_stem: Any = "auto") -> bool:
  """small_stem: "auto" (at 64 px or less), "true"/"false" (config strings) or a bool."""
  if isinstance(small_stem, str):
    if small_stem.lower() not in SMALL_STEM_CHOICES:
      raise ValueError(f"small_stem={small_stem!r}; choose one of auto, true, false")
    if small_stem.lower() == "auto":
      return image_size <= SMALL_IMAGE_MAX
    return small_stem.lower() == "true"
  return bool(small_stem)


def variables_of(state, params=None) -> dict:
  """The {"params", "batch_stats"} variables `apply` takes, from anything holding both (a
  TrainState); `params` replaces the state's own (the copy a loss differentiates)."""
  return {"params": state.params if params is None else params, "batch_stats": state.batch_stats}


def check_name(name: str) -> None:
  if name not in MODEL_NAMES:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def model_class(name: str) -> type:
  """The Flax module class of model `name` (with its FAMILY, HEAD_MODULES, CLASSIFIER...)."""
  check_name(name)
  if name in _RESNETS:
    return ResNet
  if name in _VITS:
    return ViT
  if name in LITE:
    return EfficientNetLite
  return {"tiny_cnn": TinyCNN, "vgg16_bn": VGG}[name]


def native_resolution(name: str) -> int:
  """The image side model `name`'s ImageNet weights were trained and evaluated at."""
  check_name(name)
  return _NATIVE.get(name, 224)


def takes_width(name: str) -> bool:
  """Whether `config.model.width` (a base channel count) applies: not to ViT or EfficientNet,
  whose widths are their own scaling tables."""
  return name not in _VITS and name not in LITE


def resnet_stage_sizes(name: str) -> tuple[int, ...]:
  """Blocks per stage of a ResNet, e.g. (2, 2, 2, 2) for resnet18."""
  return _RESNETS[name][0]


def is_vit(name: str) -> bool:
  return name in _VITS


def vit_patch_size(image_size: int, small_stem: Any = "auto") -> int:
  """ViT patch side: 4 px with the small-image stem, else the ImageNet models' 16 px."""
  return 4 if use_small_stem(image_size, small_stem) else 16


def create(
  name: str,
  num_classes: int,
  image_size: int,
  dtype: str = "float32",
  small_stem: Any = "auto",
  **overrides,
):
  """Builds model `name`; `overrides` set extra module fields (e.g. a reduced `width`).

  `dtype` is the compute dtype ("auto", "float32" or "bfloat16"); parameters are float32.
  """
  check_name(name)
  compute_dtype = DTYPES[resolve_dtype(dtype)]
  small = use_small_stem(image_size, small_stem)
  if name == "tiny_cnn":
    return TinyCNN(num_classes, dtype=compute_dtype, **overrides)
  if name in _RESNETS:
    stages, bottleneck = _RESNETS[name]
    return ResNet(
      stages, bottleneck, num_classes, small_stem=small, dtype=compute_dtype, **overrides
    )
  if name == "vgg16_bn":
    return VGG(num_classes, small_stem=small, dtype=compute_dtype, **overrides)
  if name in LITE:
    width, depth, _, dropout = LITE[name]
    fields = dict(width=width, depth=depth, dropout_rate=dropout)
    fields.update(overrides)
    return EfficientNetLite(num_classes, dtype=compute_dtype, **fields)
  dim, depth, heads = _VITS[name]
  fields = dict(dim=dim, depth=depth, num_heads=heads, patch_size=vit_patch_size(image_size, small))
  fields.update(overrides)
  return ViT(num_classes, image_size, dtype=compute_dtype, **fields)

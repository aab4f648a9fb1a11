"""Pieces shared by every model family.

Conventions every model follows (the CAM code and the converters rely on them):
  * `features(x, train)` returns the last spatial map `(B, h, w, C)` in the compute dtype;
  * `head(features)` returns float32 logits `(B, num_classes)`;
  * `__call__(x, train) == head(features(x, train))`.
Each model class also says what its parts are called (read by `pretrained.py`):
  * `FAMILY`: the architecture family ("resnet", "vgg", "vit", "tiny");
  * `HEAD_MODULES`: the top-level submodules whose parameters `head` uses;
  * `CLASSIFIER`: the last layer, the one whose shape depends on the class count;
  * `SMALL_STEM_PARAMS`: submodules whose shape changes with `small_stem` (a mismatch there
    makes `pretrained` suggest small_stem=false).
Paddings are explicit and torch-style so converted PyTorch weights give the same logits.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torch's BatchNorm2d defaults (momentum 0.1 on the new value, eps 1e-5), so imported running
# statistics mean exactly what they meant in PyTorch.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


def pad(p: int):
  return ((p, p), (p, p))


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, *, dtype: Any,
         use_bias: bool = False, name: str | None = None) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad(padding),
                 use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def global_avg_pool(x):
  return jnp.mean(x, axis=(1, 2))


def adaptive_avg_pool(x, out_size: int):
  """torch.nn.AdaptiveAvgPool2d on NHWC: bin i spans [floor(i*n/o), ceil((i+1)*n/o))."""

  def pool_axis(x, axis):
    n = x.shape[axis]
    slices = []
    for i in range(out_size):
      start, end = (i * n) // out_size, -((-(i + 1) * n) // out_size)
      index = [slice(None)] * x.ndim
      index[axis] = slice(start, end)
      slices.append(jnp.mean(x[tuple(index)], axis=axis, keepdims=True))
    return jnp.concatenate(slices, axis=axis)

  return pool_axis(pool_axis(x, 1), 2)


def classifier(num_classes: int, dtype: Any, name: str = "fc") -> nn.Dense:
  return nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, name=name)

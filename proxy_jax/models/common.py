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
import os
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

# torch's BatchNorm2d defaults (momentum 0.1 on the new value, eps 1e-5), so imported running
# statistics mean exactly what they meant in PyTorch.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


def pad(p: int):
  return ((p, p), (p, p))


# XLA:CPU runs a k x k convolution (k > 1) whose output map is this small or smaller up to
# ~100x below its usual FLOP rate, forward and backward (benchmarks/small_maps.py); the same
# work as im2col + one matmul runs at the usual rate. Set PROXY_JAX_CPU_IM2COL=0 to compare.
SMALL_MAP_MAX = 2
CPU_IM2COL = os.environ.get("PROXY_JAX_CPU_IM2COL", "1") != "0"
_NHWC = ("NHWC", "HWIO", "NHWC")


def _takes_im2col(
  lhs, rhs, padding, lhs_dilation, rhs_dilation, feature_group_count, dimension_numbers, out_hw
) -> bool:
  """Decided at trace time from static shapes and the backend the computation is built for."""
  return (
    CPU_IM2COL
    and jax.default_backend() == "cpu"
    and lhs.ndim == 4
    and max(rhs.shape[:2]) > 1
    and max(out_hw) <= SMALL_MAP_MAX
    and not isinstance(padding, str)
    and feature_group_count == 1
    and all(d == 1 for d in tuple(lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
    and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  )


# XLA:CPU runs depthwise convolutions (one filter per channel) 10-40x slower than the same sum
# written as k * k shifted slices times per-channel weights, forward and backward
# (benchmarks/small_maps.py --model efficientnet_lite0 shows the train step). Set
# PROXY_JAX_CPU_DEPTHWISE=conv to compare.
CPU_DEPTHWISE_SHIFTS = os.environ.get("PROXY_JAX_CPU_DEPTHWISE", "shifts") != "conv"


def _takes_shifts(
  lhs, rhs, padding, lhs_dilation, rhs_dilation, feature_group_count, dimension_numbers
) -> bool:
  return (
    CPU_DEPTHWISE_SHIFTS
    and jax.default_backend() == "cpu"
    and lhs.ndim == 4
    and feature_group_count > 1
    and feature_group_count == lhs.shape[-1]
    and rhs.shape[2] == 1
    and rhs.shape[3] == lhs.shape[-1]
    and not isinstance(padding, str)
    and all(d == 1 for d in tuple(lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
    and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  )


def depthwise_shifts(lhs, rhs, window_strides, padding, precision=None):
  """A depthwise NHWC convolution (HWIO kernel (k, k, 1, C)) as a sum of k * k strided slices
  of the padded input, each times its per-channel weights: elementwise work whose gradients are
  elementwise too. The same sum as the convolution's."""
  (top, bottom), (left, right) = padding
  padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  kh, kw = rhs.shape[:2]
  (sh, sw) = window_strides
  oh, ow = (padded.shape[1] - kh) // sh + 1, (padded.shape[2] - kw) // sw + 1
  total = None
  for i in range(kh):
    for j in range(kw):
      term = (
        padded[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :] * rhs[i, j, 0]
      )
      total = term if total is None else total + term
  del precision  # Elementwise products: nothing for a precision setting to choose.
  return total


def small_map_conv(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  **kwargs,
):
  """`lax.conv_general_dilated` (NHWC/HWIO), as im2col + matmul for tiny maps on XLA:CPU, and
  depthwise convolutions as shifted sums there (`depthwise_shifts`).

  The im2col uses static slices of the padded input, whose gradients are pads and slices, so
  the backward pass avoids the slow convolutions as well. Same parameters, same result.
  """
  if _takes_shifts(
    lhs, rhs, padding, lhs_dilation, rhs_dilation, feature_group_count, dimension_numbers
  ):
    return depthwise_shifts(lhs, rhs, window_strides, padding, precision)
  kh, kw = rhs.shape[:2]
  if not isinstance(padding, str):
    (top, bottom), (left, right) = padding
    out_hw = (
      (lhs.shape[1] + top + bottom - kh) // window_strides[0] + 1,
      (lhs.shape[2] + left + right - kw) // window_strides[1] + 1,
    )
  if isinstance(padding, str) or not _takes_im2col(
    lhs, rhs, padding, lhs_dilation, rhs_dilation, feature_group_count, dimension_numbers, out_hw
  ):
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
      **kwargs,
    )
  padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  (sh, sw), (oh, ow) = window_strides, out_hw
  # Columns in (kh, kw, C) order, matching the HWIO kernel flattened row-major.
  columns = jnp.concatenate(
    [
      padded[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
      for i in range(kh)
      for j in range(kw)
    ],
    axis=-1,
  )
  return jnp.einsum(
    "nhwk,ko->nhwo", columns, rhs.reshape(-1, rhs.shape[-1]), precision=precision, **kwargs
  )


def conv(
  features: int,
  kernel: int,
  stride: int = 1,
  padding: int = 0,
  *,
  dtype: Any,
  use_bias: bool = False,
  name: str | None = None,
) -> nn.Conv:
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=pad(padding),
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
    conv_general_dilated=small_map_conv,
  )


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

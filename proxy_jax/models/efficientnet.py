"""EfficientNet-Lite0 ... Lite4 (Tan & Le 2019; the Lite variants of TensorFlow's TPU repository,
`efficientnet/lite/efficientnet_lite_builder.py`).

The Lite family is EfficientNet for mobile accelerators: MBConv blocks (1x1 expansion, k x k
depthwise convolution, 1x1 projection) with ReLU6 instead of swish and no squeeze-excitation,
the stem (32 channels) and head (1,280 channels) kept at their width whatever the scaling, and
the first and last stage's repeats not scaled. Convolutions pad as TensorFlow's "SAME" (the
extra row and column at the bottom and right), batch normalisation uses TensorFlow's
momentum 0.99 and epsilon 1e-3, and training drops whole residual branches per example
("drop connect", rate 0.2 scaled by the block's position) and 20-30% of the pooled features
before the classifier. Submodule names follow the PyTorch port (`efficientnet-lite-pytorch`:
`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`, ...) without the underscores, so its state
dicts convert by name (`proxy_jax.weights.pretrained`).

The CAM layer is the head's output (`features`): the last convolutional map, 7 x 7 at 224 px.

Input normalisation: the reference trains the Lite models on (pixel - 127) / 128, not on
ImageNet's mean and standard deviation (its builder's MEAN_RGB and STDDEV_RGB; on
imagenette-mini's photos the converted Lite0 reaches a higher ImageNet top-1 with it,
benchmarks/efficientnet_lite.py). Every model of this project is fed ImageNet-standardised images
(`preprocess.normalize`), so this one first maps its input back to pixels and into its own
normalisation (`INPUT_MEAN`, `INPUT_STD`, in [0, 1] units; `pretrained.json` records them).
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax.images import preprocess
from proxy_jax.models.common import small_map_conv

# name -> (width coefficient, depth coefficient, resolution, dropout rate): the builder's table.
LITE = {
  "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
  "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
  "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
  "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
  "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}
# Per stage: (repeats, kernel, stride, expansion, input filters, output filters).
STAGES = (
  (1, 3, 1, 1, 32, 16),
  (2, 3, 2, 6, 16, 24),
  (2, 5, 2, 6, 24, 40),
  (3, 3, 2, 6, 40, 80),
  (3, 5, 1, 6, 80, 112),
  (4, 5, 2, 6, 112, 192),
  (1, 3, 1, 6, 192, 320),
)
STEM, HEAD = 32, 1280
DROP_CONNECT = 0.2
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.99, epsilon=1e-3)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """The builder's channel rounding: scaled, to a multiple of 8, never 10% below the scaled."""
  scaled = filters * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def blocks_of(width: float, depth: float) -> list[dict]:
  """Every MBConv block of a Lite model, in order: kernel, stride, expansion, in/out channels."""
  blocks = []
  for index, (repeats, kernel, stride, expand, inputs, outputs) in enumerate(STAGES):
    ends = index in (0, len(STAGES) - 1)  # Lite keeps the first and last stage's depth.
    count = repeats if ends else int(math.ceil(depth * repeats))
    inputs = STEM if index == 0 else round_filters(inputs, width)
    outputs = round_filters(outputs, width)
    for repeat in range(count):
      blocks.append(
        {
          "kernel": kernel,
          "stride": stride if repeat == 0 else 1,
          "expand": expand,
          "inputs": inputs if repeat == 0 else outputs,
          "outputs": outputs,
        }
      )
  return blocks


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's "SAME": output ceil(size / stride), the odd pixel of padding after."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class SameConv(nn.Module):
  """A convolution padded as TensorFlow's "SAME" for the input it is given (any size)."""

  features: int
  kernel: int
  stride: int = 1
  groups: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pads = tuple(same_padding(x.shape[axis], self.kernel, self.stride) for axis in (1, 2))
    return nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      strides=(self.stride,) * 2,
      padding=pads,
      feature_group_count=self.groups,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="conv",
      conv_general_dilated=small_map_conv,
    )(x)


class MBConv(nn.Module):
  """Expansion (1x1), depthwise (k x k), projection (1x1); identity shortcut when shapes agree."""

  kernel: int
  stride: int
  expand: int
  inputs: int
  outputs: int
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    hidden = self.inputs * self.expand
    if self.expand != 1:
      self.expand_conv = SameConv(hidden, 1, dtype=self.dtype)
      self.bn0 = BatchNorm(dtype=self.dtype)
    self.depthwise_conv = SameConv(
      hidden, self.kernel, self.stride, groups=hidden, dtype=self.dtype
    )
    self.bn1 = BatchNorm(dtype=self.dtype)
    self.project_conv = SameConv(self.outputs, 1, dtype=self.dtype)
    self.bn2 = BatchNorm(dtype=self.dtype)

  def __call__(self, inputs, train: bool):
    ura = not train
    x = inputs
    if self.expand != 1:
      x = jax.nn.relu6(self.bn0(self.expand_conv(x), use_running_average=ura))
    x = jax.nn.relu6(self.bn1(self.depthwise_conv(x), use_running_average=ura))
    x = self.bn2(self.project_conv(x), use_running_average=ura)
    if self.stride != 1 or self.inputs != self.outputs:
      return x
    if train and self.drop_rate > 0:
      # Drop connect: each example keeps its residual branch with probability 1 - rate,
      # rescaled, as the reference (`floor(keep + uniform)`).
      keep = 1.0 - self.drop_rate
      uniform = jax.random.uniform(self.make_rng("dropout"), (x.shape[0], 1, 1, 1))
      x = x / keep * jnp.floor(keep + uniform).astype(x.dtype)
    return x + inputs


class EfficientNetLite(nn.Module):
  """`features(x, train)`: the head convolution's (B, h, w, 1280) map; `head`: pool, dropout,
  classifier."""

  FAMILY = "efficientnet"
  HEAD_MODULES = ("fc",)
  CLASSIFIER = "fc"
  SMALL_STEM_PARAMS = ()
  INPUT_MEAN = (127.0 / 255.0,) * 3
  INPUT_STD = (128.0 / 255.0,) * 3

  num_classes: int
  width: float = 1.0
  depth: float = 1.0
  dropout_rate: float = 0.2
  drop_connect_rate: float = DROP_CONNECT
  dtype: Any = jnp.float32

  def setup(self):
    self.conv_stem = SameConv(STEM, 3, 2, dtype=self.dtype)
    self.bn0 = BatchNorm(dtype=self.dtype)
    specs = blocks_of(self.width, self.depth)
    # The reference scales the drop rate by the block's index over the block count.
    self.blocks = [
      MBConv(**spec, drop_rate=self.drop_connect_rate * index / len(specs), dtype=self.dtype)
      for index, spec in enumerate(specs)
    ]
    self.conv_head = SameConv(HEAD, 1, dtype=self.dtype)
    self.bn1 = BatchNorm(dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.fc = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

  def features(self, x, train: bool = False):
    pixels = jnp.asarray(x, jnp.float32) * preprocess.IMAGENET_STD + preprocess.IMAGENET_MEAN
    x = ((pixels - np.float32(self.INPUT_MEAN)) / np.float32(self.INPUT_STD)).astype(self.dtype)
    x = jax.nn.relu6(self.bn0(self.conv_stem(x), use_running_average=not train))
    for block in self.blocks:
      x = block(x, train)
    return jax.nn.relu6(self.bn1(self.conv_head(x), use_running_average=not train))

  def head(self, features, train: bool = False):
    pooled = jnp.mean(features, axis=(1, 2))
    pooled = self.dropout(pooled, deterministic=not train)
    return self.fc(pooled).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train), train)

"""ResNet-18/34/50 (torchvision v1.5 layout: the stride sits in the 3x3 convolution).

`small_stem` replaces the 7x7/2 convolution and max pool by one 3x3/1 convolution, the usual
CIFAR-style stem, so 32-64 px inputs keep a useful feature map (4x4 at 32 px) for CAMs.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from proxy_jax.models.common import BatchNorm, classifier, conv, global_avg_pool


class _Projection(nn.Module):
  """Shared 1x1 projection shortcut, used when a block changes shape."""

  def setup_projection(self, out_channels):
    if self.project:
      self.downsample_conv = conv(out_channels, 1, self.strides, dtype=self.dtype)
      self.downsample_bn = BatchNorm(dtype=self.dtype)

  def shortcut(self, x, train):
    if not self.project:
      return x
    return self.downsample_bn(self.downsample_conv(x), use_running_average=not train)


class BasicBlock(_Projection):
  filters: int
  strides: int
  project: bool
  dtype: Any = jnp.float32
  expansion = 1

  def setup(self):
    self.setup_projection(self.filters)
    self.conv1 = conv(self.filters, 3, self.strides, 1, dtype=self.dtype)
    self.bn1 = BatchNorm(dtype=self.dtype)
    self.conv2 = conv(self.filters, 3, 1, 1, dtype=self.dtype)
    # Zero-init of the last BN scale makes every residual block start as identity.
    self.bn2 = BatchNorm(dtype=self.dtype, scale_init=nn.initializers.zeros)

  def __call__(self, x, train):
    ura = not train
    y = nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    return nn.relu(y + self.shortcut(x, train))


class Bottleneck(_Projection):
  filters: int
  strides: int
  project: bool
  dtype: Any = jnp.float32
  expansion = 4

  def setup(self):
    self.setup_projection(self.filters * 4)
    self.conv1 = conv(self.filters, 1, dtype=self.dtype)
    self.bn1 = BatchNorm(dtype=self.dtype)
    self.conv2 = conv(self.filters, 3, self.strides, 1, dtype=self.dtype)
    self.bn2 = BatchNorm(dtype=self.dtype)
    self.conv3 = conv(self.filters * 4, 1, dtype=self.dtype)
    self.bn3 = BatchNorm(dtype=self.dtype, scale_init=nn.initializers.zeros)

  def __call__(self, x, train):
    ura = not train
    y = nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    return nn.relu(y + self.shortcut(x, train))


class ResNet(nn.Module):
  FAMILY = "resnet"
  HEAD_MODULES = ("fc",)
  CLASSIFIER = "fc"
  SMALL_STEM_PARAMS = ("conv1",)

  stage_sizes: Sequence[int]
  bottleneck: bool
  num_classes: int
  small_stem: bool = False
  width: int = 64
  dtype: Any = jnp.float32

  def setup(self):
    block_cls = Bottleneck if self.bottleneck else BasicBlock
    if self.small_stem:
      self.conv1 = conv(self.width, 3, 1, 1, dtype=self.dtype)
    else:
      self.conv1 = conv(self.width, 7, 2, 3, dtype=self.dtype)
    self.bn1 = BatchNorm(dtype=self.dtype)
    blocks = []
    in_channels = self.width
    for stage, num_blocks in enumerate(self.stage_sizes):
      filters = self.width * 2**stage
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        out_channels = filters * block_cls.expansion
        blocks.append(
          block_cls(
            filters, strides, project=strides != 1 or in_channels != out_channels, dtype=self.dtype
          )
        )
        in_channels = out_channels
    self.blocks = blocks
    self.fc = classifier(self.num_classes, self.dtype)

  def features(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
    if not self.small_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train)
    return x

  def head(self, features):
    return self.fc(global_avg_pool(features)).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train))

"""VGG-16 with BatchNorm (torchvision `vgg16_bn` layout).

`features` stops after the last conv/BN/ReLU, before the final max pool, so CAMs get the
14x14 map at 224 px instead of 7x7. `head` does that pool, torchvision's adaptive average
pool to 7x7, and the three-layer classifier. The small-image variant skips the first two max
pools and classifies from a global average (the usual CIFAR VGG), keeping a 4x4 map at 32 px.
`width` scales every convolution's channels (64 = torchvision's VGG-16); tests use a small one.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from proxy_jax.models.common import BatchNorm, adaptive_avg_pool, conv

VGG16_LAYOUT = (
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  "M",
)


class VGG(nn.Module):
  FAMILY = "vgg"
  # torchvision's `classifier`; fc1's input size depends on the stem.
  HEAD_MODULES = ("fc1", "fc2", "fc3")
  CLASSIFIER = "fc3"
  SMALL_STEM_PARAMS = ("fc1",)

  num_classes: int
  small_stem: bool = False
  hidden: int = 4096
  dropout: float = 0.5
  dtype: Any = jnp.float32
  width: int = 64

  def setup(self):
    convs, norms = [], []
    for item in VGG16_LAYOUT:
      if item != "M":
        convs.append(conv(item * self.width // 64, 3, 1, 1, dtype=self.dtype, use_bias=True))
        norms.append(BatchNorm(dtype=self.dtype))
    self.convs, self.norms = convs, norms
    hidden = 512 if self.small_stem else self.hidden
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    self.fc1, self.fc2 = dense(hidden, "fc1"), dense(hidden, "fc2")
    self.fc3 = dense(self.num_classes, "fc3")
    self.drop = nn.Dropout(self.dropout)

  def features(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    layer, pools_seen = 0, 0
    # The last "M" belongs to the head.
    for item in VGG16_LAYOUT[:-1]:
      if item == "M":
        pools_seen += 1
        if not (self.small_stem and pools_seen <= 2):
          x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = self.norms[layer](self.convs[layer](x), use_running_average=not train)
      x = nn.relu(x)
      layer += 1
    return x

  def head(self, features, train: bool = False):
    x = nn.max_pool(features, (2, 2), strides=(2, 2))
    if self.small_stem:
      x = jnp.mean(x, axis=(1, 2))
    else:
      # NHWC -> NCHW before flattening keeps torchvision's weight layout for fc1.
      x = adaptive_avg_pool(x, 7).transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    x = self.drop(nn.relu(self.fc1(x)), deterministic=not train)
    x = self.drop(nn.relu(self.fc2(x)), deterministic=not train)
    return self.fc3(x).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train), train)

"""A three-layer CNN for tests and the offline default: seconds per epoch on a laptop CPU."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from proxy_jax.models.common import BatchNorm, classifier, conv, global_avg_pool


class TinyCNN(nn.Module):
  FAMILY = "tiny"
  HEAD_MODULES = ("fc",)
  CLASSIFIER = "fc"
  SMALL_STEM_PARAMS = ()

  num_classes: int
  width: int = 32
  dtype: Any = jnp.float32

  def setup(self):
    self.convs = [
      conv(self.width * 2**i, 3, 1 if i == 0 else 2, 1, dtype=self.dtype) for i in range(3)
    ]
    self.norms = [BatchNorm(dtype=self.dtype) for _ in range(3)]
    self.fc = classifier(self.num_classes, self.dtype)

  def features(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    for conv_layer, norm in zip(self.convs, self.norms):
      x = nn.relu(norm(conv_layer(x), use_running_average=not train))
    return x

  def head(self, features):
    return self.fc(global_avg_pool(features)).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train))

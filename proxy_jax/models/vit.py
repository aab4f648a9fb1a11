"""Vision Transformer (timm layout: fused qkv, pre-norm blocks, class token, learned positions).

For CAMs the model must be `head(features(x))` with a spatial `features`. We therefore classify
from the mean of the patch tokens (timm's `global_pool="avg"`, with `fc_norm` after pooling); the
class token still takes part in attention, as in timm, but is dropped from `features`, which are
the final patch tokens reshaped to `(B, h, w, C)`. This is exactly timm's
`VisionTransformer(global_pool="avg")`, so its weights convert one to one.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_LN_EPS = 1e-6


def _dense(n, dtype, name):
  return nn.Dense(n, dtype=dtype, param_dtype=jnp.float32, name=name)


def _layer_norm(name):
  # LayerNorm statistics in float32 whatever the compute dtype.
  return nn.LayerNorm(epsilon=_LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class Block(nn.Module):
  dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  def setup(self):
    self.norm1 = _layer_norm("norm1")
    self.qkv = _dense(3 * self.dim, self.dtype, "qkv")
    self.proj = _dense(self.dim, self.dtype, "proj")
    self.norm2 = _layer_norm("norm2")
    self.fc1 = _dense(int(self.dim * self.mlp_ratio), self.dtype, "fc1")
    self.fc2 = _dense(self.dim, self.dtype, "fc2")

  def attention(self, x):
    batch, tokens, _ = x.shape
    head_dim = self.dim // self.num_heads
    qkv = self.qkv(x.astype(self.dtype)).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, self.dim)
    return self.proj(out)

  def __call__(self, x):
    x = x + self.attention(self.norm1(x))
    # torch.nn.GELU defaults to the exact erf form.
    y = self.fc2(nn.gelu(self.fc1(self.norm2(x).astype(self.dtype)), approximate=False))
    return x + y


class ViT(nn.Module):
  FAMILY = "vit"
  HEAD_MODULES = ("fc_norm", "fc")
  CLASSIFIER = "fc"
  SMALL_STEM_PARAMS = ("patch_embed",)

  num_classes: int
  image_size: int
  patch_size: int = 16
  dim: int = 192
  depth: int = 12
  num_heads: int = 3
  dtype: Any = jnp.float32

  def setup(self):
    if self.image_size % self.patch_size:
      raise ValueError(
        f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
      )
    self.grid = self.image_size // self.patch_size
    self.patch_embed = nn.Conv(
      self.dim,
      (self.patch_size,) * 2,
      strides=(self.patch_size,) * 2,
      padding="VALID",
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="patch_embed",
    )
    init = nn.initializers.normal(0.02)
    self.cls_token = self.param("cls_token", init, (1, 1, self.dim))
    self.pos_embed = self.param("pos_embed", init, (1, 1 + self.grid**2, self.dim))
    self.blocks = [
      Block(self.dim, self.num_heads, dtype=self.dtype, name=f"blocks_{i}")
      for i in range(self.depth)
    ]
    self.fc_norm = _layer_norm("fc_norm")
    self.fc = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.zeros,
      name="fc",
    )

  def features(self, x, train: bool = False):
    del train  # No dropout or batch statistics.
    x = self.patch_embed(jnp.asarray(x, self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, self.dim).astype(jnp.float32)
    cls = jnp.broadcast_to(self.cls_token, (batch, 1, self.dim))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed
    for block in self.blocks:
      x = block(x)
    return x[:, 1:].reshape(batch, self.grid, self.grid, self.dim).astype(self.dtype)

  def head(self, features):
    pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
    return self.fc(self.fc_norm(pooled).astype(self.dtype)).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train))

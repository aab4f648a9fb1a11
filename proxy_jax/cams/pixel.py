"""Pixel-space attributions for ONE example: gradients of the target logit w.r.t. the input.

`logits_fn` maps one normalised image `(H, W, C)` to float32 logits `(num_classes,)`.
Attributions keep the input's shape; `to_map` turns them into an `(H, W)` map as Simonyan et
al. do for saliency: the maximum absolute value over colour channels.
"""

import jax
import jax.numpy as jnp

from proxy_jax.cams.chunking import map_chunked


def resolve_target(logits, target):
  """`target` if given, otherwise the predicted class."""
  return jnp.argmax(logits) if target is None else target


def input_gradient(logits_fn, image, target):
  return jax.grad(lambda x: logits_fn(x)[target])(image)


def to_map(attributions):
  return jnp.max(jnp.abs(attributions), axis=-1)


def vanilla_gradient(logits_fn, image, target):
  """Returns (input gradient, logits) with one forward and one backward pass."""
  logits, pullback = jax.vjp(logits_fn, jnp.asarray(image, jnp.float32))
  target = resolve_target(logits, target)
  (grad,) = pullback(jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype))
  return grad, logits


def noisy_gradients(
  logits_fn, image, target, key, noise_level: float, num_samples: int, inner_chunk_size: int | None
):
  """Input gradients at `num_samples` noisy copies -> (num_samples, H, W, C).

  Smilkov et al. 2017 express the noise as a fraction of the input's value range:
  sigma = noise_level * (max(x) - min(x)).
  """
  sigma = noise_level * (jnp.max(image) - jnp.min(image))

  def one_sample(sample_key):
    noise = jax.random.normal(sample_key, image.shape, jnp.float32)
    return input_gradient(logits_fn, image + sigma * noise, target)

  return map_chunked(one_sample, jax.random.split(key, num_samples), inner_chunk_size)


def gradient_statistic(grads, statistic: str):
  """SmoothGrad (mean), SmoothGrad-squared (mean of squares) or VarGrad (variance)."""
  if statistic == "smoothgrad":
    return jnp.mean(grads, axis=0)
  if statistic == "smoothgrad_sq":
    return jnp.mean(grads**2, axis=0)
  if statistic == "vargrad":
    return jnp.var(grads, axis=0)
  raise ValueError(f"unknown gradient statistic {statistic!r}")


def integrated_gradients(
  logits_fn, image, target, baseline, steps: int, inner_chunk_size: int | None
):
  """Sundararajan et al. 2017, midpoint Riemann sum -> signed (H, W, C) attributions.

  Completeness: the attributions sum to f(image) - f(baseline) up to the quadrature error,
  which the midpoint rule keeps small for a given number of steps.
  """
  image = jnp.asarray(image, jnp.float32)
  baseline = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), image.shape)
  difference = image - baseline
  alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps

  def path_gradient(alpha):
    return input_gradient(logits_fn, baseline + alpha * difference, target)

  grads = map_chunked(path_gradient, alphas, inner_chunk_size)
  return difference * jnp.mean(grads, axis=0)

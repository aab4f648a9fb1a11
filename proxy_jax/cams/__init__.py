"""CAM library: class activation maps and pixel attributions as one jitted, batched computation.

    maps = cams.compute("gradcampp", model.apply, variables, images)          # (B, H, W) in [0, 1]
    maps, logits = cams.compute("scorecam", model.apply, variables, images,
                                targets=labels, chunk_size=64, return_logits=True)

`apply_fn` is a Flax `model.apply`: the library calls `apply_fn(variables, x, method="features")`,
`apply_fn(variables, feats, method="head")` and `apply_fn(variables, x)` (see proxy_jax.models).
Each map is computed by a function of ONE example, lifted with `jax.vmap` and run in chunks under
`lax.map`; activation-map methods compute the features once and differentiate only the head, so a
Grad-CAM costs about one forward pass. No hooks, no host round-trips, no Python loop over images.

Options (all static except `key` and `baseline`):
  chunk_size (256)       most images one model call sees; bounds memory. Multi-pass methods
                         (Score-CAM, SmoothGrad family, IG) run chunk_size // inner_chunk_size
                         images at a time, each with inner_chunk_size copies.
  inner_chunk_size (32)  channels (Score-CAM), noisy samples or path steps per model call.
  smooth_sigma (0.0)     Gaussian blur of the upsampled map, in pixels; 0 = off.
  gradcampp_eps (0.0)    added to Grad-CAM++'s alpha denominator; 0 = the paper, 1e-6 =
                         pytorch-grad-cam's GradCAMPlusPlus.
  noise_level (0.15)     SmoothGrad/VarGrad noise std as a fraction of the image's value range.
  num_samples (16)       SmoothGrad/VarGrad samples.
  key                    PRNG key, required by smoothgrad/smoothgrad_sq/vargrad when noise > 0.
  baseline (0.0)         Integrated Gradients baseline: scalar, (H, W, C) or (B, H, W, C).
  steps (32)             Integrated Gradients steps (midpoint rule).
  return_logits (False)  also return the float32 logits (B, num_classes) of the clean images.
  rectify (True)         ReLU and min-max the map to [0, 1]; False returns the raw signed map,
                         only upsampled (and smoothed): SnapMix's reference shifts and scales
                         the raw class map itself.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from proxy_jax.cams import formulas, pixel, postprocess
from proxy_jax.cams.chunking import map_chunked
from proxy_jax.cams.formulas import ACTIVATION_FORMULAS, GRADIENT_FREE
from proxy_jax.cams.render import colorize, overlay, write_grid

NOISY_METHODS = ("smoothgrad", "smoothgrad_sq", "vargrad")
PIXEL_METHODS = ("saliency", *NOISY_METHODS, "integrated_gradients")
METHODS = (*ACTIVATION_FORMULAS, "scorecam", *PIXEL_METHODS)
# Methods that push several copies of each image through the model.
MULTI_PASS = frozenset({"scorecam", *NOISY_METHODS, "integrated_gradients"})

__all__ = [
  "METHODS",
  "Settings",
  "compute",
  "integrated_gradients",
  "colorize",
  "overlay",
  "write_grid",
  "formulas",
  "postprocess",
]


@dataclasses.dataclass(frozen=True)
class Settings:
  """The static options of `compute` (hashable, so they can key the jit cache)."""

  chunk_size: int = 256
  inner_chunk_size: int = 32
  smooth_sigma: float = 0.0
  gradcampp_eps: float = 0.0
  noise_level: float = 0.15
  num_samples: int = 16
  steps: int = 32
  return_logits: bool = False
  rectify: bool = True

  def __post_init__(self):
    for name in ("chunk_size", "inner_chunk_size", "num_samples", "steps"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"cams option {name} must be >= 1, got {getattr(self, name)}")
    if self.smooth_sigma < 0 or self.noise_level < 0 or self.gradcampp_eps < 0:
      raise ValueError("cams options smooth_sigma, noise_level and gradcampp_eps must be >= 0")

  def images_per_chunk(self, method: str) -> int:
    if method in MULTI_PASS:
      return max(1, self.chunk_size // self.inner_chunk_size)
    return self.chunk_size


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Settings)) | {"key", "baseline"}


def check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"unknown CAM method {method!r}; valid methods: {', '.join(METHODS)}")


def _per_image_targets(targets, batch: int):
  if targets is None:
    return None
  return jnp.broadcast_to(jnp.asarray(targets, jnp.int32), (batch,))


def compute(method: str, apply_fn, variables, images, targets=None, **options):
  """Maps for `method` -> float32 (B, H, W) in [0, 1] (and logits if `return_logits`).

  `images`: normalised NHWC float. `targets`: None = predicted class, else int per image (or
  one int for all). Usable inside `jax.jit` with `method`, `apply_fn` and options static.
  """
  check_method(method)
  unknown = set(options) - _OPTION_NAMES
  if unknown:
    raise ValueError(f"unknown cams options {sorted(unknown)}; valid: {sorted(_OPTION_NAMES)}")
  key = options.pop("key", None)
  baseline = options.pop("baseline", 0.0)
  settings = Settings(**options)
  if key is None:
    if method in NOISY_METHODS and settings.noise_level > 0:
      raise ValueError(
        f"{method} draws noise: pass an explicit PRNG key, e.g. key=jax.random.key(0)"
      )
    key = jax.random.key(0)  # Never drawn from: the noise is zero or unused.
  images = jnp.asarray(images, jnp.float32)
  targets = _per_image_targets(targets, images.shape[0])
  return _compute_jitted(
    variables, images, targets, key, baseline, method=method, apply_fn=apply_fn, settings=settings
  )


@functools.partial(jax.jit, static_argnames=("method", "apply_fn", "settings"))
def _compute_jitted(variables, images, targets, key, baseline, *, method, apply_fn, settings):
  inputs = {"image": images, "target": targets}
  if method in NOISY_METHODS:
    inputs["key"] = jax.random.split(key, images.shape[0])
  if method == "integrated_gradients":
    inputs["baseline"] = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), images.shape)
  one_example = functools.partial(_one_example, method, apply_fn, variables, settings)
  maps, logits = map_chunked(one_example, inputs, settings.images_per_chunk(method))
  return (maps, logits) if settings.return_logits else maps


def _logits_fn(apply_fn, variables):
  """One normalised image (H, W, C) -> float32 logits (num_classes,)."""
  return lambda image: apply_fn(variables, image[None])[0]


def _one_example(method, apply_fn, variables, settings, inputs):
  """The whole computation for one image -> ((H, W) map in [0, 1], logits)."""
  image, target = inputs["image"], inputs["target"]
  if method in ACTIVATION_FORMULAS:
    raw, logits = _activation_map(method, apply_fn, variables, image, target, settings)
  elif method == "scorecam":
    raw, logits = _score_cam(apply_fn, variables, image, target, settings.inner_chunk_size)
  else:
    raw, logits = _pixel_map(method, apply_fn, variables, settings, inputs)
  return postprocess.finish(raw, image.shape[:2], settings.smooth_sigma, settings.rectify), logits


def _features_and_head(apply_fn, variables, image):
  """Features of one image (computed once) and the head as a function of float32 features."""
  features = apply_fn(variables, image[None], method="features")[0]

  def head(acts):
    return apply_fn(variables, acts.astype(features.dtype)[None], method="head")[0]

  return features.astype(jnp.float32), head


def _activation_map(method, apply_fn, variables, image, target, settings):
  acts, head = _features_and_head(apply_fn, variables, image)
  formula = ACTIVATION_FORMULAS[method]
  if method == "gradcampp":
    formula = functools.partial(formula, eps=settings.gradcampp_eps)
  if method in GRADIENT_FREE:
    return formula(acts, None), head(acts)
  # The gradient flows through the head only: the backbone is never differentiated.
  logits, pullback = jax.vjp(head, acts)
  target = pixel.resolve_target(logits, target)
  (grads,) = pullback(jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype))
  return formula(acts, grads), logits


def _score_cam(apply_fn, variables, image, target, inner_chunk_size):
  """Wang et al. 2020 (official implementation): weight_k = softmax(f(x * norm(up(A_k))))_c.

  Channels are scored `inner_chunk_size` at a time; constant channels get weight 0. The map is
  sum_k weight_k up(A_k), formed here as sum_k weight_k A_k since bilinear upsampling is linear.
  """
  acts, head = _features_and_head(apply_fn, variables, image)
  logits = head(acts)
  target = pixel.resolve_target(logits, target)
  logits_fn = _logits_fn(apply_fn, variables)

  def channel_score(channel):
    mask = postprocess.upsample(channel, image.shape[:2])
    low, high = jnp.min(mask), jnp.max(mask)
    informative = postprocess.varies(low, high)
    mask = (mask - low) / jnp.where(informative, high - low, 1.0)
    probs = jax.nn.softmax(logits_fn(image * mask[..., None]))
    return jnp.where(informative, probs[target], 0.0)

  scores = map_chunked(channel_score, jnp.moveaxis(acts, -1, 0), inner_chunk_size)
  return formulas.weighted_sum(acts, scores), logits


def _pixel_map(method, apply_fn, variables, settings, inputs):
  image, target = inputs["image"], inputs["target"]
  logits_fn = _logits_fn(apply_fn, variables)
  if method == "saliency":
    grad, logits = pixel.vanilla_gradient(logits_fn, image, target)
    return pixel.to_map(grad), logits
  logits = logits_fn(image)
  target = pixel.resolve_target(logits, target)
  if method == "integrated_gradients":
    attributions = pixel.integrated_gradients(
      logits_fn, image, target, inputs["baseline"], settings.steps, settings.inner_chunk_size
    )
    return pixel.to_map(attributions), logits
  grads = pixel.noisy_gradients(
    logits_fn,
    image,
    target,
    inputs["key"],
    settings.noise_level,
    settings.num_samples,
    settings.inner_chunk_size,
  )
  return pixel.to_map(pixel.gradient_statistic(grads, method)), logits


def integrated_gradients(
  apply_fn,
  variables,
  images,
  targets=None,
  *,
  baseline=0.0,
  steps: int = 64,
  chunk_size: int = 256,
  inner_chunk_size: int = 32,
):
  """Raw Integrated Gradients: signed float32 (B, H, W, C), unnormalised.

  Completeness: `attributions[i].sum() ~= f(images[i])[t_i] - f(baseline)[t_i]`.
  """
  settings = Settings(chunk_size=chunk_size, inner_chunk_size=inner_chunk_size, steps=steps)
  images = jnp.asarray(images, jnp.float32)
  targets = _per_image_targets(targets, images.shape[0])
  return _integrated_gradients_jitted(
    variables, images, targets, baseline, apply_fn=apply_fn, settings=settings
  )


@functools.partial(jax.jit, static_argnames=("apply_fn", "settings"))
def _integrated_gradients_jitted(variables, images, targets, baseline, *, apply_fn, settings):
  logits_fn = _logits_fn(apply_fn, variables)

  def one_example(inputs):
    target = pixel.resolve_target(logits_fn(inputs["image"]), inputs["target"])
    return pixel.integrated_gradients(
      logits_fn,
      inputs["image"],
      target,
      inputs["baseline"],
      settings.steps,
      settings.inner_chunk_size,
    )

  inputs = {
    "image": images,
    "target": targets,
    "baseline": jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), images.shape),
  }
  return map_chunked(one_example, inputs, settings.images_per_chunk("integrated_gradients"))

"""Saliency maps for the guided augmentations, each (B, H, W) float32 in [0, 1], all in-jit.

  * `fine_grained`: OpenCV's StaticSaliencyFineGrained (Montabone & Soto 2010), the map the
    SaliencyMix reference computes, integer for integer (`fine_grained.py`): an image
    statistic, no model. SaliencyMix's default (`saliencymix_map="fine_grained"`).
  * `spectral_residual`: Hou & Zhang 2007 static saliency, as OpenCV's
    StaticSaliencySpectralResidual computes it; an alternative image statistic for SaliencyMix
    (`saliencymix_map="spectral_residual"`, this library's map before it followed the
    reference).
  * `cam`: a CAM of the label class from `proxy_jax.cams` (Grad-CAM by default: features once,
    only the head differentiated), for Attentive CutMix and SnapMix, of the model being trained
    or of a frozen one (built by the run layer, `proxy_jax.run.restore`, and passed in).
  * `gradient`: vanilla-gradient saliency (max over channels of |d logit_y / d input|) of the
    current model, through `proxy_jax.cams`' "saliency" method, for KeepAugment.

Model maps never carry a gradient into the training loss (`jax.lax.stop_gradient`) and use the
model in inference mode (running batch statistics, no dropout).
"""

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import cams, models
from proxy_jax.images import preprocess
from proxy_jax.augment import fine_grained as fine_grained_lib
from proxy_jax.augment import mix

# ITU-R BT.601 luma, OpenCV's RGB -> grey weights.
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# OpenCV's StaticSaliencySpectralResidual works on a 64 x 64 thumbnail.
SPECTRAL_SIZE = 64
# OpenCV blurs the log amplitude with a 3x3 box and the result with a 5x5 Gaussian, sigma 8.
BOX_SIZE = 3
GAUSSIAN_SIZE, GAUSSIAN_SIGMA = 5, 8.0
# Floor for the amplitude before its log: a zero frequency must not become -inf.
AMPLITUDE_FLOOR = 1e-12
CURRENT = "current"
# SaliencyMix's map: the reference's OpenCV method, or spectral residual.
IMAGE_MAPS = mix.IMAGE_MAPS


def _resize_bilinear(maps, height: int, width: int):
  """(B, h, w) -> (B, height, width), half-pixel centres, no antialiasing (cv2 INTER_LINEAR)."""
  return jax.image.resize(maps, (maps.shape[0], height, width), "bilinear", antialias=False)


def _filter_reflect101(maps, kernel_1d):
  """Separable filter of (B, h, w) maps with OpenCV's BORDER_DEFAULT (reflect without the edge)."""
  radius = len(kernel_1d) // 2
  padded = jnp.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
  height, width = maps.shape[1:]
  rows = sum(float(w) * padded[:, i : i + height, :] for i, w in enumerate(kernel_1d))
  return sum(float(w) * rows[:, :, i : i + width] for i, w in enumerate(kernel_1d))


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
  """OpenCV's getGaussianKernel for an explicit sigma."""
  offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
  return weights / weights.sum()


def spectral_residual(images):
  """Spectral-residual saliency of (B, H, W, 3) images in [0, 1] -> (B, H, W) in [0, 1].

  Grey, 64 x 64 thumbnail, log amplitude spectrum minus its 3x3 box-filtered self, back through
  the inverse FFT with the original phase, magnitude, 5x5 Gaussian (sigma 8), squared, divided by
  its maximum, resized to the image. That is OpenCV's order (blur, then square); Hou & Zhang
  write the square first; the peak, which SaliencyMix uses, rarely moves. The map does not
  depend on the image's scale, so [0, 1] or [0, 255] inputs agree.
  """
  _, height, width, _ = images.shape
  grey = jnp.einsum("bhwc,c->bhw", images.astype(jnp.float32), GREY_WEIGHTS)
  thumbnail = _resize_bilinear(grey, SPECTRAL_SIZE, SPECTRAL_SIZE)
  spectrum = jnp.fft.fft2(thumbnail)
  log_amplitude = jnp.log(jnp.maximum(jnp.abs(spectrum), AMPLITUDE_FLOOR))
  box = np.full(BOX_SIZE, 1.0 / BOX_SIZE)
  residual = log_amplitude - _filter_reflect101(log_amplitude, box)
  phase = jnp.angle(spectrum)
  back = jnp.fft.ifft2(jnp.exp(residual) * jnp.exp(1j * phase))
  blurred = _filter_reflect101(jnp.abs(back), gaussian_kernel(GAUSSIAN_SIZE, GAUSSIAN_SIGMA))
  saliency = blurred**2
  saliency = saliency / jnp.maximum(jnp.max(saliency, axis=(1, 2), keepdims=True), 1e-30)
  return _resize_bilinear(saliency.astype(jnp.float32), height, width)


def fine_grained(images):
  """OpenCV StaticSaliencyFineGrained of (B, H, W, 3) images in [0, 1] -> (B, H, W) in [0, 1]."""
  return fine_grained_lib.fine_grained(images)


def image_map(name: str, images):
  """The image-statistic map `name` (one of IMAGE_MAPS) of (B, H, W, 3) images in [0, 1]."""
  if name == "fine_grained":
    return fine_grained(images)
  if name == "spectral_residual":
    return spectral_residual(images)
  raise ValueError(f"unknown image saliency map {name!r}: choose one of {', '.join(IMAGE_MAPS)}")


# ---------------------------------------------------------------- maps from a model


@dataclasses.dataclass(frozen=True)
class SaliencyModel:
  """Where a model's map comes from: the apply function (static) and its variables (traced)."""

  apply_fn: Callable
  variables: Any


def current_model(state) -> SaliencyModel:
  """The model being trained, frozen for this step: running statistics, no gradient."""
  return SaliencyModel(state.apply_fn, jax.lax.stop_gradient(models.variables_of(state)))


def cam(model: SaliencyModel, images, labels, method: str = "gradcam", rectify: bool = True):
  """CAM of each image's label class. images: [0, 1] (B, H, W, C); labels: int (B,).

  In [0, 1] (ReLU, min-max), or with `rectify=False` the raw signed map, upsampled.
  """
  inputs = preprocess.normalize(images)
  maps = cams.compute(
    method,
    model.apply_fn,
    model.variables,
    inputs,
    targets=labels,
    chunk_size=images.shape[0],
    rectify=rectify,
  )
  return jax.lax.stop_gradient(maps)


def gradient(model: SaliencyModel, images, labels):
  """Vanilla-gradient saliency (Simonyan et al.) of each image's label class, in [0, 1]."""
  inputs = preprocess.normalize(images)
  maps = cams.compute(
    "saliency", model.apply_fn, model.variables, inputs, targets=labels, chunk_size=images.shape[0]
  )
  return jax.lax.stop_gradient(maps)


# ---------------------------------------------------------------- a frozen model


def is_trained_workdir(source: str) -> bool:
  """Whether `source` looks like a trained workdir (config.json and checkpoints/), not weights."""
  return os.path.isfile(os.path.join(source, "config.json")) and os.path.isdir(
    os.path.join(source, "checkpoints")
  )

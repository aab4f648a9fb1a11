"""Pure JAX preprocessing: exact inverse normalisation, ImageNet statistics."""

import numpy as np

from proxy_jax.images import preprocess


def _images(shape=(3, 12, 12, 3), seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_denormalize_inverts_normalize():
  images = _images()
  np.testing.assert_allclose(
    preprocess.denormalize(preprocess.normalize(images)), images, atol=1e-6
  )


def test_normalize_uses_imagenet_statistics():
  grey = np.full((1, 2, 2, 3), 0.5, np.float32)
  expected = (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(preprocess.normalize(grey)[0, 0, 0], expected, rtol=1e-6)

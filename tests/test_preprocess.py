"""Pure JAX preprocessing: exact inverse normalisation, deterministic augmentation."""

import jax
import numpy as np

from proxy_jax import preprocess


def _images(shape=(3, 12, 12, 3), seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_denormalize_inverts_normalize():
  images = _images()
  np.testing.assert_allclose(preprocess.denormalize(preprocess.normalize(images)), images,
                             atol=1e-6)


def test_normalize_uses_imagenet_statistics():
  grey = np.full((1, 2, 2, 3), 0.5, np.float32)
  expected = (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(preprocess.normalize(grey)[0, 0, 0], expected, rtol=1e-6)


def test_rotation_by_quarter_turn_is_rot90():
  image = _images((8, 8, 3))
  rotated = preprocess.rotate(image, np.pi / 2)
  np.testing.assert_allclose(rotated, np.rot90(image, k=1, axes=(0, 1)), atol=1e-5)


def test_no_augmentation_is_identity():
  images = _images()
  out = preprocess.augment(images, jax.random.key(0), flip=False, rotation_degrees=0.0)
  np.testing.assert_array_equal(out, images)


def test_flip_gives_original_or_mirror_per_image():
  images = _images((16, 6, 6, 3))
  out = np.asarray(preprocess.augment(images, jax.random.key(3), flip=True,
                                      rotation_degrees=0.0))
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  same = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(f or s for f, s in zip(flipped, same))
  assert any(flipped) and any(same)


def test_augmentation_is_a_function_of_the_key():
  images = _images()
  first = preprocess.augment(images, jax.random.key(5), True, 20.0)
  again = preprocess.augment(images, jax.random.key(5), True, 20.0)
  other = preprocess.augment(images, jax.random.key(6), True, 20.0)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert first.shape == images.shape and first.dtype == np.float32
  assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0

"""KeepAugment's selective-cut Cutout against a NumPy transcription of its redraw loop."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import augment
from proxy_jax.augment import erase, keep
from tests.augment_checks import assert_label_preserving
from tests.conftest import make_tiny_config

H = W = 12


def _reference_box(saliency, centres_y, centres_x, side, threshold):
  """The paper's loop, bounded: try each drawn centre in turn, keep the first box whose mean
  saliency is below the threshold; if none is, the least salient one."""
  means, boxes = [], []
  for cy, cx in zip(centres_y, centres_x):
    top, left = cy - side // 2, cx - side // 2
    box = (max(top, 0), max(left, 0), min(top + side, H), min(left + side, W))
    mean = saliency[box[0] : box[2], box[1] : box[3]].mean()
    if mean < threshold:
      return box
    means.append(mean)
    boxes.append(box)
  return boxes[int(np.argmin(means))]


@pytest.mark.parametrize("threshold", [0.6, 0.05])
def test_selective_cut_matches_the_redraw_loop(threshold):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(6, H, W, 3)), jnp.float32)
  yy, xx = np.mgrid[0:H, 0:W]
  # A salient blob per image, elsewhere low: most draws that hit the blob must be redrawn.
  saliency = np.stack(
    [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0) for cy, cx in rng.integers(2, 10, (6, 2))]
  ).astype(np.float32)
  key = jax.random.key(4)
  tries = 5
  fn = jax.jit(
    lambda im, k, s: keep.selective_cutout(
      im, None, k, s, size=0.5, prob=1.0, fill="zero", threshold=threshold, tries=tries
    )[0]
  )
  out = np.asarray(fn(images, key, jnp.asarray(saliency)))
  _, draw_key, _ = jax.random.split(key, 3)
  y_key, x_key = jax.random.split(draw_key)
  centres_y = np.asarray(jax.random.randint(y_key, (6, tries), 0, H))
  centres_x = np.asarray(jax.random.randint(x_key, (6, tries), 0, W))
  cut_means = []
  for i in range(6):
    t, left, b, r = _reference_box(saliency[i], centres_y[i], centres_x[i], 6, threshold)
    expected = np.asarray(images[i]).copy()
    expected[t:b, left:r] = 0.0
    np.testing.assert_array_equal(out[i], expected)
    cut_means.append(saliency[i][t:b, left:r].mean())
  if threshold == 0.6:
    assert max(cut_means) < 0.6


def test_selective_cut_is_the_default_with_cutout_and_paste_back_an_option():
  config = make_tiny_config(**{"augment.erase": "cutout", "augment.keep_salient": True})
  assert augment.selective_cut_from_settings(config.augment) is not None
  config.augment.keep_cutout = "paste_back"
  assert augment.selective_cut_from_settings(config.augment) is None


@pytest.mark.slow
@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 2), image_seed=st.integers(0, 100), fill=st.sampled_from(erase.FILLS)
)
def test_selective_cut_invariants(seed, image_seed, fill):
  """Label-preserving (labels kept, range, determinism), and one box of fill per image."""
  rng = np.random.default_rng(image_seed)
  images = jnp.asarray(rng.uniform(size=(4, H, W, 3)), jnp.float32)
  labels = jax.nn.one_hot(jnp.arange(4) % 3, 3)
  saliency = jnp.asarray(rng.uniform(size=(4, H, W)), jnp.float32)
  fn = lambda im, lab, k: keep.selective_cutout(  # pylint: disable=unnecessary-lambda-assignment
    im, lab, k, saliency, size=0.5, prob=1.0, fill=fill, threshold=0.5, tries=4
  )
  assert_label_preserving(fn, images, labels, seed)
  out, _ = fn(images, labels, jax.random.key(seed))
  changed = np.any(np.asarray(out) != np.asarray(images), axis=-1)
  for mask in changed:  # The changed pixels lie inside one box of side at most 6.
    rows, cols = np.nonzero(mask)
    if rows.size:
      assert rows.max() - rows.min() < 6 and cols.max() - cols.min() < 6

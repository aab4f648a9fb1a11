"""Image ops against PIL / NumPy, policies replayed op by op from their draws, the JSD loss
against a NumPy transcription of the AugMix reference, invariants and config checks."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageEnhance, ImageOps

from configs import default
from tests.augment_checks import assert_label_preserving
from proxy_jax.augment import ops, policy

LEVEL = 1 / 255


def _uint8_image(seed, shape=(16, 16, 3), low=0, high=256):
  return np.random.default_rng(seed).integers(low, high, shape).astype(np.uint8)


def _unit(uint8_image):
  return jnp.asarray(uint8_image, jnp.float32) / 255.0


def _pil(op, uint8_image, *args):
  return np.asarray(op(Image.fromarray(uint8_image), *args), np.float32) / 255.0


@pytest.mark.parametrize("low,high", [(0, 256), (40, 90), (100, 101), (0, 2)])
def test_equalize_equals_pil(low, high):
  image = _uint8_image(1, low=low, high=high)  # full range, narrow, constant, two levels
  np.testing.assert_allclose(ops.equalize(_unit(image)), _pil(ImageOps.equalize, image), atol=1e-6)


def test_equalize_batched_equals_per_image():
  batch = jnp.stack([_unit(_uint8_image(seed, low=seed * 20, high=200)) for seed in range(3)])
  np.testing.assert_array_equal(
    jax.vmap(ops.equalize)(batch), jnp.stack([ops.equalize(image) for image in batch])
  )


@pytest.mark.parametrize("low,high", [(0, 256), (30, 120), (77, 78)])
def test_autocontrast_within_one_level_of_pil(low, high):
  # PIL truncates its uint8 lookup table; the op stretches the continuous values.
  image = _uint8_image(2, low=low, high=high)
  np.testing.assert_allclose(
    ops.autocontrast(_unit(image)), _pil(ImageOps.autocontrast, image), atol=LEVEL + 1e-6
  )


@pytest.mark.parametrize("bits", range(1, 9))
def test_posterize_equals_pil(bits):
  image = _uint8_image(3)
  np.testing.assert_allclose(
    ops.posterize(_unit(image), bits), _pil(ImageOps.posterize, image, bits), atol=1e-6
  )


@pytest.mark.parametrize("threshold", [0, 64, 128, 200, 256])
def test_solarize_and_invert_equal_pil(threshold):
  image = _uint8_image(4)
  np.testing.assert_allclose(
    ops.solarize(_unit(image), threshold / 255.0),
    _pil(ImageOps.solarize, image, threshold),
    atol=1e-6,
  )
  np.testing.assert_allclose(ops.invert(_unit(image)), _pil(ImageOps.invert, image), atol=1e-6)


@pytest.mark.parametrize("name", ["Brightness", "Color", "Contrast", "Sharpness"])
@pytest.mark.parametrize("factor", [0.0, 0.4, 1.0, 1.9])
def test_enhance_ops_within_one_level_of_pil(name, factor):
  # PIL rounds its degenerate image (luma, mean, SMOOTH filter) and the blend to uint8.
  image = _uint8_image(5)
  expected = (
    np.asarray(getattr(ImageEnhance, name)(Image.fromarray(image)).enhance(factor), np.float32)
    / 255.0
  )
  got = getattr(ops, name.lower())(_unit(image), factor)
  np.testing.assert_allclose(got, expected, atol=1.5 * LEVEL)


def test_quarter_turns_are_exact_and_counter_clockwise():
  image = _unit(_uint8_image(6, shape=(7, 7, 3)))
  for turns in (1, 2, 3):
    np.testing.assert_array_equal(ops.rotate(image, 90.0 * turns), np.rot90(image, turns))


def _scipy_warp(image, inverse_yx, offset_yx):
  """Reference resampling: scipy's output -> input map, bilinear, black outside."""
  matrix = np.eye(3)
  matrix[:2, :2] = inverse_yx
  offset = np.array([*offset_yx, 0.0])
  return scipy.ndimage.affine_transform(
    np.asarray(image, np.float64), matrix, offset, order=1, mode="constant", cval=0.0
  )


def test_rotate_and_shear_match_scipy_resampling():
  image = _unit(_uint8_image(7, shape=(9, 11, 3)))
  angle = np.deg2rad(23.0)
  inverse = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
  centre = np.array([4.0, 5.0])
  # Interior pixels only: the two libraries treat samples within a pixel of the edge differently.
  inner = (slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(
    ops.rotate(image, 23.0)[inner],
    _scipy_warp(image, inverse, centre - inverse @ centre)[inner],
    atol=1e-4,
  )
  np.testing.assert_allclose(
    ops.shear_x(image, 0.25)[inner],
    _scipy_warp(image, [[1, 0], [0.25, 1]], [0, 0])[inner],
    atol=1e-4,
  )
  np.testing.assert_allclose(
    ops.shear_y(image, -0.3)[inner],
    _scipy_warp(image, [[1, -0.3], [0, 1]], [0, 0])[inner],
    atol=1e-4,
  )


def test_integer_shear_and_translate_equal_numpy_indexing():
  image = np.asarray(_unit(_uint8_image(8, shape=(6, 8, 3))))
  sheared, shifted_right, shifted_up = (np.zeros_like(image) for _ in range(3))
  for y in range(6):
    for x in range(8):
      if x + y < 8:
        sheared[y, x] = image[y, x + y]  # shear 1: row y samples y pixels to its right
      if x >= 3:
        shifted_right[y, x] = image[y, x - 3]
      if y + 2 < 6:
        shifted_up[y, x] = image[y + 2, x]
  np.testing.assert_array_equal(ops.shear_x(jnp.asarray(image), 1.0), sheared)
  np.testing.assert_array_equal(ops.translate_x(jnp.asarray(image), 3.0), shifted_right)
  np.testing.assert_array_equal(ops.translate_y(jnp.asarray(image), -2.0), shifted_up)


def test_magnitude_tables_are_torchvisions():
  names = [name for name, _, _ in policy.RANDAUGMENT_OPS]
  table = dict(zip(names, policy.magnitude_table(40, 30, wide=False)))
  np.testing.assert_allclose(
    [table[n][9] for n in ("shear_x", "rotate", "brightness", "solarize")],
    [0.09, 9.0, 0.27, 0.7],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    [table["translate_x"][30], table["translate_y"][30]],
    [150 / 331 * 30, 150 / 331 * 40],
    rtol=1e-6,
  )
  assert list(table["posterize"][[0, 3, 4, 30]]) == [8, 8, 7, 4]
  wide = dict(zip(names, policy.magnitude_table(40, 30, wide=True)))
  np.testing.assert_allclose(
    [
      wide[n][30] for n in ("shear_y", "translate_x", "rotate", "contrast", "posterize", "solarize")
    ],
    [0.99, 32.0, 135.0, 0.99, 2.0, 0.0],
    rtol=1e-6,
  )
  assert not any(table["identity"]) and not any(wide["equalize"])


# The test's own wiring of names to ops (torchvision's _apply_op), independent of the module's.
_REFERENCE_OPS = {
  "identity": lambda im, v: im,
  "shear_x": ops.shear_x,
  "shear_y": ops.shear_y,
  "translate_x": ops.translate_x,
  "translate_y": ops.translate_y,
  "rotate": ops.rotate,
  "brightness": lambda im, v: ops.brightness(im, 1 + v),
  "color": lambda im, v: ops.color(im, 1 + v),
  "contrast": lambda im, v: ops.contrast(im, 1 + v),
  "sharpness": lambda im, v: ops.sharpness(im, 1 + v),
  "posterize": lambda im, v: ops.posterize(im, int(v)),
  "solarize": ops.solarize,
  "autocontrast": lambda im, v: ops.autocontrast(im),
  "equalize": lambda im, v: ops.equalize(im),
}
_SIGNED = {
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
  "rotate",
  "brightness",
  "color",
  "contrast",
  "sharpness",
}
SHAPE = (4, 16, 16, 3)


@functools.lru_cache(maxsize=None)
def _jitted(name):
  """One compile per policy for the whole file (fixed shape), reused by every test."""
  params = {
    "randaugment": dict(num_ops=2, magnitude=9),
    "augmix": dict(width=3, depth=-1, severity=3, alpha=1.0),
  }.get(name, {})
  return jax.jit(functools.partial(policy.POLICIES[name], **params))


def _batch(seed=0, shape=SHAPE):
  return jax.random.uniform(jax.random.key(seed), shape), jax.nn.one_hot(jnp.arange(shape[0]), 4)


def _replay(images, draw, wide):
  """Applies each image's drawn ops one at a time, magnitudes rebuilt from the table."""
  names = [name for name, _, _ in policy.RANDAUGMENT_OPS]
  table = policy.magnitude_table(images.shape[1], images.shape[2], wide=wide)
  out = []
  for b, image in enumerate(images):
    for slot, op_index in enumerate(np.asarray(draw["ops"][b])):
      name, value = names[op_index], float(draw["values"][b, slot])
      assert abs(value) == pytest.approx(float(table[op_index, int(draw["bins"][b, slot])]))
      assert value >= 0 or name in _SIGNED
      image = _REFERENCE_OPS[name](image, value)
    out.append(image)
  return np.stack(out)


def test_randaugment_replays_op_by_op():
  images, labels = _batch(1)
  key = jax.random.key(21)
  out, out_labels = _jitted("randaugment")(images, labels, key)
  draw = policy._draw_randaugment(key, SHAPE, num_ops=2, magnitude=9)
  np.testing.assert_allclose(out, _replay(images, draw, False), atol=1e-5)
  np.testing.assert_array_equal(out_labels, labels)


@pytest.mark.parametrize("shape", [SHAPE, (1, 8, 8, 3)])
def test_trivialaugment_replays_op_by_op(shape):
  images, labels = _batch(2, shape)
  key = jax.random.key(22)
  out = (_jitted("trivialaugment") if shape == SHAPE else policy.trivialaugment)(
    images, labels, key
  )[0]
  draw = policy._draw_trivialaugment(key, shape)
  assert np.all((np.asarray(draw["bins"]) >= 0) & (np.asarray(draw["bins"]) <= 30))
  np.testing.assert_allclose(out, _replay(images, draw, True), atol=1e-5)


def _augmix_reference_op(name, image, level, negate):
  """The AugMix reference's augmentations.py at `level`, written out per op."""
  sign = -1 if negate else 1
  height, width = image.shape[:2]
  return {
    "autocontrast": lambda: ops.autocontrast(image),
    "equalize": lambda: ops.equalize(image),
    "posterize": lambda: ops.posterize(image, 4 - int(level * 4 / 10)),
    "rotate": lambda: ops.rotate(image, sign * int(level * 30 / 10)),
    "solarize": lambda: ops.solarize(image, (256 - int(level * 256 / 10)) / 255),
    "shear_x": lambda: ops.shear_x(image, sign * level * 0.3 / 10),
    "shear_y": lambda: ops.shear_y(image, sign * level * 0.3 / 10),
    "translate_x": lambda: ops.translate_x(image, sign * int(level * width / 3 / 10)),
    "translate_y": lambda: ops.translate_y(image, sign * int(level * height / 3 / 10)),
  }[name]()


@pytest.mark.slow
def test_augmix_matches_reference_mixing():
  images, labels = _batch(3)
  key = jax.random.key(23)
  out, out_labels = _jitted("augmix")(images, labels, key)
  draw = jax.tree.map(
    np.asarray, policy._draw_augmix(key, SHAPE, width=3, depth=-1, severity=3, alpha=1.0)
  )
  np.testing.assert_allclose(draw["chain_weights"].sum(axis=1), 1.0, rtol=1e-5)
  assert np.all((draw["depths"] >= 1) & (draw["depths"] <= 3))
  assert np.all((draw["levels"] >= 0.1) & (draw["levels"] <= 3))
  names = [name for name, _ in policy.AUGMIX_OPS]
  for b in range(SHAPE[0]):
    mixed = np.zeros(SHAPE[1:])
    for chain in range(3):
      augmented = images[b]
      for step in range(draw["depths"][b, chain]):
        augmented = _augmix_reference_op(
          names[draw["ops"][b, chain, step]],
          augmented,
          float(draw["levels"][b, chain, step]),
          bool(draw["negate"][b, chain, step]),
        )
      mixed += draw["chain_weights"][b, chain] * np.asarray(augmented, np.float64)
    m = draw["mix_weight"][b]
    np.testing.assert_allclose(out[b], (1 - m) * np.asarray(images[b]) + m * mixed, atol=1e-5)
  np.testing.assert_array_equal(out_labels, labels)


@pytest.mark.slow
def test_augmix_jsd_views_are_two_independent_augmix_draws():
  images, _ = _batch(4, (2,) + SHAPE[1:])
  key = jax.random.key(5)
  first, second = policy.augmix_jsd_views(images, key, width=3, depth=-1, severity=3, alpha=1.0)
  # Rows of one AugMix call on the batch stacked twice (reuses the compiled SHAPE graph).
  expected = _jitted("augmix")(jnp.concatenate([images, images]), None, key)[0]
  np.testing.assert_allclose(first, expected[:2], atol=1e-6)
  np.testing.assert_allclose(second, expected[2:], atol=1e-6)
  assert not np.allclose(first, second)


def _numpy_jsd(*logits):
  """AugMix reference (PyTorch): 12 * (kl_div(log M, p_i) batchmean) / 3, without the 12."""
  probs = [np.exp(x - x.max(1, keepdims=True)) for x in map(np.float64, logits)]
  probs = [p / p.sum(1, keepdims=True) for p in probs]
  log_m = np.log(np.clip(sum(probs) / 3, 1e-7, 1))
  kls = [
    np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0) - p * log_m) / len(p)
    for p in probs
  ]
  return sum(kls) / 3


def test_jensen_shannon_consistency_equals_numpy_reference():
  rng = np.random.default_rng(0)
  logits = [rng.normal(0, 3, (6, 10)).astype(np.float32) for _ in range(3)]
  logits[2][0] = [80.0] + [-80.0] * 9  # a saturated row: probabilities that underflow
  got = policy.jensen_shannon_consistency(*logits)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _numpy_jsd(*logits), rtol=1e-5)
  same = policy.jensen_shannon_consistency(logits[0], logits[0], logits[0])
  assert abs(float(same)) < 1e-6
  bf16 = [jnp.asarray(x, jnp.bfloat16) for x in logits]  # bf16 logits are lifted to float32
  assert policy.jensen_shannon_consistency(*bf16).dtype == jnp.float32


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(
  name=st.sampled_from(sorted(policy.POLICIES)),
  seed=st.integers(0, 2**30),
  image_seed=st.integers(0, 3),
)
def test_invariants(name, seed, image_seed):
  images, labels = _batch(image_seed)
  assert_label_preserving(_jitted(name), images, labels, seed)


def _config(**fields):
  config = ml_collections.ConfigDict(default.get_config().augment.to_dict(), type_safe=False)
  for name, value in fields.items():
    config[name] = value
  return config


@pytest.mark.parametrize(
  "field,value",
  [
    ("policy", "autoaugment"),
    ("randaugment_num_ops", 0),
    ("randaugment_num_ops", 1.5),
    ("randaugment_magnitude", 31),
    ("randaugment_magnitude", True),
    ("augmix_width", 0),
    ("augmix_depth", 0),
    ("augmix_severity", 11),
    ("augmix_severity", float("nan")),
    ("augmix_alpha", 0.0),
    ("augmix_jsd", "yes"),
    ("augmix_jsd_weight", -1.0),
    ("augmix_jsd", True),
  ],
)  # the last: JSD without policy="augmix"
def test_check_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=f"config.augment.{field}="):
    policy.check(_config(**{field: value}))


def test_from_config():
  assert policy.from_settings(_config()) is None  # the defaults switch the policy off
  assert policy.jsd_views_from_settings(_config()) is None
  fn = policy.from_settings(
    _config(policy="randaugment", randaugment_num_ops=3, randaugment_magnitude=12)
  )
  assert fn.func is policy.randaugment and fn.keywords == dict(num_ops=3, magnitude=12)
  assert policy.from_settings(_config(policy="trivialaugment")) is policy.trivialaugment
  augmix_params = dict(width=2, depth=1, severity=5, alpha=0.5)
  fields = {"augmix_" + name: value for name, value in augmix_params.items()}
  fn = policy.from_settings(_config(policy="augmix", **fields))
  assert fn.func is policy.augmix and fn.keywords == augmix_params
  views = policy.jsd_views_from_settings(_config(policy="augmix", augmix_jsd=True, **fields))
  assert views.func is policy.augmix_jsd_views and views.keywords == augmix_params

"""Policy augmentations (label-preserving): RandAugment, TrivialAugment, AugMix (+ its JSD loss).

Each method is `method(images, labels, key, *, ...) -> (images, labels)` on float32 (B, H, W, C)
images in [0, 1]; labels pass through unchanged. Every image draws its own ops: under `vmap`
the per-image `lax.switch` evaluates all candidate ops and selects, which costs compute but no
Python loop and no recompilation. `_draw_<method>(key, shape, ...)` returns the random draws
so a test can replay them op by op.

Op sets and magnitudes follow torchvision (RandAugment, TrivialAugmentWide: 14 ops, 31
magnitude bins) and the AugMix reference code (9 ops that avoid overlap with ImageNet-C, level
uniform in [0.1, severity]). See ops.py for the single ops.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax.augment import fields, ops
from proxy_jax.core.errors import fail_field

POLICY_CHOICES = ("none", "randaugment", "trivialaugment", "augmix")
NUM_MAGNITUDE_BINS = 31  # torchvision's; RandAugment's magnitude M indexes these bins (0..30).


def _enhance(op):
  """PIL enhance ops take 1 + signed magnitude as their factor (torchvision)."""
  return lambda image, value: op(image, 1.0 + value)


# (name, op(image, value), signed): the torchvision RandAugment / TrivialAugmentWide op list.
RANDAUGMENT_OPS = (
  ("identity", ops.identity, False),
  ("shear_x", ops.shear_x, True),
  ("shear_y", ops.shear_y, True),
  ("translate_x", ops.translate_x, True),
  ("translate_y", ops.translate_y, True),
  ("rotate", ops.rotate, True),
  ("brightness", _enhance(ops.brightness), True),
  ("color", _enhance(ops.color), True),
  ("contrast", _enhance(ops.contrast), True),
  ("sharpness", _enhance(ops.sharpness), True),
  ("posterize", ops.posterize, False),
  ("solarize", ops.solarize, False),
  ("autocontrast", ops.autocontrast, False),
  ("equalize", ops.equalize, False),
)


def magnitude_table(height, width, wide):
  """(num_ops, 31) op values per magnitude bin, torchvision's `_augmentation_space`.

  wide=False is RandAugment's space (translate up to 150/331 of the side), wide=True
  TrivialAugmentWide's (translate up to 32 pixels, rotate 135 degrees, posterize to 2 bits).
  """
  bins = NUM_MAGNITUDE_BINS
  line = lambda top: np.linspace(0.0, top, bins)
  shear, rotation, enhance = (0.99, 135.0, 0.99) if wide else (0.3, 30.0, 0.9)
  translate_x, translate_y = (32.0, 32.0) if wide else (150 / 331 * width, 150 / 331 * height)
  posterize_drop = 6 if wide else 4
  values = {
    "shear_x": line(shear),
    "shear_y": line(shear),
    "translate_x": line(translate_x),
    "translate_y": line(translate_y),
    "rotate": line(rotation),
    "brightness": line(enhance),
    "color": line(enhance),
    "contrast": line(enhance),
    "sharpness": line(enhance),
    "posterize": 8 - np.round(np.arange(bins) / ((bins - 1) / posterize_drop)),
    "solarize": np.linspace(1.0, 0.0, bins),
  }
  zeros = np.zeros(bins)
  return np.stack([values.get(name, zeros) for name, _, _ in RANDAUGMENT_OPS]).astype(np.float32)


_SIGNED = np.array([signed for _, _, signed in RANDAUGMENT_OPS])
_BRANCHES = tuple(op for _, op, _ in RANDAUGMENT_OPS)


def _apply_ops(images, op_indices, values):
  """Applies op_indices[b, i] with values[b, i] to image b, i = 0, 1, ... in order."""

  def one(image, indices, image_values):
    # A scan traces the switch (all 14 ops) once instead of once per op slot: faster compiles.
    def step(image, draw):
      return jax.lax.switch(draw[0], _BRANCHES, image, draw[1]), None

    return jax.lax.scan(step, image, (indices, image_values))[0]

  return jax.vmap(one)(images, op_indices, values)


def _signed_values(table, op_indices, bins, negate):
  values = jnp.asarray(table)[op_indices, bins]
  return jnp.where(jnp.asarray(_SIGNED)[op_indices] & negate, -values, values)


def _draw_randaugment(key, shape, *, num_ops, magnitude):
  """Per image: `num_ops` ops uniform with replacement, each signed op negated with prob 1/2."""
  batch, height, width, _ = shape
  op_key, sign_key = jax.random.split(key)
  op_indices = jax.random.randint(op_key, (batch, num_ops), 0, len(RANDAUGMENT_OPS))
  negate = jax.random.bernoulli(sign_key, 0.5, (batch, num_ops))
  bins = jnp.full((batch, num_ops), magnitude, jnp.int32)
  table = magnitude_table(height, width, wide=False)
  return {
    "ops": op_indices,
    "bins": bins,
    "values": _signed_values(table, op_indices, bins, negate),
  }


def randaugment(images, labels, key, *, num_ops=2, magnitude=9):
  """RandAugment (Cubuk et al. 2020): `num_ops` random ops, all at magnitude bin `magnitude`."""
  draw = _draw_randaugment(key, images.shape, num_ops=num_ops, magnitude=magnitude)
  return _apply_ops(images, draw["ops"], draw["values"]), labels


def _draw_trivialaugment(key, shape):
  """Per image: one op uniform, one magnitude bin uniform in 0..30, a random sign."""
  batch, height, width, _ = shape
  op_key, bin_key, sign_key = jax.random.split(key, 3)
  op_indices = jax.random.randint(op_key, (batch, 1), 0, len(RANDAUGMENT_OPS))
  bins = jax.random.randint(bin_key, (batch, 1), 0, NUM_MAGNITUDE_BINS)
  negate = jax.random.bernoulli(sign_key, 0.5, (batch, 1))
  table = magnitude_table(height, width, wide=True)
  return {
    "ops": op_indices,
    "bins": bins,
    "values": _signed_values(table, op_indices, bins, negate),
  }


def trivialaugment(images, labels, key):
  """TrivialAugment (Mueller & Hutter 2021), the "wide" space: one op at a random strength."""
  draw = _draw_trivialaugment(key, images.shape)
  return _apply_ops(images, draw["ops"], draw["values"]), labels


# The AugMix reference's `augmentations` list. Each entry maps (image, level, negate, height,
# width) to the op applied at that level, level uniform in [0.1, severity] as `sample_level`;
# the int(...) of `int_parameter` is the floor here (levels are positive).
def _augmix_sign(value, negate):
  return jnp.where(negate, -value, value)


AUGMIX_OPS = (
  ("autocontrast", lambda im, level, neg: ops.autocontrast(im)),
  ("equalize", lambda im, level, neg: ops.equalize(im)),
  ("posterize", lambda im, level, neg: ops.posterize(im, 4 - jnp.floor(level * 4 / 10))),
  ("rotate", lambda im, level, neg: ops.rotate(im, _augmix_sign(jnp.floor(level * 30 / 10), neg))),
  (
    "solarize",
    lambda im, level, neg: ops.solarize(im, (256 - jnp.floor(level * 256 / 10)) / 255.0),
  ),
  ("shear_x", lambda im, level, neg: ops.shear_x(im, _augmix_sign(level * 0.3 / 10, neg))),
  ("shear_y", lambda im, level, neg: ops.shear_y(im, _augmix_sign(level * 0.3 / 10, neg))),
  # The reference translates by up to a third of IMAGE_SIZE; here of the side moved along.
  (
    "translate_x",
    lambda im, level, neg: ops.translate_x(
      im, _augmix_sign(jnp.floor(level * (im.shape[1] / 3) / 10), neg)
    ),
  ),
  (
    "translate_y",
    lambda im, level, neg: ops.translate_y(
      im, _augmix_sign(jnp.floor(level * (im.shape[0] / 3) / 10), neg)
    ),
  ),
)
_AUGMIX_BRANCHES = tuple(op for _, op in AUGMIX_OPS)
AUGMIX_MAX_DEPTH = 3  # depth -1 draws each chain's depth uniformly from 1..3, as the reference.


def _draw_augmix(key, shape, *, width, depth, severity, alpha):
  """Per image: Dirichlet(alpha) chain weights, Beta(alpha, alpha) skip weight, and per chain
  step the op, its level and sign; steps at or beyond a chain's depth are skipped."""
  batch = shape[0]
  steps = AUGMIX_MAX_DEPTH if depth < 0 else depth
  keys = jax.random.split(key, 6)
  if depth < 0:
    depths = jax.random.randint(keys[0], (batch, width), 1, AUGMIX_MAX_DEPTH + 1)
  else:
    depths = jnp.full((batch, width), depth, jnp.int32)
  return {
    "chain_weights": jax.random.dirichlet(keys[1], jnp.full((width,), alpha), (batch,)),
    "mix_weight": jax.random.beta(keys[2], alpha, alpha, (batch,)),
    "depths": depths,
    "ops": jax.random.randint(keys[3], (batch, width, steps), 0, len(AUGMIX_OPS)),
    "levels": jax.random.uniform(keys[4], (batch, width, steps), minval=0.1, maxval=severity),
    "negate": jax.random.bernoulli(keys[5], 0.5, (batch, width, steps)),
  }


def augmix(images, labels, key, *, width=3, depth=-1, severity=3, alpha=1.0):
  """AugMix (Hendrycks et al. 2020): `width` chains of 1..3 random ops, mixed with Dirichlet
  weights, then blended with the original by a Beta-distributed weight. Output stays in
  [0, 1] because every mix is convex."""
  draw = _draw_augmix(key, images.shape, width=width, depth=depth, severity=severity, alpha=alpha)

  def one(image, weights, mix_weight, depths, op_indices, levels, negate):
    # Nested scans (chains, then steps) trace the 9-way switch once: compiling an unrolled
    # width x depth grid of switches takes several times longer.
    def chain(_, chain_draw):
      depth, indices, chain_levels, chain_negate = chain_draw

      def step(augmented, step_draw):
        position, index, level, flip = step_draw
        stepped = jax.lax.switch(index, _AUGMIX_BRANCHES, augmented, level, flip)
        return jnp.where(position < depth, stepped, augmented), None

      steps = jnp.arange(indices.shape[0])
      return None, jax.lax.scan(step, image, (steps, indices, chain_levels, chain_negate))[0]

    chains = jax.lax.scan(chain, None, (depths, op_indices, levels, negate))[1]
    mixed = jnp.tensordot(weights, chains, axes=1)
    return jnp.clip((1.0 - mix_weight) * image + mix_weight * mixed, 0.0, 1.0)

  out = jax.vmap(one)(
    images,
    draw["chain_weights"],
    draw["mix_weight"],
    draw["depths"],
    draw["ops"],
    draw["levels"],
    draw["negate"],
  )
  return out.astype(images.dtype), labels


def augmix_jsd_views(images, key, **augmix_params):
  """The two independent AugMix views that the Jensen-Shannon loss compares with the clean
  batch (the reference trains on (clean, augmix(x), augmix(x)), cross-entropy on clean only).

  One AugMix call on the batch stacked twice: every row draws its own chains, so the views are
  independent, and the train step compiles one AugMix graph instead of two.
  """
  doubled = jnp.concatenate([images, images], axis=0)
  views = augmix(doubled, None, key, **augmix_params)[0]
  return views[: images.shape[0]], views[images.shape[0] :]


def jensen_shannon_consistency(logits_clean, logits_aug1, logits_aug2):
  """Batch-mean Jensen-Shannon divergence of the three predictive distributions, float32.

  As the AugMix reference: mean of KL(p_i || M) over the three, M their average clamped to
  [1e-7, 1] before the log. Unweighted; the reference multiplies it by 12 (augmix_jsd_weight).
  """
  log_probs = [
    jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    for logits in (logits_clean, logits_aug1, logits_aug2)
  ]
  probs = [jnp.exp(lp) for lp in log_probs]
  log_mixture = jnp.log(jnp.clip((probs[0] + probs[1] + probs[2]) / 3.0, 1e-7, 1.0))
  kl = [jnp.sum(p * (lp - log_mixture), axis=-1) for p, lp in zip(probs, log_probs)]
  return jnp.mean((kl[0] + kl[1] + kl[2]) / 3.0)


POLICIES = {"randaugment": randaugment, "trivialaugment": trivialaugment, "augmix": augmix}


def _check_int(settings, field, low, high, allow=()):
  value = getattr(settings, field)
  if value in allow and not isinstance(value, bool):
    return
  if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
    extra = f" (or {', '.join(map(str, allow))})" if allow else ""
    fail_field(f"augment.{field}", value, f"must be an integer in [{low}, {high}]{extra}")


def check(settings):
  """Raises ConfigError (a ValueError) naming the field for any policy field that cannot work."""
  c = settings
  if c.policy not in POLICY_CHOICES:
    fail_field("augment.policy", c.policy, "choose one of " + ", ".join(POLICY_CHOICES))
  _check_int(c, "randaugment_num_ops", 1, 16)
  _check_int(c, "randaugment_magnitude", 0, NUM_MAGNITUDE_BINS - 1)
  _check_int(c, "augmix_width", 1, 16)
  _check_int(c, "augmix_depth", 1, 16, allow=(-1,))
  fields.check_number(c, "augmix_severity", 0.1, 10.0)
  fields.check_number(c, "augmix_alpha", 0.0, 1e3, low_open=True)
  if not isinstance(c.augmix_jsd, bool):
    fail_field("augment.augmix_jsd", c.augmix_jsd, "must be True or False")
  fields.check_number(c, "augmix_jsd_weight", 0.0, 1e6)
  if c.augmix_jsd and c.policy != "augmix":
    fail_field(
      "augment.augmix_jsd", c.augmix_jsd, f"needs policy='augmix' (policy is {c.policy!r})"
    )


def _augmix_params(c):
  return dict(
    width=c.augmix_width, depth=c.augmix_depth, severity=c.augmix_severity, alpha=c.augmix_alpha
  )


def from_settings(settings):
  """The configured policy as `(images, labels, key) -> (images, labels)`, or None for "none".

  With augmix_jsd the train step should feed the clean batch and take the extra views from
  `jsd_views_from_settings` (the reference computes cross-entropy on the clean view only).
  """
  c = settings
  if c.policy == "none":
    return None
  if c.policy == "randaugment":
    return functools.partial(
      randaugment, num_ops=c.randaugment_num_ops, magnitude=c.randaugment_magnitude
    )
  if c.policy == "trivialaugment":
    return trivialaugment
  return functools.partial(augmix, **_augmix_params(c))


def jsd_views_from_settings(settings):
  """`(images, key) -> (view1, view2)` for the AugMix JSD loss, or None when it is off."""
  if not settings.augmix_jsd:
    return None
  return functools.partial(augmix_jsd_views, **_augmix_params(settings))

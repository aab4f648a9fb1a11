"""Mixing methods and saliency maps against direct NumPy references, plus invariants.

The references replay the random draws (permutation, lambda, box centre) from the same key
splits and recompute everything else (box, mask, pasted pixels, label weights) in NumPy.
"""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax.config import checks as config_lib
from proxy_jax.augment import geometry, keep, mix
from tests.augment_checks import np_bilinear
from tests.conftest import make_tiny_config

H = W = 16


def _batch(batch=4, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, H, W, 3)).astype(np.float32)
  labels = np.eye(classes, dtype=np.float32)[np.arange(batch) % classes]
  return images, labels


def _replay(key, batch, alpha=1.0):
  """perm, lam, box key, extra key exactly as mix.Draws splits them."""
  perm_key, lam_key, box_key, extra_key = jax.random.split(key, 4)
  perm = np.asarray(jax.random.permutation(perm_key, batch))
  lam = np.float32(jax.random.beta(lam_key, alpha, alpha))
  return perm, lam, box_key, extra_key


def _centre(box_key, height=H, width=W):
  y_key, x_key = jax.random.split(box_key)
  return (
    int(jax.random.randint(y_key, (), 0, height)),
    int(jax.random.randint(x_key, (), 0, width)),
  )


def _np_box(lam, cy, cx, height=H, width=W):
  cut = np.sqrt(np.float32(1.0) - np.float32(lam), dtype=np.float32)
  cut_h, cut_w = int(np.floor(np.float32(height) * cut)), int(np.floor(np.float32(width) * cut))
  return (
    int(np.clip(cy - cut_h // 2, 0, height)),
    int(np.clip(cx - cut_w // 2, 0, width)),
    int(np.clip(cy + cut_h // 2, 0, height)),
    int(np.clip(cx + cut_w // 2, 0, width)),
  )


def _np_mask(box, height=H, width=W):
  top, left, bottom, right = box
  mask = np.zeros((height, width), bool)
  mask[top:bottom, left:right] = True
  return mask


# ---------------------------------------------------------------- each method vs NumPy


def test_mixup_matches_numpy():
  images, labels = _batch()
  key = jax.random.key(3)
  out, soft = mix.mixup(images, labels, key, alpha=0.4)
  perm, lam, _, _ = _replay(key, 4, 0.4)
  np.testing.assert_allclose(out, lam * images + (1 - lam) * images[perm], atol=1e-6)
  np.testing.assert_allclose(soft, lam * labels + (1 - lam) * labels[perm], atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_mixup_lambda_edges(lam):
  images, labels = _batch()
  key = jax.random.key(1)
  out, soft = mix.mixup(images, labels, key, alpha=1.0, lam=lam)
  perm = _replay(key, 4)[0]
  expected = images if lam == 1.0 else images[perm]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(soft, labels if lam == 1.0 else labels[perm])


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_cutmix_matches_numpy_and_weight_is_the_pasted_share(seed):
  images, labels = _batch()
  key = jax.random.key(seed)
  out, soft = mix.cutmix(images, labels, key, alpha=1.0)
  perm, lam, box_key, _ = _replay(key, 4)
  mask = _np_mask(_np_box(lam, *_centre(box_key)))
  expected = np.where(mask[None, :, :, None], images[perm], images)
  np.testing.assert_array_equal(out, expected)
  share = np.float32(mask.sum()) / np.float32(H * W)
  np.testing.assert_allclose(soft, (1 - share) * labels + share * labels[perm], atol=1e-7)


@pytest.mark.parametrize("lam, pasted", [(1.0, 0), (0.0, None)])
def test_cutmix_lambda_edges(lam, pasted):
  images, labels = _batch()
  key = jax.random.key(2)
  out, soft = mix.cutmix(images, labels, key, alpha=1.0, lam=lam)
  perm, _, box_key, _ = _replay(key, 4)
  box = _np_box(lam, *_centre(box_key))
  count = _np_mask(box).sum()
  if pasted is not None:
    assert count == pasted
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(soft, labels)
  else:
    # lambda 0: a full-size box around a random centre, clipped at the border.
    cy, cx = _centre(box_key)
    assert box == (
      max(cy - H // 2, 0),
      max(cx - W // 2, 0),
      min(cy + H // 2, H),
      min(cx + W // 2, W),
    )
    share = count / (H * W)
    np.testing.assert_allclose(soft, (1 - share) * labels + share * labels[perm], atol=1e-7)


@pytest.mark.parametrize("centre", [(0, 0), (H - 1, W - 1), (0, W - 1), (H // 2, 0)])
def test_boxes_at_the_border_are_clipped(centre):
  top, left, bottom, right = (
    int(v)
    for v in mix.centred_box(
      jnp.int32(centre[0]), jnp.int32(centre[1]), jnp.int32(10), jnp.int32(6), H, W
    )
  )
  cy, cx = centre
  assert (top, left, bottom, right) == (
    max(cy - 5, 0),
    max(cx - 3, 0),
    min(cy + 5, H),
    min(cx + 3, W),
  )
  mask = geometry.box_mask(top, left, bottom, right, H, W)
  assert float(mix.pasted_share(mask)) == np.float32((bottom - top) * (right - left)) / (H * W)


@pytest.mark.slow
def test_batch_of_one_and_single_class():
  images, labels = _batch(batch=1, classes=1)
  for name, kwargs in _METHOD_KWARGS.items():
    out, soft = _call(name, images, labels, jax.random.key(0), **kwargs)
    # The only partner is the example itself: the image keeps its content, the label is 1.
    if name not in ("resizemix", "snapmix"):
      np.testing.assert_array_equal(out, images)
    if name == "snapmix":  # Its reference's CAM weights need not sum to 1 (see snapmix).
      assert 0.0 < float(soft[0, 0]) <= 2.0
    else:
      np.testing.assert_allclose(soft, [[1.0]], atol=1e-6)


def test_resizemix_matches_numpy():
  images, labels = _batch()
  key = jax.random.key(4)
  out, soft = mix.resizemix(images, labels, key, scale_min=0.3, scale_max=0.7)
  perm, _, box_key, _ = _replay(key, 4)
  scale_key, y_key, x_key = jax.random.split(box_key, 3)
  tau = np.float32(jax.random.uniform(scale_key, (), jnp.float32, 0.3, 0.7))
  box_h = int(np.clip(np.round(tau * H), 1, H))
  box_w = int(np.clip(np.round(tau * W), 1, W))
  top = int(jax.random.randint(y_key, (), 0, H - box_h + 1))
  left = int(jax.random.randint(x_key, (), 0, W - box_w + 1))
  rows, cols = np.meshgrid(
    np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij"
  )
  src_y = (rows - top + 0.5) * (H / box_h) - 0.5
  src_x = (cols - left + 0.5) * (W / box_w) - 0.5
  mask = _np_mask((top, left, top + box_h, left + box_w))
  expected = images.copy()
  for i in range(4):
    shrunk = np_bilinear(images[perm[i]], src_y, src_x)
    expected[i][mask] = shrunk[mask]
  np.testing.assert_allclose(out, expected, atol=1e-5)
  share = box_h * box_w / (H * W)
  np.testing.assert_allclose(soft, (1 - share) * labels + share * labels[perm], atol=1e-6)


def test_saliencymix_box_is_centred_on_each_partners_peak():
  images, labels = _batch()
  rng = np.random.default_rng(1)
  maps = rng.uniform(size=(4, H, W)).astype(np.float32)
  maps[0, 0, 0] = maps[1, 15, 3] = maps[2, 7, 15] = maps[3, 9, 9] = 2.0  # peaks at borders too
  key = jax.random.key(6)
  out, soft = mix.saliencymix(images, labels, key, alpha=1.0, saliency=maps)
  perm, lam, _, _ = _replay(key, 4)
  for i in range(4):
    cy, cx = np.unravel_index(np.argmax(maps[perm[i]]), (H, W))
    mask = _np_mask(_np_box(lam, cy, cx))
    np.testing.assert_array_equal(out[i], np.where(mask[..., None], images[perm[i]], images[i]))
    share = mask.sum() / (H * W)
    np.testing.assert_allclose(
      soft[i], (1 - share) * labels[i] + share * labels[perm[i]], atol=1e-7
    )


def test_attentive_cutmix_pastes_the_top_k_cells_of_the_partners_map():
  images, labels = _batch()
  rng = np.random.default_rng(2)
  maps = rng.uniform(size=(4, H, W)).astype(np.float32)
  grid, top_k = 4, 3
  key = jax.random.key(7)
  out, soft = mix.attentive_cutmix(images, labels, key, grid=grid, top_k=top_k, saliency=maps)
  perm = _replay(key, 4)[0]
  cell = H // grid
  for i in range(4):
    scores = maps[perm[i]].reshape(grid, cell, grid, cell).mean(axis=(1, 3)).ravel()
    chosen = np.argsort(-scores)[:top_k]
    mask = np.zeros((H, W), bool)
    for c in chosen:
      r, q = divmod(int(c), grid)
      mask[r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = True
    np.testing.assert_array_equal(out[i], np.where(mask[..., None], images[perm[i]], images[i]))
    share = top_k / grid**2
    np.testing.assert_allclose(
      soft[i], (1 - share) * labels[i] + share * labels[perm[i]], atol=1e-7
    )
  _, chosen_jax = jax.lax.top_k(mix.grid_cell_scores(jnp.asarray(maps), grid), top_k)
  assert chosen_jax.shape == (4, top_k)


def _reference_snapmix_weights(maps, perm, target_mask, crop_mask):
  """SnapMix's reference (utils/mixmethod.py, get_spm and snapmix) on raw class maps: each
  map minus its min, over its sum (0 / 0 = NaN for a constant map); lam_a = 1 - box sum /
  (sum + 1e-8), lam_b the partner's crop sum likewise; NaN falls back to the area share."""
  with np.errstate(invalid="ignore"):
    w = maps.astype(np.float64)
    w = w - w.min(axis=(1, 2), keepdims=True)
    w = w / w.sum(axis=(1, 2), keepdims=True)
    lam_a = 1 - (w * target_mask).sum(axis=(1, 2)) / (w.sum(axis=(1, 2)) + 1e-8)
    wb = w[perm]
    lam_b = (wb * crop_mask).sum(axis=(1, 2)) / (wb.sum(axis=(1, 2)) + 1e-8)
  lam = 1 - target_mask.sum() / target_mask.size
  return np.where(np.isnan(lam_a), lam, lam_a), np.where(np.isnan(lam_b), 1 - lam, lam_b)


@pytest.mark.parametrize("normalize", [False, True])
def test_snapmix_matches_numpy_transcription_of_the_reference(normalize):
  images, labels = _batch()
  rng = np.random.default_rng(3)
  # Raw, signed class maps: one all negative (weighs like any other: the reference shifts it),
  # one constant (no weights: the area share stands in), two signed.
  maps = rng.normal(size=(4, H, W)).astype(np.float32)
  maps[0] = -1.0 - rng.uniform(size=(H, W)).astype(np.float32)
  maps[1] = -0.5
  key = jax.random.key(8)
  lam = (np.float32(0.55), np.float32(0.7))
  out, soft = mix.snapmix(
    images, labels, key, alpha=1.0, saliency=maps, normalize_labels=normalize, lam=lam
  )
  perm, _, box_key, _ = _replay(key, 4)
  crop_key, target_key = jax.random.split(box_key)
  target = _np_box(lam[0], *_centre(target_key))
  crop = _np_box(lam[1], *_centre(crop_key))
  (t, left, b, r), (ct, cl, cb, cr) = target, crop
  assert b > t and r > left and cb > ct and cr > cl
  rows, cols = np.meshgrid(
    np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij"
  )
  # align_corners: the first and last pasted pixels sample the crop's first and last pixels.
  src_y = ct + (rows - t) * ((cb - ct - 1) / max(b - t - 1, 1) if b - t > 1 else 0.0)
  src_x = cl + (cols - left) * ((cr - cl - 1) / max(r - left - 1, 1) if r - left > 1 else 0.0)
  src_y, src_x = np.clip(src_y, ct, cb - 1), np.clip(src_x, cl, cr - 1)
  mask = _np_mask(target)
  own, partner = _reference_snapmix_weights(maps, perm, mask, _np_mask(crop))
  assert not np.allclose(own + partner, 1.0)  # The reference's weights need not sum to 1.
  if normalize:  # This library's earlier default, kept as an option.
    own, partner = own / (own + partner), partner / (own + partner)
  for i in range(4):
    pasted = np_bilinear(images[perm[i]], src_y, src_x)
    np.testing.assert_allclose(out[i], np.where(mask[..., None], pasted, images[i]), atol=1e-5)
    np.testing.assert_allclose(
      soft[i], own[i] * labels[i] + partner[i] * labels[perm[i]], atol=1e-5
    )


def test_snapmix_raw_weights_need_not_sum_to_one():
  images, labels = _batch()
  maps = np.zeros((4, H, W), np.float32)
  maps[:, :4, :4] = 1.0  # All CAM mass in the top-left corner.
  _, soft = mix.snapmix(
    images,
    labels,
    jax.random.key(8),
    alpha=1.0,
    saliency=maps,
    normalize_labels=False,
    lam=(np.float32(0.55), np.float32(0.7)),
  )
  sums = np.asarray(soft).sum(-1)
  assert not np.allclose(sums, 1.0)
  _, default_soft = mix.snapmix(
    images,
    labels,
    jax.random.key(8),
    alpha=1.0,
    saliency=maps,
    lam=(np.float32(0.55), np.float32(0.7)),
  )
  np.testing.assert_array_equal(default_soft, soft)  # The reference's weights by default.
  _, soft = mix.snapmix(
    images,
    labels,
    jax.random.key(8),
    alpha=1.0,
    saliency=maps,
    normalize_labels=True,
    lam=(np.float32(0.55), np.float32(0.7)),
  )
  np.testing.assert_allclose(np.asarray(soft).sum(-1), 1.0, atol=1e-6)


def test_keep_box_is_centred_on_the_peak_and_shifted_inside():
  maps = np.zeros((3, H, W), np.float32)
  maps[0, 8, 8] = maps[1, 0, 0] = maps[2, 15, 14] = 1.0
  top, left, bottom, right = (np.asarray(v) for v in keep.keep_box(jnp.asarray(maps), 0.5))
  np.testing.assert_array_equal(top, [4, 0, 8])
  np.testing.assert_array_equal(left, [4, 0, 8])
  np.testing.assert_array_equal(bottom - top, [8, 8, 8])
  np.testing.assert_array_equal(right - left, [8, 8, 8])


def test_keep_salient_pastes_the_box_back_from_the_original():
  images, labels = _batch(batch=3)
  maps = np.zeros((3, H, W), np.float32)
  maps[0, 8, 8] = maps[1, 0, 0] = maps[2, 15, 14] = 1.0
  wrapped = keep.keep_salient(lambda x, y, k: (jnp.zeros_like(x), y), 0.5)
  out, soft = wrapped(images, labels, jax.random.key(0), jnp.asarray(maps))
  masks = np.asarray(keep.keep_masks(jnp.asarray(maps), 0.5))
  np.testing.assert_array_equal(np.asarray(out)[masks], images[masks])
  assert not np.asarray(out)[~masks].any()
  np.testing.assert_array_equal(soft, labels)


# ---------------------------------------------------------------- invariants

_METHOD_KWARGS = {
  "mixup": {"alpha": 1.0},
  "cutmix": {"alpha": 1.0},
  "resizemix": {"scale_min": 0.1, "scale_max": 0.8},
  "saliencymix": {"alpha": 1.0},
  "attentive_cutmix": {"grid": 4, "top_k": 3},
  "snapmix": {"alpha": 1.0},
}


@functools.lru_cache(maxsize=None)
def _jitted(name, kwargs_items):
  method = mix.METHODS[name]
  kwargs = dict(kwargs_items)
  if name in mix.SALIENCY_KIND:
    return jax.jit(lambda x, y, k, s: method(x, y, k, saliency=s, **kwargs))
  return jax.jit(lambda x, y, k, s: method(x, y, k, **kwargs))


def _call(name, images, labels, key, **kwargs):
  maps = np.asarray(images).mean(-1)  # Any map will do for the invariants.
  return _jitted(name, tuple(sorted(kwargs.items())))(images, labels, key, maps)


@pytest.mark.slow
@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  batch=st.sampled_from([1, 4]),
  name=st.sampled_from(sorted(_METHOD_KWARGS)),
)
def test_invariants(seed, batch, name):
  images, labels = _batch(batch=batch, classes=4, seed=seed % 1000)
  key = jax.random.key(seed)
  out, soft = _call(name, images, labels, key, **_METHOD_KWARGS[name])
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert soft.shape == labels.shape and soft.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  sums = np.asarray(soft).sum(-1)
  if name == "snapmix":  # rho_own, rho_partner each in [0, 1], their sum need not be 1.
    assert np.all((sums >= 0.0) & (sums <= 2.0 + 1e-6))
  else:
    np.testing.assert_allclose(sums, 1.0, atol=1e-6)
  assert float(soft.min()) >= 0.0
  again_out, again_soft = _call(name, images, labels, key, **_METHOD_KWARGS[name])
  np.testing.assert_array_equal(out, again_out)
  np.testing.assert_array_equal(soft, again_soft)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_cutmix_label_weight_is_exactly_the_pasted_share(seed):
  batch = 4
  # Image i is constant i / 8 and has class i, so pasted pixels and their share are visible.
  images = np.broadcast_to(
    (np.arange(batch, dtype=np.float32) / 8)[:, None, None, None], (batch, H, W, 3)
  ).copy()
  labels = np.eye(batch, dtype=np.float32)
  out, soft = _call("cutmix", images, labels, jax.random.key(seed), alpha=1.0)
  perm = _replay(jax.random.key(seed), batch)[0]
  for i in range(batch):
    if perm[i] == i:
      continue
    pasted = int(np.sum(np.asarray(out)[i, :, :, 0] != images[i, 0, 0, 0]))
    assert float(soft[i, perm[i]]) == np.float32(pasted) / np.float32(H * W)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("mix", "cutmix,mixupp", "augment.mix='cutmix,mixupp'"),
    ("mix", "cutmix,cutmix", "twice"),
    ("mix_alpha", 0.0, "augment.mix_alpha"),
    ("mix_prob", 1.5, "augment.mix_prob"),
    ("resizemix_scale_max", 0.05, "augment.resizemix_scale_max"),
    ("attentive_top_k", 50, "augment.attentive_top_k"),
    ("attentive_grid", 17, "augment.attentive_grid"),
    ("keep_size", 0.0, "augment.keep_size"),
    ("keep_cutout", "paste", "augment.keep_cutout"),
    ("keep_threshold", 0.0, "augment.keep_threshold"),
    ("keep_tries", 0, "augment.keep_tries"),
    ("snapmix_cam", "relu", "augment.snapmix_cam"),
    ("saliencymix_map", "itti", "augment.saliencymix_map"),
    ("rotation_degrees", 200.0, "augment.rotation_degrees"),
    ("saliency_cam", "scorecam", "augment.saliency_cam"),
  ],
)
def test_config_errors_name_the_field(field, value, message):
  config = make_tiny_config(**{f"augment.{field}": value})
  with pytest.raises(
    config_lib.ConfigError,
    match=message.replace(".", r"\.").replace("(", r"\(").replace("[", r"\["),
  ):
    config_lib.validate(config)


def test_frozen_pretrained_source_needs_a_class_agnostic_cam(tmp_path):
  config = make_tiny_config(
    **{"augment.mix": "snapmix", "augment.saliency_source": "timm/resnet18.a1_in1k"}
  )
  with pytest.raises(config_lib.ConfigError, match="augment.saliency_cam"):
    config_lib.validate(config)
  config.augment.saliency_source = str(tmp_path / "missing.safetensors")
  with pytest.raises(config_lib.ConfigError, match="augment.saliency_source"):
    config_lib.validate(config)

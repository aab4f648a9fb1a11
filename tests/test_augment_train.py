"""Augmentation inside the train step: soft-target loss, the in-step pipeline, short runs with
every family (alone and with proxy steps), and resume after SIGKILL with mixing on."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import augment, cams, data, models
from proxy_jax.config import checks as config_lib
from proxy_jax.images import preprocess
from proxy_jax.run import restore, steps, train
from tests.conftest import make_tiny_config
from tests.test_train import killed_and_resumed


def test_cross_entropy_on_soft_targets_composes_with_label_smoothing():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((3, 5)).astype(np.float32)
  soft = np.array([[0.7, 0.3, 0, 0, 0], [0, 0, 1, 0, 0], [0.25, 0, 0, 0, 0.75]], np.float32)
  mask = np.array([1, 1, 0], np.float32)
  smoothing = 0.1
  targets = (1 - smoothing) * soft + smoothing / 5
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -(targets * log_probs).sum(-1)[:2].mean()
  got = steps.masked_mean(
    steps.cross_entropy(jnp.asarray(logits), jnp.asarray(soft), smoothing), jnp.asarray(mask)
  )
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_jensen_shannon_per_example_averages_to_the_batch_term():
  from proxy_jax.augment import policy  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(1)
  logits = [jnp.asarray(rng.standard_normal((4, 6)), jnp.float32) for _ in range(3)]
  per_example = augment.jensen_shannon_per_example(*logits)
  assert per_example.shape == (4,) and bool(jnp.all(per_example >= 0))
  assert float(per_example.mean()) == pytest.approx(
    float(policy.jensen_shannon_consistency(*logits)), rel=1e-5
  )


@pytest.fixture(scope="module")
def tiny_state():
  config = make_tiny_config(**{"augment.rotation_degrees": 0.0})
  model = train.create_model(config, 10)
  state = train.create_train_state(config, model, jax.random.key(0), 1)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  labels = np.array([0, 1, 2, 3, 4, 5], np.int32)
  return config, state, images, labels


def _augment(config, state, images, labels, key, is_proxy=None):
  fn = augment.make_augment_fn(config.augment, 10)
  return fn(images, labels, key, is_proxy=is_proxy, models=augment.models_of(state))


def _assert_top_cells_pasted(inputs, soft, images, labels, maps, key, grid=4, top_k=3):
  """The pipeline's Attentive CutMix pasted each partner's top-k cells of `maps`."""
  out = np.asarray(preprocess.denormalize(inputs))
  clean = np.asarray(preprocess.to_unit_range(images))
  _, _, mix_key = jax.random.split(key, 3)
  batch, size = images.shape[0], images.shape[1]
  cell = size // grid
  perm = np.asarray(jax.random.permutation(jax.random.split(mix_key, 4)[0], batch))
  for i in range(batch):
    scores = maps[perm[i]].reshape(grid, cell, grid, cell).mean(axis=(1, 3)).ravel()
    mask = np.zeros((size, size), bool)
    for index in np.argsort(-scores, kind="stable")[:top_k]:
      r, q = divmod(int(index), grid)
      mask[r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = True
    np.testing.assert_allclose(
      out[i], np.where(mask[..., None], clean[perm[i]], clean[i]), atol=1e-5
    )
    if perm[i] != i:
      assert float(soft[i, labels[perm[i]]]) == pytest.approx(top_k / grid**2)


def _attentive_config(config, source="current"):
  config = config.copy_and_resolve_references()
  config.augment.mix, config.augment.saliency_source = "attentive_cutmix", source
  config.augment.attentive_grid, config.augment.attentive_top_k = 4, 3
  return config


@pytest.mark.slow
def test_pipeline_attentive_cutmix_pastes_the_top_cells_of_the_current_models_cam(tiny_state):
  config, state, images, labels = tiny_state
  config = _attentive_config(config)
  key = jax.random.key(5)
  inputs, soft = jax.jit(lambda k: _augment(config, state, images, labels, k))(key)
  # The CAM of the clean images from the CAM library directly (Grad-CAM of the label class).
  clean = preprocess.to_unit_range(images)
  maps = np.asarray(
    cams.compute(
      "gradcam",
      state.apply_fn,
      models.variables_of(state),
      preprocess.normalize(clean),
      targets=labels,
    )
  )
  _assert_top_cells_pasted(inputs, soft, images, labels, maps, key)


@pytest.mark.slow
def test_frozen_workdir_gives_attentive_cutmix_its_cam(tiny_state, tmp_path):
  config, state, images, labels = tiny_state
  workdir = str(tmp_path / "frozen")
  train.train_and_evaluate(make_tiny_config(num_epochs=1, **{"data.max_examples": 100}), workdir)
  config = _attentive_config(config, workdir)
  config_lib.validate(config)
  apply_fn, frozen = restore.load_frozen(config, 10)
  fn = augment.make_augment_fn(config.augment, 10)
  key = jax.random.key(6)
  inputs, soft = jax.jit(
    lambda k: fn(images, labels, k, models=augment.models_of(state, apply_fn, frozen))
  )(key)
  clean = preprocess.to_unit_range(images)
  maps = np.asarray(
    cams.compute("gradcam", apply_fn, frozen, preprocess.normalize(clean), targets=labels)
  )
  _assert_top_cells_pasted(inputs, soft, images, labels, maps, key)
  # The whole step runs with the frozen model's variables as an argument.
  step = steps.make_train_step(config, frozen=(apply_fn, frozen))
  fresh = train.create_train_state(config, train.create_model(config, 10), jax.random.key(0), 1)
  batch = {
    "image": images,
    "label": labels,
    "mask": np.ones(6, np.float32),
    "is_proxy": np.zeros(6, bool),
  }
  _, metrics = step(fresh, batch, key)
  assert np.isfinite(metrics.compute()["loss"])


@pytest.mark.slow
def test_pipeline_keepaugment_selective_cut_with_and_without_augmix_views(tiny_state):
  """KeepAugment + Cutout takes the selective-cut path in both the plain and the AugMix-JSD
  pipelines: every erased pixel holds Cutout's paper fill (the normalisation mean colour)."""
  config, state, images, labels = tiny_state
  config = config.copy_and_resolve_references()
  config.augment.erase, config.augment.erase_prob = "cutout", 1.0
  config.augment.keep_salient = True
  inputs, soft = jax.jit(lambda k: _augment(config, state, images, labels, k))(jax.random.key(3))
  clean = np.asarray(preprocess.eval_inputs(images))
  changed = np.any(np.abs(np.asarray(inputs) - clean) > 1e-5, axis=-1)
  assert changed.any() and np.allclose(np.asarray(inputs)[changed], 0.0, atol=1e-5)
  np.testing.assert_array_equal(soft, np.eye(10)[labels])
  config.augment.policy, config.augment.augmix_jsd = "augmix", True
  inputs, _ = jax.jit(lambda k: _augment(config, state, images, labels, k))(jax.random.key(3))
  assert inputs.shape == (3 * len(images), *images.shape[1:])
  np.testing.assert_allclose(inputs[: len(images)], clean, atol=1e-5)  # The clean view.


@pytest.mark.slow
def test_skip_proxies_exempts_proxied_examples(tiny_state):
  config, state, images, labels = tiny_state
  config = config.copy_and_resolve_references()
  config.augment.mix, config.augment.skip_proxies = "mixup", True
  is_proxy = np.array([True, False, True, False, False, False])
  inputs, soft = _augment(config, state, images, labels, jax.random.key(1), is_proxy)
  clean = preprocess.eval_inputs(images)
  np.testing.assert_allclose(inputs[is_proxy], clean[is_proxy], atol=1e-6)
  np.testing.assert_array_equal(soft[is_proxy], np.eye(10)[labels[is_proxy]])
  assert not np.allclose(inputs[~is_proxy], clean[~is_proxy], atol=1e-3)


@pytest.mark.slow
def test_mix_prob_zero_and_a_switched_list(tiny_state):
  config, state, images, labels = tiny_state
  config = config.copy_and_resolve_references()
  config.augment.mix, config.augment.mix_prob = "mixup,cutmix", 0.0
  inputs, soft = _augment(config, state, images, labels, jax.random.key(2))
  np.testing.assert_allclose(inputs, preprocess.eval_inputs(images), atol=1e-6)
  np.testing.assert_array_equal(soft, np.eye(10)[labels])
  config.augment.mix_prob = 1.0
  keys = jax.random.split(jax.random.key(0), 12)
  batched = jax.jit(jax.vmap(lambda k: _augment(config, state, images, labels, k)))
  inputs, soft = (np.asarray(a) for a in batched(keys))
  np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-6)
  # MixUp blends every pixel; CutMix leaves pixels outside its box untouched.
  untouched = np.isclose(inputs, np.asarray(preprocess.eval_inputs(images))[None], atol=1e-6).mean(
    axis=(1, 2, 3, 4)
  )
  kinds = {"cutmix" if share > 0.2 else "mixup" for share in untouched}
  assert kinds == {"mixup", "cutmix"}


@pytest.mark.slow
def test_train_accuracy_counts_the_dominant_label(tiny_state):
  config, state, images, labels = tiny_state
  config = config.copy_and_resolve_references()
  config.augment.mix = "mixup"
  batch = {
    "image": images,
    "label": labels,
    "mask": np.ones(6, np.float32),
    "is_proxy": np.zeros(6, bool),
  }
  step_key = jax.random.key(9)
  # What the step computes before its update: the same keys, the same augmented batch.
  augment_key = jax.random.split(jax.random.fold_in(step_key, state.step))[0]
  inputs, soft = _augment(config, state, images, labels, augment_key)
  logits, _ = state.apply_fn(
    models.variables_of(state), inputs, train=True, mutable=["batch_stats"]
  )
  expected = float(np.mean(np.argmax(logits, -1) == np.argmax(soft, -1)))
  assert not np.array_equal(np.argmax(soft, -1), labels)  # Some partners dominate.
  fresh = jax.tree.map(jnp.copy, state)
  _, metrics = steps.make_train_step(config)(fresh, batch, step_key)
  assert metrics.compute()["accuracy"] == pytest.approx(expected)


RUN_CASES = {
  "mix_plain_with_proxy": {"augment.mix": "mixup,cutmix,resizemix", "proxy.enabled": True},
  "mix_guided_with_proxy_skipped": {
    "augment.mix": "saliencymix,attentive_cutmix,snapmix",
    "augment.attentive_grid": 4,
    "proxy.enabled": True,
    "augment.skip_proxies": True,
  },
  "policy_erase_keep": {
    "augment.policy": "randaugment",
    "augment.erase": "cutout",
    "augment.keep_salient": True,
  },
  "augmix_jsd_with_proxy": {
    "augment.policy": "augmix",
    "augment.augmix_jsd": True,
    "augment.erase": "random_erasing",
    "proxy.enabled": True,
  },
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_short_run_with_each_family_ends_finite(case, tmp_path):
  overrides = {
    "num_epochs": 2,
    "proxy.schedule": "1,p,1",
    "proxy.subset": 0.5,
    "proxy.threshold": 0.5,
    "data.max_examples": 100,
    **RUN_CASES[case],
  }
  summary = train.train_and_evaluate(make_tiny_config(**overrides), str(tmp_path))
  for row in summary["history"]:
    assert all(np.isfinite(row[k]) for k in ("train_loss", "val_loss", "train_accuracy"))
  assert np.isfinite(summary["test"]["loss"])
  assert os.path.exists(tmp_path / "augmented_examples.png")
  if overrides.get("proxy.enabled"):
    assert summary["proxy_steps"] and summary["bank_size"] > 0


@pytest.mark.slow
def test_is_proxy_marks_the_swapped_rows():
  config = make_tiny_config()
  from proxy_jax.run import proxy_bank  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as workdir:
    split = data.load_dataset(config, workdir).train
  bank = proxy_bank.ProxyBank()
  bank.store(np.arange(3), split.images[:3])
  batch = next(data.batches(split, 8, swap=bank.swap, is_proxy=bank.holds))
  np.testing.assert_array_equal(batch["is_proxy"], [True] * 3 + [False] * 5)
  assert not next(data.batches(split, 8))["is_proxy"].any()


@pytest.mark.slow
def test_resume_after_sigkill_with_mixing_equals_uninterrupted(tmp_path):
  overrides = {
    "num_epochs": 3,
    "augment.mix": "cutmix,mixup",
    "augment.mix_prob": 0.8,
    "data.max_examples": 200,
  }
  actual, expected, victim_dir = killed_and_resumed(tmp_path, overrides)
  assert actual["test"] == expected["test"]
  with open(victim_dir / "config.json") as f:
    assert json.load(f)["augment"]["mix"] == "cutmix,mixup"

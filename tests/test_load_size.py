"""Stored images larger than the training size: resolution, cache, views, proxies, a run."""

import json
import os

import jax
import numpy as np
import pytest

from proxy_jax import data, models
from proxy_jax.config import checks as config_lib
from proxy_jax.config import recorded as config_record
from proxy_jax.core import errors, parallel
from proxy_jax.images import preprocess
from proxy_jax import proxy
from proxy_jax.run import proxy_bank, proxy_step, records
from proxy_jax.run import steps, train
from tests.conftest import make_tiny_settings, make_tiny_config, train_one_epoch

STORED, SIZE = 20, 16


def test_auto_load_size_per_source_and_for_runs_older_than_the_field(tmp_path):
  assert data.stored_size(make_tiny_config()) == 16  # Digits: nothing to crop.
  folder = make_tiny_config(**{"data.source": "folder", "data.path": str(tmp_path)})
  assert data.stored_size(folder) == 18  # round(16 / 0.875)
  folder.image_size = 224
  assert data.stored_size(folder) == 256
  assert data.stored_size(make_tiny_config(**{"data.load_size": 40})) == 40
  old = folder.to_dict()
  del old["data"]["load_size"]  # A config.json from before the field...
  import ml_collections  # pylint: disable=g-import-not-at-top

  from proxy_jax.config import upgrade  # pylint: disable=g-import-not-at-top

  # ...read through the one upgrade: that run stored its images at its image_size.
  assert data.stored_size(ml_collections.ConfigDict(upgrade.upgrade(old))) == 224


@pytest.mark.parametrize("value", [8, -2, 15])
def test_load_size_below_the_image_size_is_refused(value):
  with pytest.raises(errors.ConfigError, match=f"data.load_size={value}.*>= image_size"):
    config_lib.validate(make_tiny_config(**{"data.load_size": value}))


def _old_run(tmp_path, config):
  """A workdir whose config.json an older version wrote: no load_size, crop or SGD fields."""
  recorded = json.loads(config.to_json())
  del recorded["data"]["load_size"]
  for field in ("crop", "crop_scale", "crop_ratio", "crop_padding", "crop_pad_mode"):
    del recorded["augment"][field]
  for field in ("name", "momentum", "nesterov", "decay_norm_and_bias"):
    del recorded["optimizer"][field]
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  (workdir / "config.json").write_text(json.dumps(recorded))
  return str(workdir)


def test_a_run_older_than_load_size_resumes_at_its_stored_size(tmp_path):
  """Auto must keep such a run at image_size (its bank and cache are at that size)."""
  overrides = {"data.source": "folder", "data.path": str(tmp_path)}
  workdir = _old_run(tmp_path, make_tiny_config(**overrides))
  settings = config_record.resolve_auto_fields(make_tiny_settings(**overrides), workdir)
  assert settings.data.load_size == 16
  config_record.write_or_check_resolved(settings, workdir)  # Accepted: same run.
  changed = make_tiny_settings(**overrides, **{"data.load_size": 18})
  changed = config_record.resolve_auto_fields(changed, workdir)
  with pytest.raises(errors.ConfigError, match="data.load_size: 16 -> 18"):
    config_record.write_or_check_resolved(changed, workdir)
  fresh = make_tiny_settings(**overrides)
  assert config_record.resolve_auto_fields(fresh, str(tmp_path / "new")).data.load_size == 18


def test_cache_key_is_the_stored_side():
  """A cache written when image_size was the stored side is the one a new run reuses."""

  def key(**overrides):
    config = make_tiny_config(**overrides)
    return data._cache_key(config, "pool")  # pylint: disable=protected-access

  assert key(**{"data.load_size": 20}) == key(**{"image_size": 20})
  assert key(**{"data.load_size": 20}) != key(**{"data.load_size": 24})


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
  """Digits stored at 20 px, trained one epoch at 16 px with random resized crops."""
  config = make_tiny_config(
    **{"data.load_size": STORED, "augment.crop": "random_resized", "proxy.subset": 0.5}
  )
  dataset, state, metrics = train_one_epoch(config, str(tmp_path_factory.mktemp("stored")))
  assert np.isfinite(float(metrics.compute()["loss"]))
  return config, dataset, state


@pytest.mark.slow
def test_training_keeps_stored_images_and_evaluation_sees_centre_crops(stored_run):
  config, dataset, _ = stored_run
  assert dataset.train.images.shape[1:] == (STORED, STORED, 3)
  assert dataset.val.images.shape[1:] == (SIZE, SIZE, 3)
  assert dataset.test.images.shape[1:] == (SIZE, SIZE, 3)
  pool = data.load_digits_pool(STORED)
  np.testing.assert_array_equal(
    dataset.val.images, preprocess.center_crop(pool.images[dataset.val.source_indices], SIZE)
  )
  view = data.eval_view(dataset.train, SIZE)
  np.testing.assert_array_equal(view.images, dataset.train.images[:, 2:18, 2:18])
  assert data.eval_view(dataset.val, SIZE) is dataset.val
  del config


@pytest.mark.slow
@pytest.mark.parametrize("subset", [0.5, 1.0])  # Two-pass and fused proxy steps.
def test_proxies_are_stored_images_with_the_centre_crop_transformed(stored_run, subset):
  config, dataset, state = stored_run
  config = config.copy_and_resolve_references()
  config.proxy.subset = subset
  split = dataset.train
  _, sharding = parallel.shardings(parallel.make_mesh())
  result = proxy_step.run_proxy_step(
    state,
    split,
    proxy_bank.ProxyBank(),
    config,
    jax.random.key(0),
    predict_fn=steps.make_predict_step(),
    batch_sharding=sharding,
  )
  assert len(result.ids) > 0
  stored = split.images[result.ids]
  assert result.proxies.shape[1:] == (STORED, STORED, 3)
  assert result.originals.shape[1:] == (SIZE, SIZE, 3)
  np.testing.assert_array_equal(result.originals, preprocess.center_crop(stored, SIZE))
  # The ring outside the crop is untouched; the centre is the transform of the crop's CAM.
  ring = np.ones((STORED, STORED), bool)
  ring[2:18, 2:18] = False
  np.testing.assert_array_equal(result.proxies[:, ring], stored[:, ring])
  targets = np.argmax(
    np.asarray(
      steps.make_predict_step()(state.apply_fn, models.variables_of(state), result.originals)
    ),
    -1,
  )
  options = dict(proxy_step._cam_options(config))  # pylint: disable=protected-access
  proxy_fn = proxy.make_proxy_fn(
    state.apply_fn,
    config.proxy.cam_method,
    config.proxy.threshold,
    config.proxy.weight,
    config.proxy.mode,
    options,
  )
  want, _ = proxy_fn(models.variables_of(state), result.originals, targets)
  diff = np.abs(preprocess.center_crop(result.proxies, SIZE).astype(int) - np.asarray(want))
  assert diff.max() <= 1  # Chunk shapes differ between the paths: float ties round apart.
  # A banked proxy replaces its original in a training batch at the stored size.
  bank = proxy_bank.ProxyBank()
  bank.store(result.ids, result.proxies)
  batch = next(data.batches(split, len(split), swap=bank.swap, is_proxy=bank.holds))
  position = {int(i): p for p, i in enumerate(batch["id"])}
  first = position[int(result.ids[0])]
  np.testing.assert_array_equal(batch["image"][first], result.proxies[0])


@pytest.mark.slow
def test_a_run_with_stored_images_resumes_and_records_its_load_size(tmp_path):
  workdir = str(tmp_path / "run")
  config = make_tiny_config(
    **{
      "data.load_size": STORED,
      "augment.crop": "pad",
      "augment.crop_pad_mode": "reflect",
      "proxy.enabled": True,
      "optimizer.name": "sgd",
      "optimizer.learning_rate": 0.05,
    }
  )
  summary = train.train_and_evaluate(config, workdir)
  assert np.isfinite(summary["final"]["val_loss"]) and summary["bank_size"] > 0
  assert 0 <= summary["train_split"]["accuracy"] <= 1  # Evaluated on the centre crops.
  recorded = records.read_recorded_config(workdir)
  assert recorded["data"]["load_size"] == STORED
  again = train.train_and_evaluate(
    make_tiny_config(
      **{
        "data.load_size": STORED,
        "augment.crop": "pad",
        "augment.crop_pad_mode": "reflect",
        "proxy.enabled": True,
        "optimizer.name": "sgd",
        "optimizer.learning_rate": 0.05,
      }
    ),
    workdir,
  )
  assert again["final"] == summary["final"]

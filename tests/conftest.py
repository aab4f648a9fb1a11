"""Shared test helpers: a tiny, fast config and the repository root on sys.path."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import default  # noqa: E402 (after the repository root is on the path)
from proxy_jax.config import fields as config_fields  # noqa: E402


def make_tiny_config(**overrides):
  """Digits at 16 px, 300 examples, narrow tiny CNN, 2 baseline epochs: seconds to train.

  `overrides` are dotted field names, e.g. make_tiny_config(**{"proxy.enabled": True}).
  """
  config = default.get_config()
  config.image_size = 16
  config.data.max_examples = 300
  config.data.val_fraction = 0.2
  config.data.test_fraction = 0.2
  config.model.width = 8
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.proxy.enabled = False
  config.proxy.schedule = "1,p,1"
  # Tests compile and decode afresh: nothing read from outside their own folders.
  config.compilation_cache_dir = ""
  config.data.cache_dir = ""
  for field, value in overrides.items():
    config_fields.set_field(config, field, value)
  return config


def settings_of(config):
  """The typed settings a run's boundary makes of `config` (without the run's resolutions)."""
  from proxy_jax.config import settings  # pylint: disable=g-import-not-at-top

  return settings.build(config.to_dict())


def make_tiny_settings(**overrides):
  """`make_tiny_config(**overrides)` as settings, for tests of code below the boundary."""
  return settings_of(make_tiny_config(**overrides))


def train_one_epoch(config, workdir):
  """Loads `config`'s data into `workdir` and trains one epoch in a fixed order.

  Returns (dataset, state, the last batch's metrics): a briefly trained model with some training
  examples right and some wrong, as the proxy-step tests need.
  """
  # Imported here so that tests which only build configs do not pay for JAX and the data layer.
  import jax  # pylint: disable=g-import-not-at-top
  from proxy_jax import data  # pylint: disable=g-import-not-at-top
  from proxy_jax.run import steps, train

  settings = settings_of(config)

  dataset = data.load_dataset(settings, workdir)
  model = train.create_model(settings, len(dataset.class_names))
  split = dataset.train
  state = train.create_train_state(
    settings, model, jax.random.key(0), data.num_batches(len(split), settings.batch_size)
  )
  step = steps.make_train_step(settings)
  for batch in data.batches(split, settings.batch_size, data.epoch_order(len(split), 0, 0)):
    state, metrics = step(state, batch, jax.random.key(1))
  return dataset, state, metrics


@pytest.fixture
def tiny_config():
  return make_tiny_config

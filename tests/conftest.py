"""Shared test helpers: a tiny, fast config and the repository root on sys.path."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from proxy_jax import config_fields  # pylint: disable=g-import-not-at-top,wrong-import-position


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


@pytest.fixture
def tiny_config():
  return make_tiny_config

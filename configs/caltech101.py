"""Caltech-101 (TFDS `caltech101`, 102 classes incl. background), ResNet-50 at 224 px."""

from configs import dogs


def get_config():
  # Same model, optimiser and proxy settings as the thesis's Stanford Dogs run.
  config = dogs.get_config()
  config.data.name = "caltech101"
  config.data.test_split = "test"
  return config

"""Imagenette (TFDS `imagenette`, 10 easy ImageNet classes), ResNet-50 at 224 px."""

from configs import dogs


def get_config():
  # Same model, optimiser and proxy settings as the thesis's Stanford Dogs run.
  config = dogs.get_config()
  config.data.name = "imagenette"
  config.data.test_split = "validation"
  return config

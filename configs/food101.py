"""Food-101 (TFDS `food101`, 101 dishes, 75,750 training photos), ResNet-50 at 224 px.

Its cache of decoded 224 px images is about 11 GB: point config.data.cache_dir at a big disk."""

from configs import dogs


def get_config():
  # Same model, optimiser and proxy settings as the thesis's Stanford Dogs run.
  config = dogs.get_config()
  config.data.name = "food101"
  config.data.test_split = "validation"
  return config

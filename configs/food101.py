"""Food-101 (TFDS `food101`, 101 dishes, 75,750 training photos), ResNet-50 at 224 px.

Its cache of decoded images, stored at 256 px (data.load_size auto for 224), is about 15 GB
(75,750 x 256 x 256 x 3 bytes): point config.data.cache_dir at a big disk."""

from configs import dogs


def get_config():
  # Same model, optimiser and proxy settings as the thesis's Stanford Dogs run.
  config = dogs.get_config()
  config.data.name = "food101"
  config.data.test_split = "validation"
  return config

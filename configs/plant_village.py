"""PlantVillage (TFDS `plant_village`, 38 leaf-disease classes; no test split, so 10% is carved)."""

from configs import dogs


def get_config():
  # Same model, optimiser and proxy settings as the thesis's Stanford Dogs run.
  config = dogs.get_config()
  config.data.name = "plant_village"
  config.data.test_split = ""
  return config

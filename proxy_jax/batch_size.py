"""The batch-size finder's command line: the largest batch whose train step fits the device.

  python -m proxy_jax.batch_size --config=configs/dogs.py [--num_classes=120] [--ceiling=N]

Prints every probe (predicted and measured memory) and the chosen size; the finder itself is
`proxy_jax.run.batch_finder`, which training also uses for `batch_size=-1`.
"""

import tempfile

from absl import app
from absl import flags
import jax

from proxy_jax import cli, data
from proxy_jax.config import defaults as default_config
from proxy_jax.config import settings as config_settings
from proxy_jax.run import batch_finder, restore, train


def define_flags():
  cli.define_config_flag(default_config.PATH, "Training config file.")
  flags.DEFINE_integer("num_classes", 0, "Classes of the dataset; 0 = load it to count them.")
  flags.DEFINE_integer(
    "ceiling", 0, "Largest batch size tried; 0 = config.batch_size_ceiling or its default."
  )


def count_classes(settings) -> int:
  with tempfile.TemporaryDirectory() as workdir:
    return len(data.load_dataset(settings, workdir).class_names)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  settings = config_settings.parse(flags.FLAGS.config)
  if flags.FLAGS.ceiling:
    settings = config_settings.with_fields(settings, {"batch_size_ceiling": flags.FLAGS.ceiling})
  num_classes = flags.FLAGS.num_classes or count_classes(settings)
  device = jax.devices()[0]
  limit = batch_finder.device_memory_limit(device)
  print(
    f"device: {device.device_kind} ({device.platform}); memory limit: "
    f"{batch_finder.mib(limit)}; ceiling: {batch_finder.resolve_ceiling(settings, limit)}"
  )
  # The command line composes the finder with the trainer (the finder never imports it).
  frozen = restore.load_frozen(settings, num_classes)
  chosen, probes = batch_finder.search(
    settings, num_classes, train.finder_step_factory(settings, num_classes, frozen)
  )
  print(f"{'batch':>6} {'fits':>5} {'predicted':>12} {'measured':>12}  note")
  for p in probes:
    print(
      f"{p.batch_size:>6} {str(p.fits):>5} {batch_finder.mib(p.predicted_bytes):>12} "
      f"{batch_finder.mib(p.measured_bytes):>12}  {p.measured_source or p.reason}"
    )
  print(f"chosen batch size: {chosen}")


if __name__ == "__main__":
  cli.run(main, define_flags, config_default=default_config.PATH)

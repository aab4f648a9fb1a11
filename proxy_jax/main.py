"""Trains a classifier with Proxy Attention: `python -m proxy_jax.main --config=configs/dogs.py`.

The repository's `main.py` runs this; the sweep runner starts one per trial. Without --config it
trains the package's default config (proxy_jax/config/defaults.py: the bundled digits, offline).
The console shows plain progress lines; `--verbose` shows every library's log with absl's
prefix, which `<workdir>/log.txt` always keeps.
"""

import os

from absl import app, flags

from proxy_jax import cli
from proxy_jax.config import defaults as default_config
from proxy_jax.core import console
from proxy_jax.run import train

DEFAULT_CONFIG = default_config.PATH


def define_flags():
  cli.define_config_flag(
    DEFAULT_CONFIG, "Training configuration file; override fields with --config.field=value."
  )
  flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
  flags.DEFINE_bool("verbose", False, "Show every library's log lines with absl's prefix.")


def default_workdir(config_filename: str) -> str:
  """runs/<config file name>; the package's default config is runs/default."""
  if os.path.abspath(config_filename.partition(":")[0]) == DEFAULT_CONFIG:
    return os.path.join("runs", "default")
  return os.path.join("runs", os.path.splitext(os.path.basename(config_filename))[0])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.configure(flags.FLAGS.verbose)
  workdir = flags.FLAGS.workdir or default_workdir(flags.FLAGS["config"].config_filename)
  train.train_and_evaluate(flags.FLAGS.config, workdir)


def run():
  """Defines the flags and trains; absl's own flag parser, as flax's examples use."""
  define_flags()
  cli.run_main(main, config_default=DEFAULT_CONFIG)


if __name__ == "__main__":
  run()

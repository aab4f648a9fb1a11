"""Trains a classifier with Proxy Attention: `python main.py --config=configs/dogs.py`.

The console shows plain progress lines; `--verbose` shows every library's log with absl's
prefix, which `<workdir>/log.txt` always keeps.
"""

import os

from absl import app, flags

from proxy_jax import console, errors, train

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
FLAGS = flags.FLAGS
errors.define_config_flag(
    DEFAULT_CONFIG, "Training configuration file; override fields with --config.field=value.")
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
flags.DEFINE_bool("verbose", False, "Show every library's log lines with absl's prefix.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.configure(FLAGS.verbose)
  config_name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = FLAGS.workdir or os.path.join("runs", config_name)
  train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == "__main__":
  errors.run_main(main, config_default=DEFAULT_CONFIG)

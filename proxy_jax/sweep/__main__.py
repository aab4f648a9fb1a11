"""The sweep command (see proxy_jax.sweep):

  python -m proxy_jax.sweep --config=configs/dogs.py --sweep=configs/sweeps/proxy_grid.py \
      --workdir=runs/grid [--shard=0/4] [--dry-run] [--retry-failed] [--parallel=2]
"""

import signal
import sys

from absl import app
from absl import flags
from absl import logging

from proxy_jax import cli
from proxy_jax.config import defaults as default_config
from proxy_jax.sweep import grid, runner


def define_flags():
  # Defined on demand, not at import: sweep files and other tools import this package.
  flags.DEFINE_string("config", default_config.PATH, "Config file passed to every trial.")
  flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().", required=True)
  flags.DEFINE_string(
    "workdir", None, "Sweep directory (one subdirectory per trial).", required=True
  )
  runner.define_runner_flags("Override for every trial, e.g. --set num_epochs=2.")


def _raise_interrupt(signum, frame):
  del frame
  raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # A batch scheduler's SIGTERM stops the trial like Ctrl-C: journal says "started", resumable.
  signal.signal(signal.SIGTERM, _raise_interrupt)
  f = flags.FLAGS
  counts = runner.run_sweep(
    f.config,
    f.sweep,
    f.workdir,
    grid.parse_shard(f.shard),
    f.retry_failed,
    f.dry_run,
    f.python,
    f.program,
    tuple(f.set),
    f.trial_timeout,
    f.parallel,
    f.devices_per_trial,
  )
  logging.info("sweep counts: %s", counts)
  if counts["failed"]:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, define_flags)

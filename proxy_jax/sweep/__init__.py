"""Resumable grid search: one fresh training subprocess per trial, a crash-safe journal.

  python -m proxy_jax.sweep --config=configs/dogs.py --sweep=configs/sweeps/proxy_grid.py \
      --workdir=runs/grid [--shard=0/4] [--dry-run] [--retry-failed]

A sweep file defines `get_sweep()` returning a list of override dicts ({"proxy.threshold": 0.85,
...}), usually built with `product`, `zip_fields` and `concat` from this package, or of named
trials `(name, overrides)` (a study's arms, see proxy_jax/study). Each trial runs as its own
process so a crash, a leak or accelerator memory held by one trial cannot reach the next, in
`<workdir>/<trial name>`, a name derived from its overrides alone (stable when the grid grows)
unless the trial is named. The journal (`journal*.jsonl`, one JSON object per line, appended with
fsync) records started / finished / failed; a torn last line from a kill is ignored. Re-running
the command skips finished trials, re-runs an interrupted one (training resumes from its
checkpoint) and retries failed ones only with --retry-failed.

Modules: `grid` (the grid language, trial names, shards), `files` (sweep and config files),
`journal` (the journal and what to do next), `runner` (running a grid's trials), `trial_process`
(one trial's subprocess), `slots` (slices of the machine), `__main__` (the CLI),
`carry` (finished trials exported into the checkout and restored in a later session).
"""

from proxy_jax.sweep.files import check_overrides, load_sweep
from proxy_jax.sweep.grid import (
  add_set_overrides,
  check_trial_name,
  concat,
  format_value,
  named_trials,
  parse_shard,
  product,
  shard_trials,
  trial_name,
  zip_fields,
)
from proxy_jax.sweep.journal import (
  FAILED,
  FINISHED,
  STARTED,
  append_record,
  journal_path,
  plan,
  read_journal,
  trial_states,
)
from proxy_jax.sweep.runner import SWEEP_FILE, TRIAL_FILE, define_runner_flags, run_sweep
from proxy_jax.sweep.runner import run_trials
from proxy_jax.sweep.trial_process import SWEEP_LOCK_FILE, TrialBusy, run_trial, trial_command

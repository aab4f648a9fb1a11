"""The study command: run a study's trials through the sweep runner, then write its report.

  python -m proxy_jax.study --study=configs/studies/digits.py --workdir=runs/study_digits \
      [--shard=i/n] [--out=experiments/results/<name>] \
      [--report=auto|only|never|explanations] \
      [--set=field=value ...] [--explain=false] [--dry-run] [--retry-failed]

Re-running the same command resumes: finished trials are skipped, an interrupted one resumes
from its checkpoint. With --shard each machine of a job array runs its part; the report is
written by whichever invocation finds every trial finished (or by --report=only, which trains
nothing and marks a partial study as such). A failed fairness check writes no report.
--report=explanations trains nothing and writes no report: it scores the finished runs'
explanations into their trial folders (explanations.json, which `sweep.carry` carries), printing
only how many, so a study that spans sessions keeps them without anyone reading a result early.
"""

import os
import shlex
import sys
import time

from absl import app
from absl import flags

from proxy_jax import cli, sweep
from proxy_jax.study import runs as runs_lib
from proxy_jax.study import spec


def share_compilations(workdir: str) -> None:
  """Trials of a study compile the same programs (every seed of an arm has the same shapes):
  JAX's persistent compilation cache in the study folder lets all but the first reuse them. The
  executables are the same, so results are too. An existing JAX_COMPILATION_CACHE_DIR wins."""
  os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(workdir), "jax_cache")
  )
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def run_trials(
  study: spec.Study,
  workdir: str,
  common: dict,
  shard=(0, 1),
  *,
  retry_failed=False,
  dry_run=False,
  python=sys.executable,
  program="",
  trial_timeout=None,
  compilation_cache=True,
  parallel=1,
  devices_per_trial=0,
) -> dict:
  if compilation_cache and not dry_run:
    share_compilations(workdir)
  return sweep.run_trials(
    study.config,
    spec.trials(study),
    common,
    workdir,
    shard,
    retry_failed,
    dry_run,
    python,
    program,
    trial_timeout,
    label=f"study {study.name}",
    record_fields={"commit": runs_lib.code_version(), "study": study.name},
    parallel=parallel,
    devices_per_trial=devices_per_trial,
  )


def write_study_report(
  study: spec.Study,
  workdir: str,
  out: str,
  command: str,
  explain: bool = True,
  started: float | None = None,
) -> str:
  """Checks fairness, scores explanations and writes the report; StudyError if unfair."""
  from proxy_jax.study import explanations, report  # pylint: disable=g-import-not-at-top

  started = time.time() if started is None else started
  runs, missing = runs_lib.load_runs(study, workdir)
  if (study.baseline, study.seeds[0]) not in runs and not any(
    (study.baseline, s) in runs for s in study.seeds
  ):
    raise spec.StudyError(
      f"{workdir}: no finished run of the baseline arm "
      f"{study.baseline!r}; nothing to compare against"
    )
  checks, failures = runs_lib.fairness_checks(study, runs)
  if failures:
    raise spec.StudyError(
      "the fairness checks failed, so no report was written:\n  " + "\n  ".join(failures)
    )
  rows, panels, seconds = explanations.score_runs(study, runs) if explain else ([], [], 0.0)
  return report.write_report(
    study,
    out,
    runs=runs,
    missing=missing,
    checks=checks,
    failures=failures,
    explanation_rows=rows,
    panels=panels,
    explain_seconds=seconds,
    command=command,
    started=started,
  )


def score_explanations(study: spec.Study, workdir: str) -> None:
  """Scores every finished run's explanations into its trial folder; prints counts only."""
  from proxy_jax.study import explanations  # pylint: disable=g-import-not-at-top

  runs, missing = runs_lib.load_runs(study, workdir)
  if not runs:
    print(f"study {study.name}: no finished run to score", flush=True)
    return
  rows, _, seconds = explanations.score_runs(study, runs, grid=False)
  cached = sum(bool(r.get("from_cache")) for r in rows)
  print(
    f"study {study.name}: explanations of {len(rows)} finished run(s) in their trial "
    f"folders ({len(rows) - cached} scored now, {cached} already there; {len(missing)} "
    f"run(s) not finished), {seconds:.0f} s",
    flush=True,
  )


def complete(study: spec.Study, workdir: str) -> bool:
  states = sweep.trial_states(workdir)
  return all(states.get(t["name"], {}).get("status") == sweep.FINISHED for t in spec.trials(study))


# ---------------------------------------------------------------- CLI


def define_flags():
  flags.DEFINE_string("study", None, "Study file defining get_study().", required=True)
  flags.DEFINE_string(
    "workdir", None, "Directory of the study's runs (one per arm and seed).", required=True
  )
  flags.DEFINE_string(
    "out",
    "",
    "Report folder (default experiments/results/<study name>, "
    f"or ${spec.RESULTS_DIR_ENV}/<study name>).",
  )
  flags.DEFINE_enum(
    "report",
    "auto",
    ["auto", "only", "never", "explanations"],
    "auto: write the report once every trial has finished; only: train "
    "nothing, report what has finished; never: train only; explanations: "
    "train nothing, score the finished runs' explanations, report nothing.",
  )
  flags.DEFINE_bool("explain", True, "Score every final model's explanations in the report.")
  flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Share compiled programs between trials (JAX persistent cache in <workdir>/jax_cache).",
  )
  sweep.define_runner_flags("Common override, e.g. --set data.path=/data/x.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  command = shlex.join(["python", "-m", "proxy_jax.study"] + sys.argv[1:])
  # Everything a user can get wrong is refused here (errors.UserError: one line, exit 2),
  # before any trial runs.
  study = spec.load_study(f.study)
  study = spec.with_common_overrides(study, f.set, f.workdir)
  shard = sweep.parse_shard(f.shard)
  sweep.check_overrides(study.config, spec.trials(study), study.common)
  spec.check_trial_configs(study)
  counts = {"failed": 0}
  if f.report == "explanations":
    score_explanations(study, f.workdir)
    return
  if f.report != "only":
    counts = run_trials(
      study,
      f.workdir,
      study.common,
      shard,
      retry_failed=f.retry_failed,
      dry_run=f.dry_run,
      python=f.python,
      program=f.program,
      trial_timeout=f.trial_timeout,
      compilation_cache=f.compilation_cache,
      parallel=f.parallel,
      devices_per_trial=f.devices_per_trial,
    )
  if f.dry_run or f.report == "never":
    return
  out = f.out or os.path.join(spec.results_dir(), study.name)
  if f.report == "auto" and not complete(study, f.workdir):
    print(
      f"study {study.name}: not every trial has finished (other shards, or failures: "
      "rerun with --retry-failed); no report yet. --report=only writes a partial one.",
      flush=True,
    )
  else:
    text = write_study_report(study, f.workdir, out, command, f.explain)
    print(text)
    print(f"wrote {out}", flush=True)
  if counts["failed"]:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, define_flags)

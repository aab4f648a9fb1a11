"""Reusing another study's finished runs where a study repeats them exactly.

  python -m proxy_jax.study.reuse --study=configs/studies/imagenette_mini_resnet.py \
      --workdir=runs/comparison --from=runs/control [--set field=value ...]

The fair-fight comparison repeats the positive control's five arms at seeds 0-2: 15 runs,
about 2.5 core-hours, that would compute the same numbers again (on one code version and one
compute slice a run is bit-identical to itself). This copies such runs into the study's workdir
before the study runs, so that it skips them. A run is reused only where it is the same run:

- the source (another study's workdir, or a folder written by `python -m proxy_jax.sweep.carry
  export`) finished it: its journal says so and its summary.json reads back;
- it has the trial's name (arm and seed), and its resolved config (summary.json) equals the
  trial's resolved config here field by field: the base config, the study's common overrides
  and --set (pass the same --set as to the study, data.cache_dir included), the arm's
  overrides and the seed. Fields the trainer adds itself (dtype_resolved) are not compared.

What a copy cannot show, the study checks as for any run: its fairness checks refuse runs of
different code versions or compute slices. So run the study from a snapshot of the commit the
reused runs record (printed here), with the same --parallel.

Each reused trial folder is copied whole (checkpoints included, which the report's explanation
scores restore; a carried folder has none, so its scores come from its explanations.json where
a report wrote one, else report with --explain=false), then its journal
records, each marked `reused_from` (the report lists the reused runs). Nothing is overwritten:
a trial the workdir already has (a folder or a journal record) is left as it is and named.
"""

import json
import os
import shutil

from absl import app
from absl import flags

from proxy_jax import cli, sweep
from proxy_jax.core import errors
from proxy_jax.run import records
from proxy_jax.study import runs as runs_lib
from proxy_jax.study import spec
from proxy_jax.sweep import carry, journal

PARTIAL_SUFFIX = ".reuse-partial"  # A copy in progress; renamed into place when complete.


def _plain(tree):
  # The JSON spelling of a value (tuples become lists), as summary.json holds it.
  return json.loads(json.dumps(tree, default=str))


def config_differences(expected: dict, found: dict) -> list[str]:
  """Fields of the expected resolved config that the found one lacks or holds otherwise."""
  want, have = runs_lib.flatten(_plain(expected)), runs_lib.flatten(_plain(found))
  return sorted(key for key, value in want.items() if key not in have or have[key] != value)


def finished_runs(source: str) -> dict[str, list[dict]]:
  """{trial name: its journal records} of every trial the source finished."""
  if not os.path.isfile(os.path.join(source, sweep.SWEEP_FILE)):
    raise errors.MissingPathError(
      f"--from={source}: no {sweep.SWEEP_FILE}, so not the workdir "
      "of a study that has run, nor a folder carry export wrote"
    )
  finished, _ = carry.trial_states(source)
  kept = {name: [] for name in finished}
  for record in journal.read_journal(source):
    if record["trial"] in kept:
      kept[record["trial"]].append(record)
  return kept


def _refusal(study: spec.Study, trial: dict, trial_dir: str) -> str:
  """Why the source's run of `trial` is not this study's run ("" when it is)."""
  summary = records.read_summary(trial_dir)
  expected = spec.trial_config(study, trial["overrides"]).to_dict()
  differing = config_differences(expected, summary.config)
  if differing:
    shown = ", ".join(differing[:4]) + (", ..." if len(differing) > 4 else "")
    return f"its resolved config differs in {shown}"
  return ""


def plan(study: spec.Study, workdir: str, source: str) -> dict:
  """{"reuse": {name: records}, "present": [names], "refused": {name: why}} for the study's
  trials that the source finished."""
  if os.path.realpath(source) == os.path.realpath(workdir):
    raise errors.WorkdirError(f"--from={source} is the study's own --workdir")
  available = finished_runs(source)
  own = set(sweep.trial_states(workdir))
  result = {"reuse": {}, "present": [], "refused": {}}
  for trial in spec.trials(study):
    name = trial["name"]
    if name not in available:
      continue
    if name in own or os.path.lexists(os.path.join(workdir, name)):
      result["present"].append(name)
      continue
    why = _refusal(study, trial, os.path.join(source, name))
    if why:
      result["refused"][name] = why
    else:
      result["reuse"][name] = available[name]
  return result


def _copy_trial(source_dir: str, target_dir: str) -> None:
  """The whole trial folder, less hidden files (locks, temporaries); atomic by rename."""
  partial = target_dir + PARTIAL_SUFFIX
  if os.path.lexists(partial):  # Left by a copy that was killed: it was never renamed.
    shutil.rmtree(partial)
  shutil.copytree(
    source_dir,
    partial,
    symlinks=True,
    ignore=lambda _, names: [n for n in names if n.startswith(".")],
  )
  os.rename(partial, target_dir)


def reuse(study: spec.Study, workdir: str, source: str) -> dict:
  """Copies the reusable runs (see the module doc) into `workdir`; returns plan()'s result
  with "commits": the code versions the reused runs record."""
  result = plan(study, workdir, source)
  if result["reuse"]:
    os.makedirs(workdir, exist_ok=True)
  journal_file = journal.journal_path(workdir, (0, 1))
  marked = os.path.abspath(source)
  for name, kept in result["reuse"].items():
    _copy_trial(os.path.join(source, name), os.path.join(workdir, name))
    # The records last: a copy killed before them leaves a folder the study runs again.
    for record in kept:
      journal.append_record(journal_file, {**record, "reused_from": marked})
  result["commits"] = sorted(
    {
      r.get("commit", "unrecorded")
      for kept in result["reuse"].values()
      for r in kept
      if r["status"] == journal.FINISHED
    }
  )
  return result


# ---------------------------------------------------------------- CLI


def define_flags():
  flags.DEFINE_string(
    "study", None, "The study file whose workdir receives the runs.", required=True
  )
  flags.DEFINE_string("workdir", None, "The study's workdir (created if missing).", required=True)
  flags.DEFINE_string(
    "from",
    None,
    "Another study's workdir, or a folder written by python -m proxy_jax.sweep.carry export.",
    required=True,
  )
  flags.DEFINE_multi_string("set", [], "The study's --set overrides, exactly as given to it.")


def _names(names) -> str:
  names = list(names)
  return ", ".join(names) if names else "none"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  study = spec.load_study(f.study)
  study = spec.with_common_overrides(study, f.set, f.workdir)
  result = reuse(study, f.workdir, f["from"].value)
  print(
    f"reused {len(result['reuse'])} finished run(s) from {f['from'].value} into "
    f"{f.workdir}: {_names(result['reuse'])}",
    flush=True,
  )
  if result["present"]:
    print(f"left as they are (the workdir has them already): {_names(result['present'])}")
  for name, why in result["refused"].items():
    print(f"not reused: {name}: {why}")
  if result["commits"]:
    print(
      f"the reused runs record code version {', '.join(result['commits'])}: run the study "
      "from a snapshot of it, with the --parallel they ran with (the study refuses runs of "
      "mixed code versions or compute slices)",
      flush=True,
    )


if __name__ == "__main__":
  cli.run(main, define_flags)

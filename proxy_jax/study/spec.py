"""A study file and the named trials it expands to.

A study file is a Python file whose `get_study()` returns a `Study`. Its arms are config
overrides on top of the base config and the common overrides; the harness adds `seed` to every
trial itself. Arms may not override what every arm of a seed must share (the split, the initial
weights, the data order and the number of epochs): `load_study` refuses such an arm before
anything runs.
"""

import ast
import dataclasses
import os
import re

from proxy_jax import sweep
from proxy_jax.config import fields as config_fields, files as config_files
from proxy_jax.core import errors
from proxy_jax.study import power as power_lib
from proxy_jax.study import preregistration

# Fields that decide the split, the initial weights, the data order or the epochs of a run.
SHARED_FIELDS = ("seed", "num_epochs", "image_size", "batch_size")
SHARED_PREFIXES = ("data.", "model.")
DEFAULT_EXPLAIN = {
  "split": "test",
  "cam": "gradcampp",
  "num_images": 256,
  "steps": 16,
  "grid_images": 8,
}


# Where study reports and pilot choices go: experiments/results/ of the working directory (the
# repository root in the README's commands), or this variable's folder (a test, or a run from
# an exported snapshot that writes its results elsewhere).
RESULTS_DIR_ENV = "PROXY_JAX_RESULTS_DIR"


def results_dir() -> str:
  return os.environ.get(RESULTS_DIR_ENV) or os.path.join("experiments", "results")


class StudyError(errors.UserError, ValueError):
  """A study file, its runs or its fairness checks cannot give a trustworthy report."""


@dataclasses.dataclass(frozen=True)
class Study:
  """One setting, its seeds and its named arms (the first arm need not be the baseline).

  config: base config file, relative to the working directory or absolute ("path[:argument]").
  arms: arm name -> overrides ({"proxy.enabled": True}); names are directory-safe.
  seeds: training seeds; every arm runs every seed, paired by seed.
  common: overrides for every trial (the setting: epochs, data paths, model).
  baseline: the arm the others are compared against.
  explain: explanation scoring of the final models (split, cam, num_images, steps, grid_images).
  regime, gate, hypotheses, family, controls, control_arms, equivalence, power: what is
    declared before any arm runs, checked by the report (proxy_jax/study/preregistration.py,
    proxy_jax/study/power.py).
  declared_when: when the declaration was made, in words, if not before every run of its arms
    (a follow-up declared after some results were seen is exploratory, and says so).
  """

  name: str
  config: str
  arms: dict
  seeds: tuple
  common: dict = dataclasses.field(default_factory=dict)
  baseline: str = "baseline"
  explain: dict = dataclasses.field(default_factory=dict)
  description: str = ""
  regime: str = ""
  gate: preregistration.Gate | None = None
  hypotheses: tuple = ()
  family: tuple = ()
  controls: tuple = ()
  control_arms: tuple = ()
  equivalence: tuple = ()
  power: "power_lib.Power | None" = None
  declared_when: str = ""


def resolve_config_path(config: str) -> str:
  path, sep, argument = config.partition(":")
  # Like every --config flag: relative to where the command runs (the repository root in the
  # README's commands), so an installed package needs no checkout.
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise StudyError(f"study config {config!r}: no such file {path}")
  return path + sep + argument


def spec_error(source: str, message: str) -> StudyError:
  return StudyError(f"{source}: {message}")


def validate(study: Study, source: str = "study") -> Study:
  """The study with its config path resolved and explain defaults filled; StudyError if bad."""
  if not re.fullmatch(preregistration.STUDY_NAME, study.name or ""):
    raise StudyError(f"{source}: name {study.name!r} must be letters, digits, _ or -")
  if len(study.arms) < 2:
    raise StudyError(f"{source}: a study needs at least two arms, got {list(study.arms)}")
  if study.baseline not in study.arms:
    raise StudyError(
      f"{source}: baseline arm {study.baseline!r} is not one of the arms {list(study.arms)}"
    )
  seeds = list(study.seeds)
  if (
    len(seeds) < 2
    or len(set(seeds)) != len(seeds)
    or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
  ):
    raise StudyError(
      f"{source}: seeds {seeds!r} must be at least two distinct integers "
      "(a paired interval needs two)"
    )
  for arm, overrides in study.arms.items():
    try:
      sweep.check_trial_name(trial_name(arm, seeds[0]))
    except ValueError as error:
      raise spec_error(source, f"arm {arm!r}: {error}") from error
    for key in overrides:
      if key in SHARED_FIELDS or key.startswith(SHARED_PREFIXES):
        raise StudyError(
          f"{source}: arm {arm!r} overrides {key!r}, which every arm of a seed must share "
          "(split, initial weights, data order, epochs); put it in the study's common "
          "overrides or make it a separate study"
        )
  if "seed" in study.common:
    raise StudyError(f"{source}: common overrides set 'seed'; list the seeds in `seeds`")
  unknown = set(study.explain) - set(DEFAULT_EXPLAIN)
  if unknown:
    raise StudyError(
      f"{source}: explain has unknown keys {sorted(unknown)}; allowed: {sorted(DEFAULT_EXPLAIN)}"
    )
  explain = {**DEFAULT_EXPLAIN, **study.explain}
  if explain["split"] not in ("val", "test"):
    raise StudyError(f"{source}: explain split {explain['split']!r} must be 'val' or 'test'")
  try:
    family = preregistration.check(study)
  except ValueError as error:
    raise spec_error(source, str(error)) from error
  return dataclasses.replace(
    study,
    config=resolve_config_path(study.config),
    seeds=tuple(seeds),
    arms={a: dict(o) for a, o in study.arms.items()},
    common=dict(study.common),
    explain=explain,
    hypotheses=tuple(study.hypotheses),
    family=family,
    controls=tuple(study.controls),
    control_arms=tuple(study.control_arms),
    equivalence=tuple(study.equivalence),
  )


def load_study(path: str) -> Study:
  if not os.path.isfile(path):
    raise StudyError(f"study file {path!r} does not exist")
  module = config_files.load_python_file(path)
  if not hasattr(module, "get_study"):
    raise StudyError(f"{path} defines no get_study()")
  study = module.get_study()
  if not isinstance(study, Study):
    raise StudyError(f"{path}: get_study() returned {type(study).__name__}, not a Study")
  return validate(study, path)


def trial_name(arm: str, seed: int) -> str:
  return f"{arm}_seed{seed}"


def trials(study: Study) -> list[dict]:
  """Named trials, seed by seed (every seed runs all arms before the next seed starts, so an
  interrupted study has complete pairs for every arm), with the seed added to the overrides."""
  grid = [
    (trial_name(arm, seed), {**overrides, "seed": seed})
    for seed in study.seeds
    for arm, overrides in study.arms.items()
  ]
  return sweep.named_trials(grid, study.name)


def arm_and_seed(study: Study) -> dict:
  """trial name -> (arm, seed)."""
  return {trial_name(arm, seed): (arm, seed) for seed in study.seeds for arm in study.arms}


def _typed(text, reference):
  """A --set string as the type of the config field it overrides (as the flag parser does)."""
  if not isinstance(text, str) or isinstance(reference, str):
    return text
  if isinstance(reference, bool):
    if text.lower() in ("true", "false"):
      return text.lower() == "true"
    raise ValueError(f"{text!r} is not true or false")
  return ast.literal_eval(text)


def with_common_overrides(study: Study, extra, workdir: str) -> Study:
  """The study with its common overrides, then --set, and a study-wide decode cache in
  `workdir` unless one is set: what every trial of the study command runs with."""
  common = sweep.add_set_overrides(study.common, extra)
  if "seed" in common:
    raise StudyError(
      "--set seed=... would give every arm and seed one seed; list seeds in the study file"
    )
  config = config_files.load_config(study.config)
  if "data.cache_dir" not in common and not config.data.cache_dir:
    # One decode of the images for all trials instead of one per trial.
    common["data.cache_dir"] = os.path.join(os.path.abspath(workdir), "data_cache")
  return dataclasses.replace(study, common=common)


def trial_config(study: Study, overrides: dict, label: str = ""):
  """The resolved config of one trial: the base config, the common overrides, then the trial's
  (with its seed), typed as the trainer's flag parser types them; StudyError if one is bad
  (its message names the study, then `label`, e.g. the arm)."""
  from proxy_jax.config import checks as config_lib  # pylint: disable=g-import-not-at-top

  config = config_files.load_config(study.config)
  flat = {**study.common, **overrides}
  try:
    for key, value in flat.items():
      flat[key] = _typed(value, config_fields.get_field(config, key))
    config.update_from_flattened_dict(flat)
    config_lib.validate(config)
  except (KeyError, TypeError, ValueError, SyntaxError) as error:
    raise StudyError(f"{study.name}: {label + ': ' if label else ''}{error}") from error
  return config


def check_trial_configs(study: Study) -> None:
  """Builds every arm's resolved config and runs config validation on it, before any trial:
  a typo in an arm's value or a missing data folder fails here, not in trial 37 of 80."""
  for arm, overrides in study.arms.items():
    trial_config(study, {**overrides, "seed": study.seeds[0]}, f"arm {arm!r}")

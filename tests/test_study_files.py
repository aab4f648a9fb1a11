"""The study files' building blocks (the thesis schedule scaled to a study's epochs, the arms at
small-image settings) and the fair-fight study files: refused before their pilot has chosen,
then resolving to valid trials, listed by --dry-run."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from proxy_jax import sweep
from proxy_jax.config import files as config_files, checks as config_lib
from proxy_jax.run import proxy_step
from proxy_jax.study import arms, spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = os.path.join(REPO, "configs", "studies")
REGIME = os.path.join(REPO, "configs", "imagenette_mini_resnet.py")
CHOICE = {"optimizer.learning_rate": 0.1, "optimizer.weight_decay": 5e-4}
# Study file -> (its pilot's results folder, arms, seeds).
FAIR_FIGHT = {
  "imagenette_mini_control": ("imagenette_mini_pilot", 5, 5),
  "imagenette_mini_resnet": ("imagenette_mini_pilot", 16, 3),
  "imagenette_mini_gpu": ("imagenette_mini_gpu_pilot", 16, 5),
}
# Any existing folder stands in for the photos: validation only checks that it is one.
DATA = {"data.path": os.path.join(REPO, "tests"), "data.test_path": os.path.join(REPO, "tests")}


@pytest.mark.parametrize(
  "epochs,schedule",
  [
    (10, "1,p,3,p,2,p,3,p,1"),
    (20, "3,p,5,p,5,p,5,p,2"),
    (36, "5,p,9,p,9,p,9,p,4"),
    (60, "8,p,15,p,15,p,15,p,7"),
  ],
)
def test_thesis_schedule_scales_the_proxy_steps(epochs, schedule):
  """The schedules the existing studies wrote by hand, and the 60-epoch one; each proxy step
  sits after the nearest epoch to the thesis's share (5, 14, 23 and 32 of 36)."""
  assert arms.thesis_schedule(epochs) == schedule
  due = proxy_step.parse_schedule(schedule, epochs, True).proxy_epochs
  assert [abs(d - s * epochs / 36) <= 0.5 for d, s in zip(due, (5, 14, 23, 32))] == [True] * 4


def test_thesis_schedule_refuses_too_few_epochs():
  assert arms.thesis_schedule(5) == "1,p,1,p,1,p,1,p,1"
  with pytest.raises(ValueError, match="4 epochs are too few"):
    arms.thesis_schedule(4)


def test_small_image_settings_replace_the_default_ones_everywhere():
  small = arms.thesis_arms(arms.thesis_proxy("1,p,1"), arms.SMALL_IMAGE)
  default = arms.thesis_arms(arms.thesis_proxy("1,p,1"))
  assert list(small) == list(default)  # The same arms, in the same order.
  assert small["cutmix"]["augment.mix_prob"] == 0.5 and small["mixup"]["augment.mix_alpha"] == 1
  for name in ("proxy+cutmix", "proxy+cutmix-skip"):
    assert small[name]["augment.mix_prob"] == 0.5 and small[name]["proxy.enabled"]
  # Every method's small-image values come from the settings table.
  assert small["saliencymix"]["augment.mix_prob"] == 0.5
  assert (
    small["cutout"]["augment.erase_size"] == 0.5 and small["snapmix"]["augment.mix_prob"] == 0.5
  )


@pytest.fixture
def results(tmp_path, monkeypatch):
  """An empty results folder in place of experiments/results/."""
  monkeypatch.setenv(spec.RESULTS_DIR_ENV, str(tmp_path / "results"))
  return tmp_path / "results"


def _choose(results, pilot_name):
  os.makedirs(results / pilot_name, exist_ok=True)
  (results / pilot_name / "chosen.json").write_text(json.dumps({"overrides": CHOICE}))


@pytest.mark.parametrize("name", sorted(FAIR_FIGHT))
def test_fair_fight_studies_refuse_to_load_before_their_pilot(results, name):
  with pytest.raises(
    spec.StudyError,
    match=f"{FAIR_FIGHT[name][0]}/chosen.json does not "
    "exist: this study takes its baseline's setting",
  ):
    spec.load_study(os.path.join(STUDIES, f"{name}.py"))


@pytest.mark.parametrize("name", sorted(FAIR_FIGHT))
def test_fair_fight_studies_resolve_to_valid_trials(results, name):
  pilot_name, num_arms, num_seeds = FAIR_FIGHT[name]
  _choose(results, pilot_name)
  study = spec.load_study(os.path.join(STUDIES, f"{name}.py"))
  assert len(study.arms) == num_arms and len(study.seeds) == num_seeds
  assert {**study.common, **CHOICE} == study.common and study.common["num_epochs"] == 60
  assert study.gate.min_train_accuracy == 0.95 and study.gate.min_gap == 0.15 and study.regime
  if name != "imagenette_mini_resnet":  # The comparison is exploratory: no family.
    assert [(h.arm, h.direction) for h in study.hypotheses] == [
      ("mixup", "higher"),
      ("cutmix", "higher"),
    ]
    assert study.family == ("mixup", "cutmix", "proxy", "proxy+cutmix")
  proxy_arm = study.arms["proxy"]
  assert proxy_arm["proxy.schedule"] == "8,p,15,p,15,p,15,p,7" and proxy_arm["proxy.enabled"]
  if name != "imagenette_mini_gpu":  # Small images: the CIFAR references' settings.
    assert study.arms["cutmix"] == {**arms.BASELINE, **arms.SMALL_IMAGE["cutmix"]}
  # Every arm's resolved config is valid: fields, values, the schedule against the epochs.
  checked = dataclasses.replace(study, common={**study.common, **DATA})
  sweep.check_overrides(checked.config, spec.trials(checked), checked.common)
  spec.check_trial_configs(checked)


def test_the_mixup_follow_up_repeats_the_controls_runs(results):
  """Its baseline and alpha-1 arms are the control's (so python -m proxy_jax.study.reuse takes
  those runs); the new arm is MixUp at the paper's ImageNet setting, its one hypothesis."""
  _choose(results, "imagenette_mini_pilot")
  control = spec.load_study(os.path.join(STUDIES, "imagenette_mini_control.py"))
  study = spec.load_study(os.path.join(STUDIES, "imagenette_mini_control_mixup.py"))
  assert (study.config, study.common, study.seeds) == (
    control.config,
    control.common,
    control.seeds,
  )
  assert {a: study.arms[a] for a in ("baseline", "mixup")} == {
    a: control.arms[a] for a in ("baseline", "mixup")
  }
  assert study.arms["mixup-imagenet"] == {
    **arms.BASELINE,
    "augment.mix": "mixup",
    "augment.mix_alpha": 0.2,
    "augment.mix_prob": 1.0,
  }
  assert [(h.arm, h.direction) for h in study.hypotheses] == [("mixup-imagenet", "higher")]
  assert study.family == ("mixup", "mixup-imagenet") and study.gate == control.gate
  spec.check_trial_configs(dataclasses.replace(study, common={**study.common, **DATA}))


def test_the_budget_follow_up_is_the_control_with_three_times_the_epochs(results):
  _choose(results, "imagenette_mini_pilot")
  control = spec.load_study(os.path.join(STUDIES, "imagenette_mini_control.py"))
  study = spec.load_study(os.path.join(STUDIES, "imagenette_mini_control_budget.py"))
  assert study.arms == {a: control.arms[a] for a in ("baseline", "mixup", "cutmix")}
  assert study.common == {
    **control.common,
    "num_epochs": 180,
    "proxy.schedule": arms.thesis_schedule(180),
  }
  assert study.seeds == (0, 1, 2) and study.gate == control.gate
  assert study.hypotheses == control.hypotheses and study.family == ("mixup", "cutmix")
  assert "180 epochs" in study.regime and "60 epochs" not in study.regime
  spec.check_trial_configs(dataclasses.replace(study, common={**study.common, **DATA}))


def test_the_regime_config_at_both_sizes():
  cpu, gpu = config_files.load_config(REGIME), config_files.load_config(REGIME + ":gpu")
  for config in (cpu, gpu):
    config.data.path = config.data.test_path = DATA["data.path"]
    config_lib.validate(config)
    assert config.optimizer.name == "sgd" and config.optimizer.nesterov
    assert config.num_epochs == 60 and not config.proxy.enabled and config.augment.flip
  assert (cpu.image_size, cpu.data.load_size, cpu.augment.crop, cpu.model.width) == (
    32,
    32,
    "pad",
    16,
  )
  assert (gpu.image_size, gpu.augment.crop, gpu.dtype) == (128, "random_resized", "bfloat16")
  with pytest.raises(ValueError, match="choose one of cpu, gpu"):
    config_files.load_config(REGIME + ":tpu")


def _run(*args, env):
  return subprocess.run(
    [sys.executable, "-m", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "PYTHONPATH": REPO, **env},
  )


@pytest.mark.slow
def test_dry_runs_list_the_pilot_and_the_control(tmp_path, results):
  data = [f"--set={k}={v}" for k, v in DATA.items()]
  env = {spec.RESULTS_DIR_ENV: str(results)}
  refused = _run(
    "proxy_jax.study",
    "--study=configs/studies/imagenette_mini_control.py",
    f"--workdir={tmp_path / 'control'}",
    "--dry-run",
    *data,
    env=env,
  )
  assert refused.returncode == 2 and refused.stderr.strip().startswith("error: ")
  assert "chosen.json does not exist" in refused.stderr
  pilot = _run(
    "proxy_jax.sweep",
    f"--config={REGIME}",
    "--sweep=configs/sweeps/imagenette_mini_pilot.py",
    f"--workdir={tmp_path / 'pilot'}",
    "--dry-run",
    *data,
    env=env,
  )
  assert pilot.returncode == 0, pilot.stderr[-2000:]
  assert "16 trials" in pilot.stdout and pilot.stdout.count("  run ") == 16
  assert (
    "--config.optimizer.learning_rate=0.025 --config.optimizer.weight_decay=0.0005 "
    "--config.seed=0" in pilot.stdout
  )
  _choose(results, "imagenette_mini_pilot")
  control = _run(
    "proxy_jax.study",
    "--study=configs/studies/imagenette_mini_control.py",
    f"--workdir={tmp_path / 'control'}",
    "--dry-run",
    *data,
    env=env,
  )
  assert control.returncode == 0, control.stderr[-2000:]
  assert "25 trials" in control.stdout and control.stdout.count("  run ") == 25
  assert "proxy+cutmix_seed4" in control.stdout
  assert not os.path.exists(tmp_path / "control")  # A dry run writes nothing.


def _paired_std(study_name: str, arm: str, against: str) -> float:
  """The sample sd of (arm - against) test accuracy over a committed study's seeds."""
  import pandas as pd  # pylint: disable=g-import-not-at-top

  runs = pd.read_csv(os.path.join(REPO, "experiments", "results", study_name, "runs.csv"))
  table = runs.pivot(index="seed", columns="arm", values="test_accuracy")
  return float((table[arm] - table[against]).std(ddof=1))


def test_the_powered_study_declares_what_issue_29_asks(results):
  """Fresh seeds, the five arms, Holm over three tests (one against mixup), the TOST, the
  control rule, and power figures that follow from the control studies' committed spreads."""
  _choose(results, "imagenette_mini_pilot")
  control = spec.load_study(os.path.join(STUDIES, "imagenette_mini_control.py"))
  study = spec.load_study(os.path.join(STUDIES, "imagenette_mini_powered.py"))
  assert study.seeds == tuple(range(5, 21))
  earlier = set()
  for name in os.listdir(os.path.join(REPO, "experiments", "results")):
    trials = os.path.join(REPO, "experiments", "results", name, "trials")
    # The other studies' trials: the powered study's own carried trials are its seeds.
    if name.startswith("imagenette_mini") and name != study.name and os.path.isdir(trials):
      earlier |= {
        int(t.rsplit("seed", 1)[1].lstrip("=")) for t in os.listdir(trials) if "seed" in t
      }
  assert earlier and not earlier & set(study.seeds)  # No seed of it was ever seen.
  assert (study.config, study.common, study.regime, study.gate) == (
    control.config,
    control.common,
    control.regime,
    control.gate,
  )
  assert study.arms["proxy"] == control.arms["proxy"]
  assert study.arms["mixup"] == {
    **arms.BASELINE,
    "augment.mix": "mixup",
    "augment.mix_alpha": 0.2,
    "augment.mix_prob": 1.0,
  }
  assert study.arms["proxy+mixup"] == {**study.arms["proxy"], **arms.LARGE_IMAGE["mixup"]}
  assert study.arms["proxy-all"] == {**study.arms["proxy"], "proxy.subset": 1.0}
  assert [(h.arm, h.direction, h.against) for h in study.hypotheses] == [
    ("proxy", "differs", ""),
    ("mixup", "higher", ""),
    ("proxy+mixup", "differs", "mixup"),
  ]
  assert study.family == ("proxy", "mixup", "proxy+mixup") and study.control_arms == ("mixup",)
  (tost,) = study.equivalence
  assert (tost.arm, tost.margin, tost.alpha, tost.against) == ("proxy", 0.01, 0.05, "")
  # The declared spreads are the control studies' own, rounded to 0.01 points.
  observed = {
    "proxy": _paired_std("imagenette_mini_control", "proxy", "baseline"),
    "mixup": _paired_std("imagenette_mini_control_mixup", "mixup-imagenet", "baseline"),
    "proxy+mixup": max(
      _paired_std("imagenette_mini_control", a, "baseline")
      for a in ("mixup", "cutmix", "proxy", "proxy+cutmix")
    ),
  }
  assert study.power.std == {arm: round(std, 4) for arm, std in observed.items()}
  # The primary test detects under 1.5 points (the issue's bar for n).
  assert study.power.detectable["proxy"] < 0.015
  spec.check_trial_configs(dataclasses.replace(study, common={**study.common, **DATA}))

"""The settings table: the committed copy is the generated one, every value is a valid config,
the study arms take their values from it."""

import os

import pytest

from proxy_jax.config import checks as config_lib
from proxy_jax.core import errors
from proxy_jax.augment import paper_settings
from proxy_jax.study import arms, settings_table
from tests.conftest import make_tiny_config

README = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "README.md"
)


def test_committed_table_is_the_generated_one():
  with open(README, encoding="utf-8") as f:
    text = f.read()
  assert settings_table.with_table(text, settings_table.generated_table()) == text, (
    "experiments/README.md's settings table is stale: run "
    "python -m proxy_jax.study.settings_table --write"
  )


@pytest.mark.parametrize("regime", paper_settings.REGIMES)
def test_every_paper_setting_is_a_valid_config(regime):
  for method in paper_settings.METHODS:
    overrides = paper_settings.arm_overrides(method, regime)
    config_lib.validate(make_tiny_config(**overrides))


def test_arm_overrides_follow_the_references():
  assert paper_settings.arm_overrides("cutmix", "small") == {
    "augment.mix": "cutmix",
    "augment.mix_alpha": 1.0,
    "augment.mix_prob": 0.5,
  }
  assert paper_settings.arm_overrides("mixup", "large")["augment.mix_alpha"] == 0.2
  # No ImageNet Cutout setting: the arm keeps the library default for it.
  assert paper_settings.arm_overrides("cutout", "large") == {"augment.erase": "cutout"}
  with pytest.raises(ValueError, match="regime='huge'"):
    paper_settings.arm_overrides("cutmix", "huge")


def test_study_arms_take_their_values_from_the_table():
  for name in arms.AUGMENTATIONS:
    assert arms.SMALL_IMAGE[name] == paper_settings.arm_overrides(name, "small")
    assert arms.LARGE_IMAGE[name] == paper_settings.arm_overrides(name, "large")


def test_a_readme_without_markers_is_refused():
  with pytest.raises(errors.ConfigError, match="markers"):
    settings_table.with_table("no table here\n", "| a |\n")
  text = f"x\n{settings_table.BEGIN}\nold\n{settings_table.END}\ny\n"
  assert settings_table.with_table(text, "new\n") == (
    f"x\n{settings_table.BEGIN}\nnew\n{settings_table.END}\ny\n"
  )

"""The manipulation checks of a study's proxy arms, from hand-made run summaries."""

import math

import numpy as np
import pytest

from proxy_jax.study import manipulation, spec


def _summary(steps, train=1000):
  return {"num_examples": {"train": train}, "proxy_steps": steps}


STEPS_A = [
  {
    "epoch": 2,
    "wrong": 400,
    "chosen": 80,
    "bank_size": 80,
    "changed_pixel_share": 0.1,
    "changed_mean_abs": 30.0,
    "mean_abs_change": 3.0,
  },
  {
    "epoch": 5,
    "wrong": 100,
    "chosen": 20,
    "bank_size": 95,
    "changed_pixel_share": 0.2,
    "changed_mean_abs": 60.0,
    "mean_abs_change": 12.0,
  },
]
STEPS_B = [
  {
    "epoch": 2,
    "wrong": 600,
    "chosen": 120,
    "bank_size": 120,
    "changed_pixel_share": 0.3,
    "changed_mean_abs": 40.0,
    "mean_abs_change": 12.0,
  },
  {"epoch": 5, "wrong": 300, "chosen": 60, "bank_size": 170},
]  # An older record.


def test_run_columns_weigh_steps_by_their_images():
  columns = manipulation.run_columns(_summary(STEPS_A))
  assert (columns["proxy_wrong_first"], columns["proxy_wrong_last"]) == (400, 100)
  assert columns["proxy_chosen_total"] == 100 and columns["proxy_bank_final_share"] == 0.095
  # Pixel share over the 100 chosen images; change over the 8 + 4 changed image-equivalents.
  assert columns["proxy_changed_pixel_share"] == pytest.approx((80 * 0.1 + 20 * 0.2) / 100)
  assert columns["proxy_changed_mean_abs"] == pytest.approx((8 * 30 + 4 * 60) / 12)
  none = manipulation.run_columns(_summary([]))
  assert all(math.isnan(v) for v in none.values())


def test_per_step_means_over_seeds_leave_unrecorded_figures_out():
  study = spec.Study(
    name="s", config="c.py", seeds=(0, 1), arms={"baseline": {}, "proxy": {"proxy.enabled": True}}
  )
  runs = {
    ("proxy", 0): {"summary": _summary(STEPS_A)},
    ("proxy", 1): {"summary": _summary(STEPS_B)},
    ("baseline", 0): {"summary": _summary([])},
    ("baseline", 1): {"summary": _summary([])},
  }
  table = manipulation.per_step(study, runs)
  assert list(table) == ["proxy"]
  first, second = table["proxy"]
  assert first["epoch"] == 2 and first["wrong"][:2] == (
    500.0,
    pytest.approx(np.std([400, 600], ddof=1)),
  )
  assert first["bank_share"][0] == pytest.approx(0.1)
  mean, std, n = second["changed_pixel_share"]  # Seed 1's older record has none.
  assert (mean, n) == (0.2, 1) and math.isnan(std)
  lines = "\n".join(manipulation.lines(table))
  assert "| proxy | 0 (2) | 500 +- 141 | 100 +- 28 | 10.0 +- 2.8 | 20.0 +- 14.1 |" in lines
  assert "| 1 (5) | 200 +- 141 | 40 +- 28 | 13.2 +- 5.3 | 20.0 | 60.0 |" in lines
  record = manipulation.record(table)
  change = record["proxy"][1]["changed_mean_abs"]
  assert (change["mean"], change["n"]) == (60.0, 1) and math.isnan(change["std"])

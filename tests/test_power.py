"""Declared power and equivalence: the TOST against its definition and simulation, the power
figures against simulation, and a study's declaration refused when its figures do not follow."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from proxy_jax.study import declaration_report, power, preregistration, spec, stats
from proxy_jax.study.power import Equivalence, Power
from proxy_jax.study.preregistration import Hypothesis

ARMS = {
  "baseline": {},
  "proxy": {"proxy.enabled": True},
  "mixup": {"augment.mix": "mixup"},
  "proxy+mixup": {"proxy.enabled": True, "augment.mix": "mixup"},
}
SEEDS = tuple(range(8))
HYPOTHESES = (
  Hypothesis("proxy", "differs"),
  Hypothesis("mixup", "higher"),
  Hypothesis("proxy+mixup", "differs", against="mixup"),
)
STD = {"proxy": 0.01, "mixup": 0.015, "proxy+mixup": 0.02}


def _declared_power(std=STD, n=len(SEEDS)):
  detectable = {
    h.arm: round(power.declared_detectable(std[h.arm], n, h.direction, 3), 4) for h in HYPOTHESES
  }
  return Power(
    source="a test",
    std=dict(std),
    detectable=detectable,
    equivalence_power={"proxy": round(stats.tost_power(std["proxy"], n, 0.01), 3)},
  )


def _study(**fields):
  return spec.Study(
    **{
      "name": "x",
      "config": "configs/default.py",
      "seeds": SEEDS,
      "arms": ARMS,
      "hypotheses": HYPOTHESES,
      "family": ("proxy", "mixup", "proxy+mixup"),
      "control_arms": ("mixup",),
      "equivalence": (Equivalence("proxy", 0.01),),
      "power": _declared_power(),
      **fields,
    }
  )


def test_tost_is_the_two_one_sided_t_tests():
  d = np.array([0.002, -0.004, 0.006, 0.001, -0.001, 0.003])
  row = stats.tost(d, 0.01, 0.05)
  sem = d.std(ddof=1) / math.sqrt(len(d))
  assert row["p_lower"] == pytest.approx(
    scipy_stats.ttest_1samp(d, -0.01, alternative="greater").pvalue
  )
  assert row["p_upper"] == pytest.approx(
    scipy_stats.ttest_1samp(d, 0.01, alternative="less").pvalue
  )
  assert row["ci_high"] - row["ci_low"] == pytest.approx(
    2 * scipy_stats.t.ppf(0.95, len(d) - 1) * sem
  )
  assert row["outcome"] == "equivalent" and row["p"] == max(row["p_lower"], row["p_upper"])


@pytest.mark.parametrize(
  "mean,spread,outcome",
  [
    (0.0, 0.002, "equivalent"),
    (0.03, 0.002, "not equivalent"),
    (-0.03, 0.002, "not equivalent"),
    (0.0, 0.03, "inconclusive"),
    (0.009, 0.004, "inconclusive"),
  ],
)
def test_tost_outcomes(mean, spread, outcome):
  d = mean + spread * np.array([-1.5, -0.5, 0.0, 0.5, 1.5, 0.3, -0.3, 0.0])
  assert stats.tost(d, 0.01)["outcome"] == outcome


def test_tost_without_spread_and_refusals():
  assert stats.tost([0.004] * 4, 0.01)["outcome"] == "equivalent"
  assert stats.tost([0.02] * 4, 0.01)["outcome"] == "not equivalent"
  with pytest.raises(ValueError, match="at least 2"):
    stats.tost([0.0], 0.01)
  with pytest.raises(ValueError, match="margin"):
    stats.tost([0.0, 0.1], 0.0)


@pytest.mark.parametrize("std,n,difference", [(0.01, 16, 0.0), (0.015, 8, 0.0), (0.01, 10, 0.006)])
def test_tost_power_matches_simulation(std, n, difference):
  rng = np.random.default_rng(0)
  draws = rng.normal(difference, std, (20000, n))
  simulated = np.mean([stats.tost(d, 0.01)["outcome"] == "equivalent" for d in draws])
  assert stats.tost_power(std, n, 0.01, 0.05, difference) == pytest.approx(simulated, abs=0.01)


@pytest.mark.parametrize("sides", [1, 2])
def test_detectable_difference_has_its_power_in_simulation(sides):
  std, n, alpha = 0.01, 12, 0.05 / 3
  difference = stats.detectable_difference(std, n, alpha, 0.8, sides)
  rng = np.random.default_rng(1)
  draws = rng.normal(difference, std, (20000, n))
  t = draws.mean(1) / (draws.std(1, ddof=1) / math.sqrt(n))
  critical = scipy_stats.t.ppf(1 - alpha / sides, n - 1)
  rejected = (t > critical) | ((t < -critical) if sides == 2 else False)
  assert rejected.mean() == pytest.approx(0.8, abs=0.01)
  # A two-sided test needs a larger difference than a one-sided one at the same level.
  if sides == 2:
    assert difference > stats.detectable_difference(std, n, alpha, 0.8, 1)


def test_a_consistent_declaration_loads():
  study = spec.validate(_study())
  assert study.control_arms == ("mixup",) and len(study.equivalence) == 1


@pytest.mark.parametrize(
  "fields,message",
  [
    (
      {
        "power": dataclasses.replace(
          _declared_power(), detectable={**_declared_power().detectable, "proxy": 0.005}
        )
      },
      r"power.detectable\['proxy'\]=0.005 does not follow .* 8 seeds: it is 0.01",
    ),
    (
      {"power": dataclasses.replace(_declared_power(), equivalence_power={"proxy": 0.99})},
      r"power.equivalence_power\['proxy'\]=0.99 does not follow",
    ),
    (
      {"power": dataclasses.replace(_declared_power(), std={"proxy": 0.01})},
      "power.std must give exactly the tested arms",
    ),
    (
      {"power": dataclasses.replace(_declared_power(), std={**STD, "proxy": -1.0})},
      r"power.std\['proxy'\]=-1.0 must be a positive number",
    ),
    ({"power": dataclasses.replace(_declared_power(), source=" ")}, "power.source"),
    ({"power": {"std": STD}}, "must be a power.Power"),
    ({"equivalence": (Equivalence("proxy", 0.0),)}, "margin=0.0 must be a number"),
    ({"equivalence": (Equivalence("proxy", 0.01, alpha=0.7),)}, "alpha=0.7"),
    ({"equivalence": (Equivalence("nope", 0.01),)}, "equivalence arm 'nope'"),
    ({"equivalence": (Equivalence("proxy", 0.01, against="proxy"),)}, "against itself"),
    ({"equivalence": (Equivalence("proxy", 0.01),) * 2}, "two equivalence tests"),
    ({"control_arms": ("proxy",)}, "control arm 'proxy' has no declared direction"),
    ({"control_arms": "mixup"}, "must be a tuple of arm names"),
    (
      {
        "hypotheses": (Hypothesis("proxy", "differs", against="proxy"),),
        "family": ("proxy",),
        "control_arms": (),
        "power": None,
      },
      "against 'proxy' must be another",
    ),
  ],
)
def test_malformed_declarations_are_refused(fields, message):
  with pytest.raises(spec.StudyError, match=message):
    spec.validate(_study(**fields), "study.py")


def _rows(offsets):
  rows = []
  for arm, values in offsets.items():
    for seed, value in zip(SEEDS, values):
      rows.append(
        {
          "arm": arm,
          "seed": seed,
          "test_accuracy": 0.7 + 0.003 * seed + value,
          "val_accuracy": 0.7,
          "train_split_accuracy": 0.99,
        }
      )
  return rows


def test_a_hypothesis_against_another_arm_is_paired_with_that_arm():
  rng = np.random.default_rng(2)
  offsets = {
    "baseline": np.zeros(8),
    "proxy": rng.normal(0, 0.003, 8),
    "mixup": 0.02 + rng.normal(0, 0.003, 8),
  }
  offsets["proxy+mixup"] = offsets["mixup"] + 0.01 + rng.normal(0, 0.003, 8)
  tests = preregistration.test_hypotheses(spec.validate(_study()), _rows(offsets))
  combined = next(t for t in tests if t["arm"] == "proxy+mixup")
  want = stats.paired_t(offsets["proxy+mixup"] - offsets["mixup"])
  assert combined["against"] == "mixup" and combined["mean"] == pytest.approx(want["mean"])
  assert combined["p"] == pytest.approx(want["t_p"])  # Two-sided.


def test_the_report_says_first_when_the_control_failed(tmp_path):
  rng = np.random.default_rng(3)
  failed = {
    "baseline": np.zeros(8),
    "proxy": rng.normal(0, 0.002, 8),
    "mixup": rng.normal(0, 0.002, 8),
    "proxy+mixup": rng.normal(0, 0.002, 8),
  }
  lines, record = declaration_report.report_section(
    spec.validate(_study()), _rows(failed), str(tmp_path)
  )
  assert lines[0].startswith("**UNINFORMATIVE: the positive control failed** (mixup")
  assert record["positive_control"] == {
    "arms": ["mixup"],
    "held": False,
    "failed": ["mixup"],
    "informative": False,
  }
  (tost,) = record["equivalence_tests"]
  assert tost["outcome"] == "equivalent" and record["declared_power"]["std"] == STD
  text = "\n".join(lines)
  assert "**equivalent within +-1 point**" in text and "### Power: declared and achieved" in text
  held = {**failed, "mixup": 0.03 + failed["mixup"]}
  held["proxy+mixup"] = held["mixup"] + rng.normal(0, 0.002, 8)
  lines, record = declaration_report.report_section(
    spec.validate(_study()), _rows(held), str(tmp_path)
  )
  assert (
    lines[0].startswith("**The positive control held**")
    and record["positive_control"]["informative"]
  )

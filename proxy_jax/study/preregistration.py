"""What a study declares before any arm runs, and the report's check of it afterwards.

A study file may declare (all in `spec.Study`):
  regime      the setting in words, and why it was chosen (before any arm's result was seen);
  gate        what its baseline must show for the study to mean anything: a final
              training-split accuracy (the final model in eval mode, without augmentation) of
              at least `min_train_accuracy`, at least `min_gap` above its final validation
              accuracy. A baseline that does not fit its training data better than it
              generalises leaves a regulariser nothing to fix, and a study that finds no gain
              there shows nothing about the regulariser;
  hypotheses  an expected direction per arm against the baseline, or against another arm
              (`against`: "proxy+mixup" against "mixup"), "higher", "lower", or "differs"
              when none is expected, on a metric of the runs table;
  family      the arms whose comparisons form the Holm family of the hypotheses (default: the
              hypotheses' arms). Family arms without a hypothesis are tested two-sided;
  controls    the studies (their results folders' names) that ran this study's positive
              control before it: its report opens with their gates and hypotheses as their own
              reports recorded them (`<results>/<name>/study.json`), so that a reader sees
              whether the regime let known methods show their known gains before reading on;
  control_arms  the arms whose declared hypotheses are this study's own positive control: if
              one does not hold, the study is declared uninformative and its report says so
              first;
  equivalence, power  the equivalence tests and the declared power (proxy_jax/study/power.py).

The gate is decided on the mean over the baseline's seeds (each seed is shown). A directional
hypothesis is tested with the one-sided paired t-test in its direction, a "differs" one with the
two-sided test; Holm adjusts these p-values over the declared family only, and a hypothesis holds
when its adjusted p-value is below ALPHA (and, if directional, the mean difference points its
way). The report's exploratory comparisons of every arm are a separate, larger family.
"""

import dataclasses
import math
import re

import numpy as np

from proxy_jax.study import power as power_lib
from proxy_jax.study import stats

DIRECTIONS = ("higher", "lower", "differs")
METRICS = ("test_accuracy", "val_accuracy")
ALPHA = 0.05
POWER = 0.8  # Of the detectable difference the report shows beside each hypothesis.
# A study's name, which is its results folder's name: spec checks a study's own, check() the
# names of its controls.
STUDY_NAME = r"[A-Za-z0-9_-]+"


@dataclasses.dataclass(frozen=True)
class Gate:
  """The baseline must fit its training data: the study's regime leaves room to regularise."""

  min_train_accuracy: float = 0.95
  min_gap: float = 0.15  # Training-split accuracy minus validation accuracy.


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """`arm` is `direction` than `against` ("" = the baseline) in `metric` ("differs": no
  direction expected)."""

  arm: str
  direction: str
  metric: str = "test_accuracy"
  against: str = ""

  def reference(self, baseline: str) -> str:
    return self.against or baseline


def declared(study) -> bool:
  return bool(
    study.regime
    or study.gate
    or study.hypotheses
    or study.family
    or study.controls
    or study.equivalence
    or study.power
    or study.control_arms
  )


def check(study) -> tuple:
  """The declared family (arm names); ValueError naming the field and value if anything is bad."""
  _check_gate(study.gate)
  _check_hypotheses(study)
  family = _check_family(study)
  _check_controls(study)
  power_lib.check_equivalence(study)
  power_lib.check_power(study, tested(study, family))
  return family


def _check_gate(gate) -> None:
  if gate is None:
    return
  if not isinstance(gate, Gate):
    raise ValueError(f"gate {gate!r} must be a preregistration.Gate")
  for name in ("min_train_accuracy", "min_gap"):
    value = getattr(gate, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
      raise ValueError(f"gate.{name}={value!r} must be a number in [0, 1]")


def _check_hypotheses(study) -> None:
  seen = set()
  for hypothesis in study.hypotheses:
    if not isinstance(hypothesis, Hypothesis):
      raise ValueError(f"hypothesis {hypothesis!r} must be a preregistration.Hypothesis")
    where = f"hypothesis on arm {hypothesis.arm!r}"
    if hypothesis.arm not in study.arms or hypothesis.arm == study.baseline:
      compared = [a for a in study.arms if a != study.baseline]
      raise ValueError(f"{where}: not one of the compared arms {compared}")
    against = hypothesis.reference(study.baseline)
    if against not in study.arms or against == hypothesis.arm:
      raise ValueError(
        f"{where}: against {against!r} must be another of the arms {list(study.arms)}"
      )
    if hypothesis.direction not in DIRECTIONS:
      raise ValueError(
        f"{where}: direction {hypothesis.direction!r} must be one of {', '.join(DIRECTIONS)}"
      )
    if hypothesis.metric not in METRICS:
      raise ValueError(f"{where}: metric {hypothesis.metric!r} must be one of {', '.join(METRICS)}")
    if (hypothesis.arm, hypothesis.metric) in seen:
      raise ValueError(f"two hypotheses on arm {hypothesis.arm!r} and {hypothesis.metric}")
    seen.add((hypothesis.arm, hypothesis.metric))


def _check_family(study) -> tuple:
  family = tuple(study.family) or tuple(dict.fromkeys(h.arm for h in study.hypotheses))
  for arm in family:
    if arm not in study.arms or arm == study.baseline:
      compared = [a for a in study.arms if a != study.baseline]
      raise ValueError(f"family arm {arm!r} is not one of the compared arms {compared}")
  if len(set(family)) != len(family):
    raise ValueError(f"family {list(family)} names an arm twice")
  outside = [h.arm for h in study.hypotheses if h.arm not in family]
  if outside:
    raise ValueError(f"hypotheses on {outside} are outside the declared family {list(family)}")
  return family


def _check_controls(study) -> None:
  """The control studies (by name) and the study's own control arms."""
  if isinstance(study.controls, str):
    raise ValueError(f"controls {study.controls!r} must be a tuple of study names")
  for name in study.controls:
    if not isinstance(name, str) or not re.fullmatch(STUDY_NAME, name):
      raise ValueError(f"control {name!r} must be a study's name (letters, digits, _ or -)")
    if name == study.name:
      raise ValueError(f"control {name!r} is this study itself")
  if len(set(study.controls)) != len(study.controls):
    raise ValueError(f"controls {list(study.controls)} name a study twice")
  directional = {h.arm for h in study.hypotheses if h.direction != "differs"}
  if isinstance(study.control_arms, str):
    raise ValueError(f"control_arms {study.control_arms!r} must be a tuple of arm names")
  for arm in study.control_arms:
    if arm not in directional:
      raise ValueError(
        f"control arm {arm!r} has no declared direction ('higher' or 'lower' "
        "hypothesis): a positive control must say what it should show"
      )


def tested(study, family: tuple | None = None) -> list[Hypothesis]:
  """The family's hypotheses: the declared ones, then "differs" for family arms without one."""
  with_hypothesis = {h.arm for h in study.hypotheses}
  family = study.family if family is None else family
  return list(study.hypotheses) + [
    Hypothesis(arm, "differs") for arm in family if arm not in with_hypothesis
  ]


# ---------------------------------------------------------------- the checks


def gate_figures(gate: Gate, rows: list[dict], baseline: str) -> dict:
  """The baseline's training-split and validation accuracy per seed, their means and the verdict.

  `rows` are the report's runs table (report.run_rows); a baseline run without a training-split
  score (trained before it was recorded) makes the gate fail as not checkable.
  """
  mine = [r for r in rows if r["arm"] == baseline]
  seeds = [
    {
      "seed": r["seed"],
      "train_split_accuracy": r["train_split_accuracy"],
      "val_accuracy": r["val_accuracy"],
      "gap": r["train_split_accuracy"] - r["val_accuracy"],
    }
    for r in mine
  ]
  result = {
    "min_train_accuracy": gate.min_train_accuracy,
    "min_gap": gate.min_gap,
    "seeds": seeds,
    "train_split_accuracy": float("nan"),
    "gap": float("nan"),
    "passed": False,
    "reason": "",
  }
  if not seeds or any(math.isnan(s["train_split_accuracy"]) for s in seeds):
    result["reason"] = (
      "not checkable: a finished baseline run with a training-split score "
      "(summary.json train_split) is missing"
    )
    return result
  train = float(np.mean([s["train_split_accuracy"] for s in seeds]))
  gap = float(np.mean([s["gap"] for s in seeds]))
  fits, apart = train >= gate.min_train_accuracy, gap >= gate.min_gap
  reasons = (
    []
    if fits
    else [
      f"training-split accuracy {100 * train:.1f}% is below {100 * gate.min_train_accuracy:.0f}%"
    ]
  ) + ([] if apart else [f"the gap {100 * gap:.1f} points is below {100 * gate.min_gap:.0f}"])
  result.update(
    train_split_accuracy=train, gap=gap, passed=fits and apart, reason="; ".join(reasons)
  )
  return result


def one_sided_p(t: dict, direction: str) -> float:
  """The paired t-test's p-value in `direction` from its two-sided one (the t law is symmetric:
  half of it when the mean points that way, one minus half otherwise)."""
  two_sided = t["t_p"]
  if direction == "differs" or math.isnan(two_sided):
    return two_sided
  toward = t["mean"] > 0 if direction == "higher" else t["mean"] < 0
  return two_sided / 2 if toward else 1.0 - two_sided / 2


def test_hypotheses(study, rows: list[dict], alpha: float = ALPHA) -> list[dict]:
  """One row per hypothesis of the family: paired differences, p-values, Holm, held or not.

  A hypothesis with fewer than two paired seeds cannot be tested: it counts in the family with
  p = 1 (so it neither holds nor lowers the others' correction).
  """
  results = []
  for hypothesis in tested(study):
    against = hypothesis.reference(study.baseline)
    values = {
      (r["arm"], r["seed"]): r[hypothesis.metric]
      for r in rows
      if not math.isnan(r[hypothesis.metric])
    }
    shared = [s for s in study.seeds if (hypothesis.arm, s) in values and (against, s) in values]
    diffs = [values[hypothesis.arm, s] - values[against, s] for s in shared]
    row = {
      "arm": hypothesis.arm,
      "against": against,
      "direction": hypothesis.direction,
      "metric": hypothesis.metric,
      "n": len(shared),
      "mean": float("nan"),
      "std": float("nan"),
      "ci_low": float("nan"),
      "ci_high": float("nan"),
      "p": 1.0,
    }
    if len(shared) >= 2:
      t = stats.paired_t(diffs)
      p = one_sided_p(t, hypothesis.direction)
      row.update(
        mean=t["mean"],
        std=t["std"],
        ci_low=t["ci_low"],
        ci_high=t["ci_high"],
        p=1.0 if math.isnan(p) else p,
      )
    results.append(row)
  adjusted = stats.holm([r["p"] for r in results]) if results else []
  for row, holm_p in zip(results, adjusted):
    row["holm_p"] = float(holm_p)
    row["held"] = bool(row["n"] >= 2 and holm_p < alpha)
    # What this test could have found: at Holm's strictest level (alpha over the family's
    # size; a two-sided test spends half of it on each side), given the observed spread.
    row["detectable"] = stats.detectable_difference(
      row["std"], row["n"], alpha / len(results), POWER, power_lib.sides(row["direction"])
    )
  return results


# ---------------------------------------------------------------- the report's section


# ---------------------------------------------------------------- the positive control

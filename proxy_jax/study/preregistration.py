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
import json
import math
import os
import re

import numpy as np

from proxy_jax.core import errors
from proxy_jax.study import power as power_lib
from proxy_jax.study import stats

DIRECTIONS = ("higher", "lower", "differs")
METRICS = ("test_accuracy", "val_accuracy")
ALPHA = 0.05
POWER = 0.8  # Of the detectable difference the report shows beside each hypothesis.
# A study's name, which is its results folder's name: spec checks a study's own, check() the
# names of its controls.
STUDY_NAME = r"[A-Za-z0-9_-]+"


class ControlError(errors.UserError, ValueError):
  """A control study's report cannot be read."""


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
  return bool(study.regime or study.gate or study.hypotheses or study.family or study.controls
              or study.equivalence or study.power or study.control_arms)


def check(study) -> tuple:
  """The declared family (arm names); ValueError naming the field and value if anything is bad."""
  if study.gate is not None:
    if not isinstance(study.gate, Gate):
      raise ValueError(f"gate {study.gate!r} must be a preregistration.Gate")
    for name in ("min_train_accuracy", "min_gap"):
      value = getattr(study.gate, name)
      if (not isinstance(value, (int, float)) or isinstance(value, bool)
          or not 0.0 <= value <= 1.0):
        raise ValueError(f"gate.{name}={value!r} must be a number in [0, 1]")
  seen = set()
  for hypothesis in study.hypotheses:
    if not isinstance(hypothesis, Hypothesis):
      raise ValueError(f"hypothesis {hypothesis!r} must be a preregistration.Hypothesis")
    if hypothesis.arm not in study.arms or hypothesis.arm == study.baseline:
      raise ValueError(f"hypothesis on arm {hypothesis.arm!r}: not one of the compared arms "
                       f"{[a for a in study.arms if a != study.baseline]}")
    against = hypothesis.reference(study.baseline)
    if against not in study.arms or against == hypothesis.arm:
      raise ValueError(f"hypothesis on arm {hypothesis.arm!r}: against {against!r} must be "
                       f"another of the arms {list(study.arms)}")
    if hypothesis.direction not in DIRECTIONS:
      raise ValueError(f"hypothesis on arm {hypothesis.arm!r}: direction "
                       f"{hypothesis.direction!r} must be one of {', '.join(DIRECTIONS)}")
    if hypothesis.metric not in METRICS:
      raise ValueError(f"hypothesis on arm {hypothesis.arm!r}: metric {hypothesis.metric!r} "
                       f"must be one of {', '.join(METRICS)}")
    if (hypothesis.arm, hypothesis.metric) in seen:
      raise ValueError(f"two hypotheses on arm {hypothesis.arm!r} and {hypothesis.metric}")
    seen.add((hypothesis.arm, hypothesis.metric))
  family = tuple(study.family) or tuple(dict.fromkeys(h.arm for h in study.hypotheses))
  for arm in family:
    if arm not in study.arms or arm == study.baseline:
      raise ValueError(f"family arm {arm!r} is not one of the compared arms "
                       f"{[a for a in study.arms if a != study.baseline]}")
  if len(set(family)) != len(family):
    raise ValueError(f"family {list(family)} names an arm twice")
  outside = [h.arm for h in study.hypotheses if h.arm not in family]
  if outside:
    raise ValueError(f"hypotheses on {outside} are outside the declared family {list(family)}")
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
      raise ValueError(f"control arm {arm!r} has no declared direction ('higher' or 'lower' "
                       "hypothesis): a positive control must say what it should show")
  power_lib.check_equivalence(study)
  power_lib.check_power(study, tested(study, family))
  return family


def tested(study, family: tuple | None = None) -> list[Hypothesis]:
  """The family's hypotheses: the declared ones, then "differs" for family arms without one."""
  with_hypothesis = {h.arm for h in study.hypotheses}
  family = study.family if family is None else family
  return list(study.hypotheses) + [Hypothesis(arm, "differs") for arm in family
                                   if arm not in with_hypothesis]


# ---------------------------------------------------------------- the checks


def gate_figures(gate: Gate, rows: list[dict], baseline: str) -> dict:
  """The baseline's training-split and validation accuracy per seed, their means and the verdict.

  `rows` are the report's runs table (report.run_rows); a baseline run without a training-split
  score (trained before it was recorded) makes the gate fail as not checkable.
  """
  mine = [r for r in rows if r["arm"] == baseline]
  seeds = [{"seed": r["seed"], "train_split_accuracy": r["train_split_accuracy"],
            "val_accuracy": r["val_accuracy"],
            "gap": r["train_split_accuracy"] - r["val_accuracy"]} for r in mine]
  result = {"min_train_accuracy": gate.min_train_accuracy, "min_gap": gate.min_gap,
            "seeds": seeds, "train_split_accuracy": float("nan"), "gap": float("nan"),
            "passed": False, "reason": ""}
  if not seeds or any(math.isnan(s["train_split_accuracy"]) for s in seeds):
    result["reason"] = ("not checkable: a finished baseline run with a training-split score "
                        "(summary.json train_split) is missing")
    return result
  train = float(np.mean([s["train_split_accuracy"] for s in seeds]))
  gap = float(np.mean([s["gap"] for s in seeds]))
  fits, apart = train >= gate.min_train_accuracy, gap >= gate.min_gap
  reasons = ([] if fits else [f"training-split accuracy {100 * train:.1f}% is below "
                              f"{100 * gate.min_train_accuracy:.0f}%"]) + (
      [] if apart else [f"the gap {100 * gap:.1f} points is below {100 * gate.min_gap:.0f}"])
  result.update(train_split_accuracy=train, gap=gap, passed=fits and apart,
                reason="; ".join(reasons))
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
    values = {(r["arm"], r["seed"]): r[hypothesis.metric] for r in rows
              if not math.isnan(r[hypothesis.metric])}
    shared = [s for s in study.seeds if (hypothesis.arm, s) in values and (against, s) in values]
    diffs = [values[hypothesis.arm, s] - values[against, s] for s in shared]
    row = {"arm": hypothesis.arm, "against": against, "direction": hypothesis.direction,
           "metric": hypothesis.metric, "n": len(shared), "mean": float("nan"),
           "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p": 1.0}
    if len(shared) >= 2:
      t = stats.paired_t(diffs)
      p = one_sided_p(t, hypothesis.direction)
      row.update(mean=t["mean"], std=t["std"], ci_low=t["ci_low"], ci_high=t["ci_high"],
                 p=1.0 if math.isnan(p) else p)
    results.append(row)
  adjusted = stats.holm([r["p"] for r in results]) if results else []
  for row, holm_p in zip(results, adjusted):
    row["holm_p"] = float(holm_p)
    row["held"] = bool(row["n"] >= 2 and holm_p < alpha)
    # What this test could have found: at Holm's strictest level (alpha over the family's
    # size; a two-sided test spends half of it on each side), given the observed spread.
    row["detectable"] = stats.detectable_difference(
        row["std"], row["n"], alpha / len(results), POWER, power_lib.sides(row["direction"]))
  return results


# ---------------------------------------------------------------- the report's section


def _declared_lines(study) -> list[str]:
  when = study.declared_when.strip()
  lines = ["## What was declared, and when" if when else "## Declared before the runs", "",
           (when or "Fixed in the study file before any arm ran")
           + "; the figures below are checked against these, not chosen after them.", ""]
  if study.regime:
    lines += [f"- Regime: {study.regime.strip()}"]
  if study.gate is not None:
    lines += [f"- Gate: the baseline's final training-split accuracy (eval mode, no "
              f"augmentation) at least {100 * study.gate.min_train_accuracy:.0f}% and at least "
              f"{100 * study.gate.min_gap:.0f} points above its final validation accuracy "
              "(means over seeds)."]
  for h in tested(study):
    expected = ("differs from" if h.direction == "differs"
                else f"is {h.direction} than") + f" `{h.reference(study.baseline)}`"
    declared_here = h in study.hypotheses
    role = " (the positive control)" if h.arm in study.control_arms else ""
    lines += [f"- Hypothesis: `{h.arm}` {expected} in {h.metric.replace('_', ' ')}{role}"
              + ("" if declared_here else " (family member without a declared direction: "
                 "two-sided)") + "."]
  if study.family:
    pairs = [f"`{h.arm}` - `{h.reference(study.baseline)}`" for h in tested(study)]
    lines += [f"- Holm family: {', '.join(pairs)} (only these; alpha {ALPHA})."]
  if study.control_arms:
    lines += [f"- The rule: if {', '.join(f'`{a}`' for a in study.control_arms)} does not "
              "hold as declared, the positive control has failed and the study is "
              "uninformative about the other arms; the report says so first."]
  for e in study.equivalence:
    lines += [f"- Equivalence: `{e.arm}` within +-{100 * e.margin:g} points of "
              f"`{e.against or study.baseline}` in {e.metric.replace('_', ' ')} (TOST, alpha "
              f"{e.alpha:g} each side; outside the Holm family)."]
  if study.power is not None:
    figures = [f"`{arm}` {100 * d:.2f} points" for arm, d in study.power.detectable.items()]
    figures += [f"`{arm}` TOST power {p:.2f}" for arm, p in
                study.power.equivalence_power.items()]
    lines += [f"- Power ({len(study.seeds)} seeds, from {study.power.source.strip()}): "
              f"detectable with {100 * POWER:.0f}% power at Holm's strictest level: "
              + "; ".join(figures) + "."]
  if study.controls:
    lines += [f"- Positive control: {', '.join(f'`{c}`' for c in study.controls)}, run and "
              "reported before this study (outcome below)."]
  return lines


def _gate_lines(figures: dict) -> list[str]:
  lines = ["", "### The gate", "", "| seed | training-split accuracy (%) | validation accuracy "
           "(%) | gap (points) |", "|---|---|---|---|"]
  lines += [f"| {s['seed']} | {100 * s['train_split_accuracy']:.2f} | "
            f"{100 * s['val_accuracy']:.2f} | {100 * s['gap']:+.2f} |" for s in figures["seeds"]]
  mean = (f"mean training-split accuracy {100 * figures['train_split_accuracy']:.2f}% "
          f"(needs >= {100 * figures['min_train_accuracy']:.0f}), gap "
          f"{100 * figures['gap']:+.2f} points (needs >= {100 * figures['min_gap']:.0f})")
  if figures["passed"]:
    verdict = f"**PASSED**: {mean}."
  else:
    verdict = (f"**FAILED** ({figures['reason']}): {mean}. The baseline does not overfit "
               "enough for this study to show what a regulariser can do; read every "
               "comparison below in that light.")
  return lines + ["", verdict]


def _difference_cells(test: dict) -> tuple[str, str]:
  """A hypothesis test's mean difference and 95% interval in points ("-" below two seeds)."""
  if test["n"] < 2:
    return "-", "-"
  return (f"{100 * test['mean']:+.2f}",
          f"{100 * test['ci_low']:+.2f} to {100 * test['ci_high']:+.2f}")


def _hypothesis_lines(results: list[dict], baseline: str) -> list[str]:
  lines = ["", "### The hypotheses", "", f"Paired by seed (arm - {baseline} unless the arm "
           "names another, percentage points); one-sided t-test in the declared direction "
           "(two-sided for 'differs'), Holm over the declared family "
           f"only. Detectable: the smallest true difference the test finds with "
           f"{100 * POWER:.0f}% power at Holm's strictest level (alpha over the family's size), "
           "were the seed-to-seed spread of the differences what these seeds show.", "",
           "| arm | expected | metric | n | mean diff | 95% CI | p | Holm p | held | "
           "detectable |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    mean, interval = _difference_cells(r)
    arm = r["arm"] if r.get("against", baseline) == baseline else f"{r['arm']} - {r['against']}"
    lines.append(f"| {arm} | {r['direction']} | {r['metric']} | {r['n']} | {mean} | "
                 f"{interval} | {r['p']:.3g} | {r['holm_p']:.3g} | "
                 f"{'yes' if r['held'] else '**no**'} | "
                 + ("-" if math.isnan(r["detectable"]) else f"{100 * r['detectable']:.2f}") + " |")
  directional = [r for r in results if r["direction"] != "differs"]
  failed = [r["arm"] for r in directional if not r["held"]]
  if not directional:
    return lines
  if failed:
    lines += ["", f"**Not every expected direction held** ({', '.join(failed)}): the study did "
              "not reproduce what it declared. Find out why (implementation against its "
              "reference, recipe, budget) before reading anything else of it."]
  else:
    lines += ["", f"Every expected direction held ({len(directional)} of {len(directional)})."]
  return lines


# ---------------------------------------------------------------- the positive control


def control_outcome(name: str, results: str, regime: str) -> dict:
  """What control study `name` recorded in its report (`results`/`name`/study.json): its gate,
  its hypotheses' tests, its missing runs, and whether its regime reads as `regime`."""
  path = os.path.join(results, name, "study.json")
  outcome = {"study": name, "path": path, "reported": os.path.isfile(path)}
  if not outcome["reported"]:
    return outcome
  try:
    with open(path) as f:
      record = json.load(f)
    declared_there = record["preregistration"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise ControlError(f"control {name!r}: {path} is not a study report's study.json "
                     f"({type(error).__name__}: {error})") from error
  outcome.update(
      gate=declared_there.get("gate"), tests=declared_there.get("tests", []),
      missing=record.get("missing", []), baseline=record.get("baseline", "baseline"),
      same_regime=" ".join(declared_there.get("regime", "").split()) == " ".join(regime.split()))
  return outcome


def _control_gate_cell(gate) -> str:
  if not gate:
    return "none declared"
  figures = (f"{100 * gate['train_split_accuracy']:.2f}%, gap {100 * gate['gap']:+.2f}"
             if not math.isnan(gate["train_split_accuracy"]) else "not checkable")
  return f"{'passed' if gate['passed'] else '**FAILED**'} ({figures})"


def _control_test_cells(t) -> str:
  if t is None:
    return "no directional hypothesis | - | - | - | - | -"
  mean, interval = _difference_cells(t)
  return (f"`{t['arm']}` {t['direction']} in {t['metric'].replace('_', ' ')} | {t['n']} | "
          f"{mean} | {interval} | {t['holm_p']:.3g} | {'yes' if t['held'] else '**no**'}")


def _control_lines(outcomes: list[dict]) -> list[str]:
  lines = ["", "### The positive control", "", "As the control's own report recorded it "
           "(`study.json` of each study; arm - that study's baseline, percentage points, "
           "one-sided in the declared direction, Holm over that study's family):", "",
           "| study | same regime | gate (training-split accuracy, gap) | hypothesis | n | "
           "mean diff | 95% CI | Holm p | held |", "|---|---|---|---|---|---|---|---|---|"]
  failed = []
  for outcome in outcomes:
    name = f"`{outcome['study']}`"
    if not outcome["reported"]:
      lines.append(f"| {name} | - | **not reported**: no {outcome['path']} | - | - | - | - | "
                   "- | - |")
      failed.append(f"{outcome['study']}: not reported")
      continue
    gate = _control_gate_cell(outcome["gate"])
    if outcome["gate"] and not outcome["gate"]["passed"]:
      failed.append(f"{outcome['study']}: gate failed")
    if outcome["missing"]:
      failed.append(f"{outcome['study']}: {len(outcome['missing'])} run(s) missing")
    directional = [t for t in outcome["tests"] if t["direction"] != "differs"]
    failed += [f"{outcome['study']}: {t['arm']}" for t in directional if not t["held"]]
    # The study's own cells on its first row only.
    cells = [name, "yes" if outcome["same_regime"] else "no", gate]
    for t in directional or [None]:
      lines.append("| " + " | ".join(cells) + " | " + _control_test_cells(t) + " |")
      cells = ["", "", ""]
  if failed:
    lines += ["", f"**The positive control did not fully come out as declared** "
              f"({'; '.join(failed)}): a method that shows no gain in this study may show none "
              "for the regime's reasons rather than its own. Read the comparisons below in "
              "that light."]
  else:
    lines += ["", "Every control passed its gate and every expected direction held."]
  return lines


def report_section(study, rows: list[dict], results: str) -> tuple[list[str], dict]:
  """(markdown lines for the top of summary.md, the same figures for study.json); nothing when
  the study declares nothing. `results`: where the control studies' reports are."""
  if not declared(study):
    return [], {}
  study = dataclasses.replace(study, family=check(study))  # Also for an unvalidated Study.
  lines = _declared_lines(study)
  record = {"regime": study.regime, "family": list(study.family),
            "hypotheses": [dataclasses.asdict(h) for h in tested(study)]}
  if study.gate is not None:
    record["gate"] = gate_figures(study.gate, rows, study.baseline)
    lines += _gate_lines(record["gate"])
  if study.controls:
    record["controls"] = [control_outcome(name, results, study.regime)
                          for name in study.controls]
    lines += _control_lines(record["controls"])
  if study.family:
    record["tests"] = test_hypotheses(study, rows)
    lines += _hypothesis_lines(record["tests"], study.baseline)
  record.update(power_lib.record(study))
  if study.equivalence:
    record["equivalence_tests"] = power_lib.test_equivalence(study, rows)
    lines += power_lib.equivalence_lines(record["equivalence_tests"])
  if study.power is not None:
    lines += power_lib.declared_power_lines(study, record.get("tests", []))
  if study.control_arms:
    record["positive_control"] = positive_control(study, record.get("tests", []))
    lines = _positive_control_lines(record["positive_control"]) + lines
  return lines + [""], record


def positive_control(study, tests: list[dict]) -> dict:
  """Whether the study's own positive control held: every control arm's declared test."""
  mine = [t for t in tests if t["arm"] in study.control_arms]
  failed = [t["arm"] for t in mine if not t["held"]]
  return {"arms": list(study.control_arms), "held": not failed, "failed": failed,
          "informative": not failed}


def _positive_control_lines(outcome: dict) -> list[str]:
  arms = ", ".join(f"`{a}`" for a in outcome["arms"])
  if outcome["informative"]:
    return [f"**The positive control held** ({arms} as declared): the regime let a known "
            "method show its known effect, so the comparisons below can be read.", ""]
  return [f"**UNINFORMATIVE: the positive control failed** ({', '.join(outcome['failed'])} did "
          "not hold as declared). By the rule declared before the runs, this study says "
          "nothing about the other arms: a method that shows no effect here may show none for "
          "the regime's reasons. The figures below are reported for completeness.", ""]

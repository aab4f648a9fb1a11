"""The report's section on what a study declared before its runs: the design, the gate's
figures, the control studies' outcomes, the hypotheses' tests, the equivalence tests, the
declared and achieved power, and the study's own positive control (the numbers come from
`preregistration` and `power`; this module writes them as markdown and study.json).
"""

import dataclasses
import json
import math
import os

from proxy_jax.core import errors
from proxy_jax.study import power as power_lib
from proxy_jax.study.preregistration import ALPHA, POWER, check, declared, gate_figures, tested
from proxy_jax.study.preregistration import test_hypotheses


class ControlError(errors.UserError, ValueError):
  """A control study's report cannot be read."""


def _declared_lines(study) -> list[str]:
  when = study.declared_when.strip()
  lines = [
    "## What was declared, and when" if when else "## Declared before the runs",
    "",
    (when or "Fixed in the study file before any arm ran")
    + "; the figures below are checked against these, not chosen after them.",
    "",
  ]
  if study.regime:
    lines += [f"- Regime: {study.regime.strip()}"]
  if study.gate is not None:
    lines += [
      f"- Gate: the baseline's final training-split accuracy (eval mode, no "
      f"augmentation) at least {100 * study.gate.min_train_accuracy:.0f}% and at least "
      f"{100 * study.gate.min_gap:.0f} points above its final validation accuracy "
      "(means over seeds)."
    ]
  for h in tested(study):
    expected = (
      "differs from" if h.direction == "differs" else f"is {h.direction} than"
    ) + f" `{h.reference(study.baseline)}`"
    declared_here = h in study.hypotheses
    role = " (the positive control)" if h.arm in study.control_arms else ""
    lines += [
      f"- Hypothesis: `{h.arm}` {expected} in {h.metric.replace('_', ' ')}{role}"
      + ("" if declared_here else " (family member without a declared direction: two-sided)")
      + "."
    ]
  if study.family:
    pairs = [f"`{h.arm}` - `{h.reference(study.baseline)}`" for h in tested(study)]
    lines += [f"- Holm family: {', '.join(pairs)} (only these; alpha {ALPHA})."]
  if study.control_arms:
    lines += [
      f"- The rule: if {', '.join(f'`{a}`' for a in study.control_arms)} does not "
      "hold as declared, the positive control has failed and the study is "
      "uninformative about the other arms; the report says so first."
    ]
  for e in study.equivalence:
    lines += [
      f"- Equivalence: `{e.arm}` within +-{100 * e.margin:g} points of "
      f"`{e.against or study.baseline}` in {e.metric.replace('_', ' ')} (TOST, alpha "
      f"{e.alpha:g} each side; outside the Holm family)."
    ]
  if study.power is not None:
    figures = [f"`{arm}` {100 * d:.2f} points" for arm, d in study.power.detectable.items()]
    figures += [f"`{arm}` TOST power {p:.2f}" for arm, p in study.power.equivalence_power.items()]
    lines += [
      f"- Power ({len(study.seeds)} seeds, from {study.power.source.strip()}): "
      f"detectable with {100 * POWER:.0f}% power at Holm's strictest level: "
      + "; ".join(figures)
      + "."
    ]
  if study.controls:
    lines += [
      f"- Positive control: {', '.join(f'`{c}`' for c in study.controls)}, run and "
      "reported before this study (outcome below)."
    ]
  return lines


def _gate_lines(figures: dict) -> list[str]:
  lines = [
    "",
    "### The gate",
    "",
    "| seed | training-split accuracy (%) | validation accuracy (%) | gap (points) |",
    "|---|---|---|---|",
  ]
  lines += [
    f"| {s['seed']} | {100 * s['train_split_accuracy']:.2f} | "
    f"{100 * s['val_accuracy']:.2f} | {100 * s['gap']:+.2f} |"
    for s in figures["seeds"]
  ]
  mean = (
    f"mean training-split accuracy {100 * figures['train_split_accuracy']:.2f}% "
    f"(needs >= {100 * figures['min_train_accuracy']:.0f}), gap "
    f"{100 * figures['gap']:+.2f} points (needs >= {100 * figures['min_gap']:.0f})"
  )
  if figures["passed"]:
    verdict = f"**PASSED**: {mean}."
  else:
    verdict = (
      f"**FAILED** ({figures['reason']}): {mean}. The baseline does not overfit "
      "enough for this study to show what a regulariser can do; read every "
      "comparison below in that light."
    )
  return lines + ["", verdict]


def _difference_cells(test: dict) -> tuple[str, str]:
  """A hypothesis test's mean difference and 95% interval in points ("-" below two seeds)."""
  if test["n"] < 2:
    return "-", "-"
  return (
    f"{100 * test['mean']:+.2f}",
    f"{100 * test['ci_low']:+.2f} to {100 * test['ci_high']:+.2f}",
  )


def _hypothesis_lines(results: list[dict], baseline: str) -> list[str]:
  lines = [
    "",
    "### The hypotheses",
    "",
    f"Paired by seed (arm - {baseline} unless the arm "
    "names another, percentage points); one-sided t-test in the declared direction "
    "(two-sided for 'differs'), Holm over the declared family "
    f"only. Detectable: the smallest true difference the test finds with "
    f"{100 * POWER:.0f}% power at Holm's strictest level (alpha over the family's size), "
    "were the seed-to-seed spread of the differences what these seeds show.",
    "",
    "| arm | expected | metric | n | mean diff | 95% CI | p | Holm p | held | detectable |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    mean, interval = _difference_cells(r)
    arm = r["arm"] if r.get("against", baseline) == baseline else f"{r['arm']} - {r['against']}"
    lines.append(
      f"| {arm} | {r['direction']} | {r['metric']} | {r['n']} | {mean} | "
      f"{interval} | {r['p']:.3g} | {r['holm_p']:.3g} | "
      f"{'yes' if r['held'] else '**no**'} | "
      + ("-" if math.isnan(r["detectable"]) else f"{100 * r['detectable']:.2f}")
      + " |"
    )
  directional = [r for r in results if r["direction"] != "differs"]
  failed = [r["arm"] for r in directional if not r["held"]]
  if not directional:
    return lines
  if failed:
    lines += [
      "",
      f"**Not every expected direction held** ({', '.join(failed)}): the study did "
      "not reproduce what it declared. Find out why (implementation against its "
      "reference, recipe, budget) before reading anything else of it.",
    ]
  else:
    lines += ["", f"Every expected direction held ({len(directional)} of {len(directional)})."]
  return lines


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
    raise ControlError(
      f"control {name!r}: {path} is not a study report's study.json "
      f"({type(error).__name__}: {error})"
    ) from error
  outcome.update(
    gate=declared_there.get("gate"),
    tests=declared_there.get("tests", []),
    missing=record.get("missing", []),
    baseline=record.get("baseline", "baseline"),
    same_regime=" ".join(declared_there.get("regime", "").split()) == " ".join(regime.split()),
  )
  return outcome


def _control_gate_cell(gate) -> str:
  if not gate:
    return "none declared"
  figures = (
    f"{100 * gate['train_split_accuracy']:.2f}%, gap {100 * gate['gap']:+.2f}"
    if not math.isnan(gate["train_split_accuracy"])
    else "not checkable"
  )
  return f"{'passed' if gate['passed'] else '**FAILED**'} ({figures})"


def _control_test_cells(t) -> str:
  if t is None:
    return "no directional hypothesis | - | - | - | - | -"
  mean, interval = _difference_cells(t)
  return (
    f"`{t['arm']}` {t['direction']} in {t['metric'].replace('_', ' ')} | {t['n']} | "
    f"{mean} | {interval} | {t['holm_p']:.3g} | {'yes' if t['held'] else '**no**'}"
  )


def _control_lines(outcomes: list[dict]) -> list[str]:
  lines = [
    "",
    "### The positive control",
    "",
    "As the control's own report recorded it "
    "(`study.json` of each study; arm - that study's baseline, percentage points, "
    "one-sided in the declared direction, Holm over that study's family):",
    "",
    "| study | same regime | gate (training-split accuracy, gap) | hypothesis | n | "
    "mean diff | 95% CI | Holm p | held |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  failed = []
  for outcome in outcomes:
    name = f"`{outcome['study']}`"
    if not outcome["reported"]:
      lines.append(
        f"| {name} | - | **not reported**: no {outcome['path']} | - | - | - | - | - | - |"
      )
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
    lines += [
      "",
      f"**The positive control did not fully come out as declared** "
      f"({'; '.join(failed)}): a method that shows no gain in this study may show none "
      "for the regime's reasons rather than its own. Read the comparisons below in "
      "that light.",
    ]
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
  record = {
    "regime": study.regime,
    "family": list(study.family),
    "hypotheses": [dataclasses.asdict(h) for h in tested(study)],
  }
  if study.gate is not None:
    record["gate"] = gate_figures(study.gate, rows, study.baseline)
    lines += _gate_lines(record["gate"])
  if study.controls:
    record["controls"] = [control_outcome(name, results, study.regime) for name in study.controls]
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
  return {
    "arms": list(study.control_arms),
    "held": not failed,
    "failed": failed,
    "informative": not failed,
  }


def _positive_control_lines(outcome: dict) -> list[str]:
  arms = ", ".join(f"`{a}`" for a in outcome["arms"])
  if outcome["informative"]:
    return [
      f"**The positive control held** ({arms} as declared): the regime let a known "
      "method show its known effect, so the comparisons below can be read.",
      "",
    ]
  return [
    f"**UNINFORMATIVE: the positive control failed** ({', '.join(outcome['failed'])} did "
    "not hold as declared). By the rule declared before the runs, this study says "
    "nothing about the other arms: a method that shows no effect here may show none for "
    "the regime's reasons. The figures below are reported for completeness.",
    "",
  ]

"""What a study declares about its power before any run, and its equivalence tests.

A study that may find "no effect" must say beforehand how large an effect it could have found,
and test "no effect" directly rather than read it off a wide interval. So a study file may add:

  equivalence  `Equivalence(arm, margin, alpha, against)`: a TOST of `arm` against `against`
               (default the baseline) within +-margin (accuracy units: 0.01 is one point), each
               one-sided test at `alpha`. Its outcome is "equivalent", "not equivalent" or
               "inconclusive" (`stats.tost`). Outside the Holm family: a TOST controls its own
               error rate at `alpha`.
  power        `Power(source, std, detectable, equivalence_power)`: for each tested arm, the
               standard deviation of its paired differences assumed from earlier runs
               (`source` says which), the smallest true difference its declared test detects
               with 80% power at Holm's strictest level (alpha over the family's size), and for
               each equivalence test its power at a true difference of 0. The figures are
               written in the file; `check` recomputes them from the stated standard deviations
               and the study's seeds and refuses a file whose figures do not follow, so a
               declaration cannot drift from its design.

The report sets the declared figures beside the achieved ones (the same formulas at the spread
the runs showed).
"""

import dataclasses
import math

from proxy_jax.study import stats

ALPHA = 0.05  # Of the Holm family (preregistration.ALPHA is the same level).
POWER = 0.8
# Declared figures must equal the recomputed ones to this many accuracy units (0.01 points) and
# this much power: the file writes them rounded.
DETECTABLE_TOLERANCE = 1e-4
POWER_TOLERANCE = 5e-3
METRICS = ("test_accuracy", "val_accuracy")


@dataclasses.dataclass(frozen=True)
class Equivalence:
  """`arm` is within +-`margin` of `against` ("" = the baseline) in `metric` (TOST at alpha)."""

  arm: str
  margin: float
  alpha: float = 0.05
  metric: str = "test_accuracy"
  against: str = ""


@dataclasses.dataclass(frozen=True)
class Power:
  """The design's power, declared before the runs (module docstring). Keys are arm names."""

  source: str
  std: dict
  detectable: dict
  equivalence_power: dict = dataclasses.field(default_factory=dict)


def sides(direction: str) -> int:
  return 2 if direction == "differs" else 1


def holm_level(family_size: int, alpha: float = ALPHA) -> float:
  """Holm's strictest level: the first of the family's ordered p-values must be below it."""
  return alpha / max(1, family_size)


def check_equivalence(study) -> None:
  """ValueError naming the declaration if an equivalence test is malformed."""
  seen = set()
  for test in study.equivalence:
    if not isinstance(test, Equivalence):
      raise ValueError(f"equivalence {test!r} must be a power.Equivalence")
    against = test.against or study.baseline
    for role, arm in (("arm", test.arm), ("against", against)):
      if arm not in study.arms:
        raise ValueError(f"equivalence {role} {arm!r} is not one of the arms {list(study.arms)}")
    if test.arm == against:
      raise ValueError(f"equivalence of {test.arm!r} against itself")
    for name, value, low, high in (
      ("margin", test.margin, 0.0, 1.0),
      ("alpha", test.alpha, 0.0, 0.5),
    ):
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value < high:
        raise ValueError(
          f"equivalence of {test.arm!r}: {name}={value!r} must be a number in ({low:g}, {high:g})"
        )
    if test.metric not in METRICS:
      raise ValueError(
        f"equivalence of {test.arm!r}: metric {test.metric!r} must be one of {', '.join(METRICS)}"
      )
    if (test.arm, against, test.metric) in seen:
      raise ValueError(f"two equivalence tests of {test.arm!r} against {against!r}")
    seen.add((test.arm, against, test.metric))


def declared_detectable(std: float, n: int, direction: str, family_size: int) -> float:
  """What a declared test detects with POWER at Holm's strictest level."""
  return stats.detectable_difference(std, n, holm_level(family_size), POWER, sides(direction))


def check_power(study, tests: list) -> None:
  """ValueError if the declared power is malformed or its figures do not follow from its
  standard deviations and the study's seeds; `tests`: the family's hypotheses."""
  power = study.power
  if power is None:
    return
  if not isinstance(power, Power):
    raise ValueError(f"power {power!r} must be a power.Power")
  if not isinstance(power.source, str) or not power.source.strip():
    raise ValueError("power.source must say where the standard deviations come from")
  n = len(study.seeds)
  equivalence_arms = {e.arm for e in study.equivalence}
  expected = {h.arm for h in tests} | equivalence_arms
  for name in ("std", "detectable", "equivalence_power"):
    if not isinstance(getattr(power, name), dict):
      raise ValueError(f"power.{name} must be a dict of arm -> number")
  missing = sorted(expected - set(power.std))
  if missing or set(power.std) - expected:
    raise ValueError(
      f"power.std must give exactly the tested arms {sorted(expected)}; "
      f"it gives {sorted(power.std)}"
    )
  for arm, std in power.std.items():
    if not isinstance(std, (int, float)) or isinstance(std, bool) or not std > 0:
      raise ValueError(f"power.std[{arm!r}]={std!r} must be a positive number")
  if set(power.detectable) != {h.arm for h in tests}:
    raise ValueError(
      f"power.detectable must give the family's arms "
      f"{[h.arm for h in tests]}; it gives {sorted(power.detectable)}"
    )
  for h in tests:
    want = declared_detectable(power.std[h.arm], n, h.direction, len(tests))
    _same(f"power.detectable[{h.arm!r}]", power.detectable[h.arm], want, n, DETECTABLE_TOLERANCE)
  if set(power.equivalence_power) != equivalence_arms:
    raise ValueError(
      f"power.equivalence_power must give the equivalence arms "
      f"{sorted(equivalence_arms)}; it gives {sorted(power.equivalence_power)}"
    )
  for test in study.equivalence:
    want = stats.tost_power(power.std[test.arm], n, test.margin, test.alpha)
    _same(
      f"power.equivalence_power[{test.arm!r}]",
      power.equivalence_power[test.arm],
      want,
      n,
      POWER_TOLERANCE,
    )


def _same(name: str, declared, computed: float, n: int, tolerance: float) -> None:
  if (
    not isinstance(declared, (int, float))
    or isinstance(declared, bool)
    or not abs(declared - computed) <= tolerance
  ):
    raise ValueError(
      f"{name}={declared!r} does not follow from the declared standard "
      f"deviation and the study's {n} seeds: it is {computed:.4f}"
    )


# ---------------------------------------------------------------- the report


def test_equivalence(study, rows: list[dict]) -> list[dict]:
  """One row per declared equivalence test: the paired differences' TOST and its achieved
  power (at the spread these seeds show)."""
  results = []
  for test in study.equivalence:
    against = test.against or study.baseline
    values = {(r["arm"], r["seed"]): r[test.metric] for r in rows if not math.isnan(r[test.metric])}
    shared = [s for s in study.seeds if (test.arm, s) in values and (against, s) in values]
    row = {
      "arm": test.arm,
      "against": against,
      "metric": test.metric,
      "margin": test.margin,
      "alpha": test.alpha,
      "n": len(shared),
      "outcome": "not tested",
      "achieved_power": math.nan,
    }
    if len(shared) >= 2:
      row.update(
        stats.tost(
          [values[test.arm, s] - values[against, s] for s in shared], test.margin, test.alpha
        )
      )
      row["achieved_power"] = stats.tost_power(row["std"], row["n"], test.margin, test.alpha)
    results.append(row)
  return results


def outcome_words(row: dict) -> str:
  points = f"+-{100 * row['margin']:g} point{'s' if row['margin'] != 0.01 else ''}"
  return {
    "equivalent": f"equivalent within {points}",
    "not equivalent": f"not equivalent (differs by more than {points})",
    "inconclusive": f"inconclusive (neither equivalent within {points} nor shown to "
    "differ by more)",
    "not tested": "not tested (fewer than two paired seeds)",
  }[row["outcome"]]


def equivalence_lines(results: list[dict]) -> list[str]:
  lines = [
    "",
    "### Equivalence",
    "",
    "Two one-sided paired t-tests (TOST) per declaration, "
    "each at its alpha; the interval is the 1 - 2 alpha t interval of the mean "
    "difference (percentage points). Achieved power: the TOST's power at a true "
    "difference of 0, were the spread what these seeds show.",
    "",
    "| arm | against | n | mean diff | interval | p (lower, upper) | outcome | achieved power |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    if r["n"] < 2:
      lines.append(
        f"| {r['arm']} | {r['against']} | {r['n']} | - | - | - | {outcome_words(r)} | - |"
      )
      continue
    lines.append(
      f"| {r['arm']} | {r['against']} | {r['n']} | {100 * r['mean']:+.2f} | "
      f"{100 * r['ci_low']:+.2f} to {100 * r['ci_high']:+.2f} | "
      f"{r['p_lower']:.3g}, {r['p_upper']:.3g} | **{outcome_words(r)}** | "
      f"{r['achieved_power']:.2f} |"
    )
  return lines


def declared_power_lines(study, tests: list[dict]) -> list[str]:
  """Declared against achieved: each test's detectable difference and each TOST's power."""
  power = study.power
  lines = [
    "",
    "### Power: declared and achieved",
    "",
    f"Declared before the runs from "
    f"{power.source.strip()}; achieved: the same formulas at the spread of the "
    f"differences these runs show ({len(study.seeds)} seeds, {100 * POWER:.0f}% power, "
    "Holm's strictest level).",
    "",
    "| test | sd of differences, declared | detectable, declared | sd, observed | "
    "detectable, achieved |",
    "|---|---|---|---|---|",
  ]
  for t in tests:
    observed = t.get("std", math.nan)
    lines.append(
      f"| {t['arm']} {t['direction']} | {100 * power.std[t['arm']]:.2f} | "
      f"{100 * power.detectable[t['arm']]:.2f} | {_points(observed)} | "
      f"{_points(t.get('detectable', math.nan))} |"
    )
  for arm, declared in power.equivalence_power.items():
    lines.append(f"| {arm} TOST | {100 * power.std[arm]:.2f} | power {declared:.2f} | | |")
  return lines


def _points(value: float) -> str:
  return "-" if math.isnan(value) else f"{100 * value:.2f}"


def record(study) -> dict:
  """The declarations for study.json."""
  out = {"equivalence": [dataclasses.asdict(e) for e in study.equivalence]}
  if study.power is not None:
    out["declared_power"] = dataclasses.asdict(study.power)
  return out

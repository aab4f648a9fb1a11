"""A study's pre-registration: refused when malformed, its gate's figures, its hypotheses tested
one-sided with Holm over the declared family only, and the report's section at the top."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from proxy_jax.study import declaration_report, preregistration, report, spec, stats
from proxy_jax.study.preregistration import Gate, Hypothesis

ARMS = {
  "baseline": {"proxy.enabled": False},
  "mixup": {"augment.mix": "mixup"},
  "cutmix": {"augment.mix": "cutmix"},
  "proxy": {"proxy.enabled": True},
}
SEEDS = (0, 1, 2, 3, 4)
# Test-accuracy offsets from the baseline per seed: mixup clearly higher, cutmix slightly lower
# on average, proxy far higher (but outside the declared family in the tests that say so).
OFFSETS = {
  "baseline": [0.0] * 5,
  "mixup": [0.03, 0.05, 0.02, 0.04, 0.06],
  "cutmix": [0.01, -0.02, 0.005, -0.01, 0.0],
  "proxy": [0.2, 0.21, 0.19, 0.2, 0.22],
}


def _study(**fields):
  return spec.Study(
    **{"name": "x", "config": "configs/default.py", "seeds": SEEDS, "arms": ARMS, **fields}
  )


def _rows(train_split=(0.99, 0.97, 0.98, 1.0, 0.96), val=(0.7, 0.72, 0.69, 0.71, 0.7)):
  rows = []
  for arm, offsets in OFFSETS.items():
    for seed, offset in zip(SEEDS, offsets):
      rows.append(
        {
          "arm": arm,
          "seed": seed,
          "test_accuracy": 0.6 + 0.01 * seed + offset,
          "val_accuracy": val[seed] + offset / 2,
          "train_split_accuracy": train_split[seed] if arm == "baseline" else 0.9,
        }
      )
  return rows


@pytest.mark.parametrize(
  "fields,message",
  [
    ({"gate": Gate(min_train_accuracy=1.5)}, "gate.min_train_accuracy=1.5"),
    ({"gate": Gate(min_gap=-0.1)}, "gate.min_gap=-0.1"),
    ({"gate": {"min_gap": 0.1}}, "must be a preregistration.Gate"),
    ({"hypotheses": (Hypothesis("mixxup", "higher"),)}, "arm 'mixxup': not one of"),
    ({"hypotheses": (Hypothesis("baseline", "higher"),)}, "arm 'baseline': not one of"),
    ({"hypotheses": (Hypothesis("mixup", "up"),)}, "direction 'up'"),
    ({"hypotheses": (Hypothesis("mixup", "higher", "train_accuracy"),)}, "metric"),
    (
      {"hypotheses": (Hypothesis("mixup", "higher"), Hypothesis("mixup", "lower"))},
      "two hypotheses on arm 'mixup'",
    ),
    (
      {"hypotheses": (Hypothesis("mixup", "higher"),), "family": ("cutmix",)},
      "outside the declared family",
    ),
    ({"family": ("mixup", "nope")}, "family arm 'nope'"),
    ({"family": ("mixup", "mixup")}, "names an arm twice"),
    ({"controls": "control"}, "must be a tuple of study names"),
    ({"controls": ("../control",)}, "control '../control' must be a study's name"),
    ({"controls": ("x",)}, "control 'x' is this study itself"),
    ({"controls": ("a", "a")}, "name a study twice"),
  ],
)
def test_malformed_preregistrations_are_refused(fields, message):
  with pytest.raises(spec.StudyError, match=message):
    spec.validate(_study(**fields), "study.py")


def test_family_defaults_to_the_hypotheses_arms():
  study = spec.validate(
    _study(hypotheses=(Hypothesis("mixup", "higher"), Hypothesis("cutmix", "higher")))
  )
  assert study.family == ("mixup", "cutmix")
  wider = spec.validate(
    _study(hypotheses=(Hypothesis("mixup", "higher"),), family=("mixup", "proxy"))
  )
  assert [(h.arm, h.direction) for h in preregistration.tested(wider)] == [
    ("mixup", "higher"),
    ("proxy", "differs"),
  ]


def test_gate_figures_are_the_baselines_means():
  rows = _rows()
  figures = preregistration.gate_figures(Gate(), rows, "baseline")
  train, val = np.array([0.99, 0.97, 0.98, 1.0, 0.96]), np.array([0.7, 0.72, 0.69, 0.71, 0.7])
  assert figures["train_split_accuracy"] == pytest.approx(train.mean())
  assert figures["gap"] == pytest.approx((train - val).mean())
  assert [s["gap"] for s in figures["seeds"]] == pytest.approx(train - val)
  assert figures["passed"] and not figures["reason"]
  underfit = preregistration.gate_figures(Gate(), _rows(train_split=(0.8,) * 5), "baseline")
  assert not underfit["passed"]
  assert "below 95%" in underfit["reason"] and "gap 9.6 points is below 15" in underfit["reason"]
  close = preregistration.gate_figures(Gate(min_gap=0.3), rows, "baseline")
  assert not close["passed"] and "below 95%" not in close["reason"]
  older = _rows()
  older[2]["train_split_accuracy"] = float("nan")  # A baseline run from before the score.
  missing = preregistration.gate_figures(Gate(), older, "baseline")
  assert not missing["passed"] and missing["reason"].startswith("not checkable")


@pytest.mark.parametrize(
  "diffs", [[0.03, 0.05, 0.02, 0.04, 0.06], [0.01, -0.02, 0.005, -0.01], [-0.03, -0.01, -0.02]]
)
def test_one_sided_p_matches_scipy(diffs):
  arm, base = 0.6 + np.asarray(diffs), np.full(len(diffs), 0.6)
  t = stats.paired_t(arm - base)
  for direction, alternative in (
    ("higher", "greater"),
    ("lower", "less"),
    ("differs", "two-sided"),
  ):
    reference = scipy_stats.ttest_rel(arm, base, alternative=alternative).pvalue
    assert preregistration.one_sided_p(t, direction) == pytest.approx(reference, rel=1e-9)


def test_holm_runs_over_the_declared_family_only():
  rows = _rows()
  study = spec.validate(
    _study(hypotheses=(Hypothesis("mixup", "higher"), Hypothesis("cutmix", "higher")))
  )
  results = {r["arm"]: r for r in preregistration.test_hypotheses(study, rows)}
  assert set(results) == {"mixup", "cutmix"}  # proxy is outside the family.
  raw = {
    arm: scipy_stats.ttest_rel(
      [r["test_accuracy"] for r in rows if r["arm"] == arm],
      [r["test_accuracy"] for r in rows if r["arm"] == "baseline"],
      alternative="greater",
    ).pvalue
    for arm in ("mixup", "cutmix")
  }
  expected = stats.holm([raw["mixup"], raw["cutmix"]])  # m = 2, not 3.
  assert [results["mixup"]["holm_p"], results["cutmix"]["holm_p"]] == pytest.approx(expected)
  assert results["mixup"]["held"] and not results["cutmix"]["held"]
  assert results["mixup"]["mean"] == pytest.approx(np.mean(OFFSETS["mixup"]))
  # Declared the wrong way, the same strong effect does not hold.
  backwards = spec.validate(_study(hypotheses=(Hypothesis("mixup", "lower"),)))
  assert not preregistration.test_hypotheses(backwards, rows)[0]["held"]
  # One paired seed cannot be tested: p = 1, and it still counts in the family.
  short = [r for r in rows if r["arm"] != "cutmix" or r["seed"] == 0]
  results = {r["arm"]: r for r in preregistration.test_hypotheses(study, short)}
  assert results["cutmix"]["n"] == 1 and results["cutmix"]["p"] == 1.0
  assert results["mixup"]["holm_p"] == pytest.approx(min(1.0, 2 * raw["mixup"]))


@pytest.mark.parametrize("std, n, alpha", [(0.015, 5, 0.025), (0.01, 3, 0.05), (0.02, 10, 0.0125)])
def test_detectable_difference_has_the_stated_power(std, n, alpha):
  """Simulated one-sided paired t-tests at the returned difference reject 80% of the time;
  the power there is exactly 0.8; more seeds detect smaller differences."""
  detectable = stats.detectable_difference(std, n, alpha)
  assert stats.t_power(detectable, std, n, alpha) == pytest.approx(0.8, abs=1e-6)
  diffs = np.random.default_rng(0).normal(detectable, std, size=(40000, n))
  t = diffs.mean(1) / (diffs.std(1, ddof=1) / np.sqrt(n))
  assert np.mean(t > scipy_stats.t.ppf(1 - alpha, n - 1)) == pytest.approx(0.8, abs=0.01)
  assert stats.detectable_difference(std, n + 5, alpha) < detectable
  assert stats.detectable_difference(2 * std, n, alpha) == pytest.approx(2 * detectable)


def test_detectable_difference_approaches_the_normal_formula():
  z = scipy_stats.norm.ppf(0.95) + scipy_stats.norm.ppf(0.8)
  assert stats.detectable_difference(1.0, 400, 0.05) == pytest.approx(z / 20, rel=0.01)
  assert math.isnan(stats.detectable_difference(0.0, 5, 0.05))
  assert math.isnan(stats.detectable_difference(0.01, 1, 0.05))


def _run(arm, seed, row):
  history = [
    {"epoch": 1, "val_accuracy": row["val_accuracy"], "val_loss": 1.0, "images_per_second": 100.0}
  ]
  return {
    "name": f"{arm}_seed{seed}",
    "commit": "abc",
    "process_seconds": 1.0,
    "attempts": 1,
    "summary": {
      "final": history[-1],
      "history": history,
      "num_epochs": 1,
      "test": {"accuracy": row["test_accuracy"], "loss": 1.0},
      "train_split": {"accuracy": row["train_split_accuracy"], "loss": 0.1},
      "wall_time_s": 1.0,
      "init_checksum": f"c{seed}",
      "proxy_steps": [],
    },
  }


def test_report_opens_with_the_declared_gate_and_hypotheses(tmp_path):
  rows = _rows()
  runs = {(r["arm"], r["seed"]): _run(r["arm"], r["seed"], r) for r in rows}
  study = spec.validate(
    _study(
      regime="ResNet-18 at 32 px, 60 epochs.",
      gate=Gate(),
      description="A fake study.",
      hypotheses=(Hypothesis("mixup", "higher"), Hypothesis("cutmix", "higher")),
      family=("mixup", "cutmix", "proxy"),
    )
  )
  out = str(tmp_path / "report")
  text = report.write_report(
    study,
    out,
    runs=runs,
    missing=[],
    checks=[],
    failures=[],
    explanation_rows=[],
    panels=[],
    explain_seconds=0.0,
    command="python -m proxy_jax.study",
    started=0.0,
  )
  order = [
    text.index(s)
    for s in (
      "# Study: x",
      "## Declared before the runs",
      "- Regime: ResNet-18 at 32 px",
      "- Gate:",
      "- Hypothesis: `mixup` is higher than `baseline`",
      "- Hypothesis: `proxy` differs from `baseline`",
      "### The gate",
      "**PASSED**",
      "### The hypotheses",
      "A fake study.",
      "## Accuracy per arm",
    )
  ]
  assert order == sorted(order)
  assert "| mixup | higher | test_accuracy | 5 |" in text
  # Beside each hypothesis: what it could detect, at alpha / 3 (two-sided for proxy: / 6).
  record = json.load(open(os.path.join(out, "study.json")))["preregistration"]
  tests = {t["arm"]: t for t in record["tests"]}
  for arm, level in (("mixup", 0.05 / 3), ("proxy", 0.05 / 6)):
    diffs = [
      a["test_accuracy"] - b["test_accuracy"]
      for a, b in zip(
        [r for r in rows if r["arm"] == arm], [r for r in rows if r["arm"] == "baseline"]
      )
    ]
    expected = stats.detectable_difference(np.std(diffs, ddof=1), 5, level)
    assert tests[arm]["detectable"] == pytest.approx(expected)
    assert f"| {100 * expected:.2f} |" in text
  assert "**Not every expected direction held** (cutmix)" in text
  record = json.load(open(os.path.join(out, "study.json")))["preregistration"]
  tests = {t["arm"]: t for t in record["tests"]}
  assert set(tests) == {"mixup", "cutmix", "proxy"} and tests["proxy"]["held"]
  assert record["gate"]["passed"] and len(record["gate"]["seeds"]) == 5
  # The runs table carries every run's training-split accuracy.
  assert "training-split accuracy (%)" in text and "| 98.00 +- 1.58 |" in text
  plain = report.write_report(
    dataclasses.replace(study, regime="", gate=None, hypotheses=(), family=()),
    str(tmp_path / "plain"),
    runs=runs,
    missing=[],
    checks=[],
    failures=[],
    explanation_rows=[],
    panels=[],
    explain_seconds=0.0,
    command="c",
    started=0.0,
  )
  assert "Declared before the runs" not in plain


def _write(study, out, rows):
  runs = {(r["arm"], r["seed"]): _run(r["arm"], r["seed"], r) for r in rows}
  return report.write_report(
    spec.validate(study),
    out,
    runs=runs,
    missing=[],
    checks=[],
    failures=[],
    explanation_rows=[],
    panels=[],
    explain_seconds=0.0,
    command="c",
    started=0.0,
  )


def test_report_opens_with_its_controls_outcome(tmp_path, monkeypatch):
  monkeypatch.setenv(spec.RESULTS_DIR_ENV, str(tmp_path))
  rows = _rows()
  _write(
    _study(
      name="control",
      regime="R, 60 epochs.",
      gate=Gate(),
      hypotheses=(Hypothesis("mixup", "higher"), Hypothesis("cutmix", "higher")),
      family=("mixup", "cutmix", "proxy"),
    ),
    str(tmp_path / "control"),
    rows,
  )
  recorded = json.load(open(tmp_path / "control" / "study.json"))["preregistration"]["tests"]
  text = _write(
    _study(name="comparison", regime="R,  60\nepochs.", controls=("control", "follow_up")),
    str(tmp_path / "comparison"),
    rows,
  )
  order = [
    text.index(s)
    for s in (
      "- Positive control: `control`, `follow_up`",
      "### The positive control",
      "| `control` | yes | passed (98.00%, gap +27.60) | `mixup` higher in test accuracy | 5 |",
      "|  |  |  | `cutmix` higher in test accuracy | 5 |",
      "| `follow_up` | - | **not reported**",
      "## Accuracy per arm",
    )
  ]
  assert order == sorted(order)
  mixup, cutmix = recorded[0], recorded[1]  # The control's own figures, as it recorded them.
  assert (
    f"| {100 * mixup['mean']:+.2f} | {100 * mixup['ci_low']:+.2f} to "
    f"{100 * mixup['ci_high']:+.2f} | {mixup['holm_p']:.3g} | yes |"
  ) in text
  assert f"| {100 * cutmix['mean']:+.2f} |" in text and cutmix["held"] is False
  assert (
    "**The positive control did not fully come out as declared** (control: cutmix; "
    "follow_up: not reported)"
  ) in text
  record = json.load(open(tmp_path / "comparison" / "study.json"))["preregistration"]
  assert record["controls"][0]["tests"] == recorded and not record["controls"][1]["reported"]

  # A control whose gate passed and whose one hypothesis held, in another regime.
  _write(
    _study(
      name="held", regime="R, 180 epochs.", gate=Gate(), hypotheses=(Hypothesis("mixup", "higher"),)
    ),
    str(tmp_path / "held"),
    rows,
  )
  text = _write(
    _study(name="comparison", regime="R, 60 epochs.", controls=("held",)),
    str(tmp_path / "comparison"),
    rows,
  )
  assert "| `held` | no | passed (98.00%, gap +27.60) | `mixup` higher" in text
  assert "Every control passed its gate and every expected direction held." in text

  (tmp_path / "held" / "study.json").write_text("{not json")
  with pytest.raises(declaration_report.ControlError, match="held.*study.json is not a study"):
    _write(_study(name="comparison", controls=("held",)), str(tmp_path / "comparison"), rows)

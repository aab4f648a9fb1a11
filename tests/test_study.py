"""Studies: paired statistics against scipy, study files, fairness refusals, a killed and resumed
study (stand-in trainer), and one real tiny study with its report and explanation scores."""

import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

from hypothesis import given
from hypothesis import strategies as st
import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from proxy_jax.config import files as config_files
from proxy_jax import sweep
from proxy_jax.study import explanations
from proxy_jax.study import runs as runs_lib
from proxy_jax.study import spec, stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = os.path.join(REPO, "configs", "studies")


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize(
  "diffs", [[0.01, 0.03, -0.005, 0.02, 0.012], [0.4, -0.1], [-0.02, -0.01, -0.015]]
)
def test_paired_t_matches_scipy(diffs):
  rng = np.random.default_rng(len(diffs))
  base = rng.uniform(0.5, 0.9, len(diffs))
  arm = base + np.asarray(diffs)
  ours = stats.paired_t(arm - base)
  result = scipy_stats.ttest_rel(arm, base)
  interval = result.confidence_interval(0.95)
  assert ours["t_p"] == pytest.approx(result.pvalue, rel=1e-9)
  assert (ours["ci_low"], ours["ci_high"]) == pytest.approx((interval.low, interval.high), rel=1e-9)
  assert ours["mean"] == pytest.approx(np.mean(diffs))


def test_paired_t_without_spread():
  """Zero spread: no t interval, and the p-value of the exact sign-flip test, never 0."""
  assert stats.paired_t([0.0, 0.0, 0.0])["t_p"] == 1.0
  for n in (2, 3, 5):
    constant = stats.paired_t([-0.01] * n)
    # Of the 2^n sign patterns only all-minus and all-plus are as extreme: 2 / 2^n.
    assert constant["t_p"] == pytest.approx(2 / 2**n) and constant["p_method"] == "sign-flip"
    assert math.isnan(constant["ci_low"]) and math.isnan(constant["ci_high"])
  with pytest.raises(ValueError):
    stats.paired_t([0.1])


@pytest.mark.parametrize("diffs", [[0.3, -0.1, 0.2], [1.0, 2.0, 3.0, -0.5], [0.2, 0.2, -0.2]])
def test_sign_flip_p_enumerates_every_flip(diffs):
  d = np.asarray(diffs)
  extreme = 0
  for signs in itertools.product([1.0, -1.0], repeat=len(d)):
    extreme += abs(np.mean(np.asarray(signs) * d)) >= abs(d.mean()) - 1e-12
  assert stats.sign_flip_p(d) == pytest.approx(extreme / 2 ** len(d))
  assert stats.sign_flip_p([0.05] * 4) == pytest.approx(stats.smallest_sign_p(4))


def test_identical_differences_are_not_called_significant():
  """Two seeds that both lose 1 point: Holm must not say "worse" (it did with p = 0)."""
  values = {("baseline", s): 0.8 for s in (0, 1)}
  values.update({("arm", s): 0.79 for s in (0, 1)})
  (row,) = stats.compare_arms(values, "baseline", ["baseline", "arm"], [0, 1])
  assert row["holm_t_p"] == pytest.approx(0.5)
  assert stats.verdict(row).startswith("no measurable difference")
  assert "CI undefined" in stats.verdict(row)


@pytest.mark.parametrize(
  "diffs", [[1, 1, 1, 1, 1], [1, -1, 1, 1, 0, 1, -1], [-1, -2, -3], [0.5, -0.5], [1] * 9 + [-1] * 2]
)
def test_sign_test_is_exact_binomial(diffs):
  d = np.asarray(diffs)
  wins, n = int(np.sum(d > 0)), int(np.sum(d != 0))
  assert stats.sign_test(d) == pytest.approx(scipy_stats.binomtest(wins, n).pvalue, rel=1e-12)
  assert stats.sign_test([0, 0]) == 1.0
  assert stats.smallest_sign_p(5) == pytest.approx(scipy_stats.binomtest(5, 5).pvalue)


def test_holm_against_direct_step_down():
  p = [0.01, 0.04, 0.03, 0.005, 0.5]
  # Sorted 0.005, 0.01, 0.03, 0.04, 0.5 times 5, 4, 3, 2, 1, then made monotone.
  expected = {3: 0.025, 0: 0.04, 2: 0.09, 1: 0.09, 4: 0.5}
  assert stats.holm(p) == pytest.approx([expected[i] for i in range(5)])
  assert stats.holm([0.6, 0.9]).tolist() == [1.0, 1.0]  # Capped at 1.
  rng = np.random.default_rng(0)
  for _ in range(20):  # Holm never lowers a p-value and keeps their order.
    values = rng.uniform(0, 0.2, 6)
    adjusted = stats.holm(values)
    assert np.all(adjusted >= values - 1e-15)
    assert np.all(np.diff(adjusted[np.argsort(values)]) >= -1e-15)


def test_compare_arms_and_verdicts():
  seeds = [0, 1, 2, 3, 4]
  values = {("baseline", s): 0.8 + 0.01 * s for s in seeds}
  values.update({("better", s): 0.85 + 0.01 * s + 0.001 * (s % 2) for s in seeds})
  values.update({("same", s): 0.8 + 0.01 * s + (0.002 if s % 2 else -0.002) for s in seeds})
  values.update({("short", 0): 0.9})
  rows = {
    r["arm"]: r
    for r in stats.compare_arms(values, "baseline", ["baseline", "better", "same", "short"], seeds)
  }
  assert set(rows) == {"better", "same", "short"}
  t_ps = [rows["better"]["t_p"], rows["same"]["t_p"]]
  assert [rows["better"]["holm_t_p"], rows["same"]["holm_t_p"]] == pytest.approx(stats.holm(t_ps))
  assert stats.verdict(rows["better"]).startswith("better by 5.")
  assert stats.verdict(rows["same"]).startswith("no measurable difference")
  assert rows["short"]["n"] == 1 and math.isnan(rows["short"]["t_p"])
  assert stats.verdict(rows["short"]).startswith("not tested")


def test_verdict_explains_an_interval_that_excludes_zero():
  """Unadjusted interval above 0, Holm-adjusted p above 0.05: the sentence says why."""
  row = {
    "n": 5,
    "mean": 0.01,
    "ci_low": 0.001,
    "ci_high": 0.019,
    "t_p": 0.03,
    "holm_t_p": 0.3,
    "holm_sign_p": 0.6,
    "wins": 4,
    "losses": 1,
    "family": 10,
    "p_method": "t",
  }
  sentence = stats.verdict(row)
  assert sentence.startswith("not significant after Holm's correction for the 10 compared arms")
  assert "unadjusted 95% CI +0.10 to +1.90" in sentence
  assert "no measurable difference" not in sentence
  row.update(ci_low=-0.001)
  assert stats.verdict(row).startswith("no measurable difference")


# ---------------------------------------------------------------- study files


def test_study_files_expand_to_named_trials():
  # The fair-fight studies (imagenette_mini_gpu, _control, _resnet): tests/test_study_files.py.
  for name, seeds in (("digits", 5), ("imagenette_mini", 3)):
    study = spec.load_study(os.path.join(STUDIES, f"{name}.py"))
    trials = spec.trials(study)
    assert len(study.seeds) == seeds and len(trials) == seeds * len(study.arms)
    assert list(study.arms)[:2] == ["baseline", "proxy"] and len(study.arms) == 16
    # Seed by seed: every arm of seed 0 before any of seed 1.
    assert [t["overrides"]["seed"] for t in trials[: len(study.arms)]] == [study.seeds[0]] * len(
      study.arms
    )
    assert trials[1]["name"] == f"proxy_seed{study.seeds[0]}"
    assert all("skip_proxies" in "".join(o) for a, o in study.arms.items() if a.endswith("-skip"))


# Fields of the mixing half of proxy_jax/augment, checked once it has landed.
PENDING_FIELDS = {
  "augment.mix",
  "augment.mix_alpha",
  "augment.keep_salient",
  "augment.skip_proxies",
}


def test_study_files_name_existing_config_fields():
  from proxy_jax.config import fields as config_fields  # pylint: disable=import-outside-toplevel

  data = {"data.path": os.path.join(REPO, "tests"), "data.test_path": ""}
  for name in ("digits", "imagenette_mini"):
    study = spec.load_study(os.path.join(STUDIES, f"{name}.py"))
    config = config_files.load_config(study.config)
    ready = {}
    for arm, overrides in study.arms.items():
      missing = {k for k in overrides if not config_fields.has_field(config, k)}
      assert missing <= PENDING_FIELDS, (name, arm, missing)  # No typo in a landed field.
      if not missing:
        ready[arm] = overrides
    assert {"baseline", "proxy", "cutout", "trivialaugment", "proxy+trivialaugment"} <= set(ready)
    # Every arm whose fields exist gets a valid resolved config (values, schedules, paths).
    common = {**study.common, **(data if "data.path" in study.common else {})}
    checked = dataclasses.replace(study, arms=ready, common=common)
    sweep.check_overrides(checked.config, spec.trials(checked), checked.common)
    spec.check_trial_configs(checked)


def _study_file(tmp_path, body):
  path = tmp_path / "study.py"
  path.write_text("from proxy_jax.study.spec import Study\n" + body)
  return str(path)


@pytest.mark.parametrize(
  "arms,message",
  [
    ({"baseline": {}, "proxy": {"data.split_seed": 1}}, "data.split_seed"),
    ({"baseline": {}, "proxy": {"num_epochs": 3}}, "num_epochs"),
    ({"baseline": {}, "proxy": {"seed": 3}}, "'seed'"),
    ({"control": {}, "proxy": {}}, "baseline arm"),
    ({"baseline": {}, "a b": {}}, "plain directory name"),
  ],
)
def test_bad_studies_are_refused(tmp_path, arms, message):
  path = _study_file(
    tmp_path,
    f"def get_study():\n  return Study(name='x', "
    f"config='configs/default.py', seeds=(0, 1), arms={arms!r})\n",
  )
  with pytest.raises(spec.StudyError, match=message):
    spec.load_study(path)
  one_seed = _study_file(
    tmp_path,
    "def get_study():\n  return Study(name='x', config="
    "'configs/default.py', seeds=(0,), arms={'baseline': {}, "
    "'p': {}})\n",
  )
  with pytest.raises(spec.StudyError, match="at least two"):
    spec.load_study(one_seed)


def test_every_arm_config_is_validated_before_running():
  study = spec.validate(
    spec.Study(
      name="x",
      config="configs/default.py",
      seeds=(0, 1),
      common={"num_epochs": "2"},
      arms={
        "baseline": {"proxy.enabled": False},
        "proxy": {"proxy.schedule": "1,p,1", "proxy.mode": "bogus"},
      },
    )
  )
  with pytest.raises(spec.StudyError, match="arm 'proxy': config.proxy.mode='bogus'"):
    spec.check_trial_configs(study)
  fixed = dataclasses.replace(study, arms={**study.arms, "proxy": {"proxy.schedule": "1,p,1"}})
  spec.check_trial_configs(fixed)  # "2" from --set is read as the int field it overrides.
  with pytest.raises(spec.StudyError, match="trains 2 epochs"):
    spec.check_trial_configs(dataclasses.replace(fixed, common={"num_epochs": "3"}))


def test_init_checksum_sees_every_value_name_and_dtype():
  from proxy_jax.run import records  # pylint: disable=import-outside-toplevel

  tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)}}
  same = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)}}
  assert records.tree_checksum(tree) == records.tree_checksum(same)
  changed = {"params": {**tree["params"], "b": np.array([1.0, 1.0 + 1e-12])}}
  renamed = {"params": {"a": tree["params"]["a"], "c": tree["params"]["b"]}}
  retyped = {"params": {**tree["params"], "a": tree["params"]["a"].astype(np.float64)}}
  reshaped = {"params": {**tree["params"], "a": tree["params"]["a"].reshape(3, 2)}}
  checksums = {records.tree_checksum(t) for t in (tree, changed, renamed, retyped, reshaped)}
  assert len(checksums) == 5


# ---------------------------------------------------------------- a study with a stand-in trainer


# Writes what main.py writes for a finished run (summary.json, split.json), from its flags.
# Test accuracy depends on the seed, +2 points (+0.1 per seed) for the proxy arm.
FAKE_TRAINER = """
import json, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
workdir, name = args["workdir"], os.path.basename(args["workdir"])
with open(os.path.join(workdir, "attempts"), "a") as f:
  f.write("x")
if name == os.environ.get("SLOW_TRIAL"):
  time.sleep(30)
seed, proxy = int(args["config.seed"]), args["config.proxy.enabled"] == "true"
config = {}
for key, value in args.items():
  if key.startswith("config."):
    node = config
    *parents, leaf = key[len("config."):].split(".")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = int(value) if value.isdigit() else value
epochs = int(args["config.num_epochs"])
accuracy = 0.6 + 0.01 * seed + (0.02 + 0.001 * seed if proxy else 0.0)
# Both arms agree before the proxy arm's proxy step after epoch 1, as real arms must.
history = [{"epoch": e + 1, "val_accuracy": 0.3 if e == 0 else accuracy, "val_loss": 1.0,
            "images_per_second": 100.0 + e} for e in range(epochs)]
split = {"pool_fingerprint": "abc", "indices": {"train": [1, 2, 3], "val": [4]}}
if name == os.environ.get("BAD_SPLIT"):
  split["indices"]["train"] = [1, 2, 5]
summary = {"config": config, "final": history[-1], "test": {"accuracy": accuracy, "loss": 1.0},
           "num_epochs": epochs, "history": history, "wall_time_s": 0.01,
           "proxy_steps": [{"epoch": 1, "seconds": 0.0}] if proxy else [],
           "init_checksum": "c%d" % seed, "num_examples": {"train": 3, "val": 1, "test": 1}}
for file_name, content in (("split.json", split), ("summary.json", summary)):
  with open(os.path.join(workdir, file_name), "w") as f:
    json.dump(content, f)
"""

FAKE_STUDY = """
def get_study():
  return Study(name="fake", config="configs/default.py", seeds=(0, 1, 2),
               common={"num_epochs": 2},
               arms={"baseline": {"proxy.enabled": False},
                     "proxy": {"proxy.enabled": True, "proxy.schedule": "1,p,1"}})
"""


def _study_command(study_file, workdir, out, program, *extra):
  return [
    sys.executable,
    "-m",
    "proxy_jax.study",
    f"--study={study_file}",
    f"--workdir={workdir}",
    f"--out={out}",
    f"--program={program}",
    "--explain=false",
    *extra,
  ]


def _env(**extra):
  return {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **extra}


@pytest.mark.slow
def test_killed_study_resumes_and_reports(tmp_path):
  program = tmp_path / "fake_main.py"
  program.write_text(FAKE_TRAINER)
  study_file = _study_file(tmp_path, FAKE_STUDY)
  workdir, out = str(tmp_path / "runs"), str(tmp_path / "report")
  command = _study_command(study_file, workdir, out, program)
  process = subprocess.Popen(
    command,
    env=_env(SLOW_TRIAL="proxy_seed0"),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  slow = os.path.join(workdir, "proxy_seed0", "attempts")
  deadline = time.time() + 60
  while not os.path.exists(slow):  # Kill the study while its second trial runs.
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.05)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  assert sweep.trial_states(workdir)["proxy_seed0"]["status"] == "started"
  assert not os.path.exists(out)

  rerun = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
  assert "resume proxy_seed0" in rerun.stdout and "run baseline_seed0" not in rerun.stdout
  finished = [r["trial"] for r in sweep.read_journal(workdir) if r["status"] == "finished"]
  names = [f"{arm}_seed{s}" for s in (0, 1, 2) for arm in ("baseline", "proxy")]
  assert sorted(finished) == sorted(names)  # Every trial finished exactly once.
  assert open(os.path.join(workdir, "baseline_seed0", "attempts")).read() == "x"
  # The journal records the code version; the report names it.
  commit = runs_lib.code_version()
  assert {r.get("commit") for r in sweep.read_journal(workdir)} == {commit}

  summary = open(os.path.join(out, "summary.md")).read()
  assert commit in summary and "All checks passed." in summary
  runs = pd.read_csv(os.path.join(out, "runs.csv"))
  assert len(runs) == 6 and set(runs["arm"]) == {"baseline", "proxy"}
  paired = pd.read_csv(os.path.join(out, "paired.csv")).set_index("metric")
  test = paired.loc["test_accuracy"]
  base = runs[runs.arm == "baseline"].sort_values("seed")["test_accuracy"].to_numpy()
  prox = runs[runs.arm == "proxy"].sort_values("seed")["test_accuracy"].to_numpy()
  reference = scipy_stats.ttest_rel(prox, base)
  assert test["mean"] == pytest.approx(0.021) and test["t_p"] == pytest.approx(reference.pvalue)
  assert test["sign_p"] == pytest.approx(0.25) and test["holm_t_p"] == pytest.approx(test["t_p"])
  assert "**proxy**: better by 2.10 points" in summary
  assert "Every seed is scored on the same test images" in summary  # Conditional intervals.
  # Stand-in runs take no time, so the harness's own seconds dominate here.
  assert "## Study overhead" in summary and "(ABOVE the 10% target)" in summary
  for plot in ("paired_differences.png", "accuracy_vs_time.png", "val_curves.png"):
    assert os.path.getsize(os.path.join(out, plot)) > 1000
  study_json = json.load(open(os.path.join(out, "study.json")))
  assert study_json["overhead"]["training_s"] == pytest.approx(6 * 0.01)

  # A different split in one arm of one seed: the report is refused, the old one kept.
  bad = str(tmp_path / "bad_runs")
  refused = subprocess.run(
    _study_command(study_file, bad, out, program),
    cwd=REPO,
    env=_env(BAD_SPLIT="proxy_seed1"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert refused.returncode == 2
  assert "seed 1, arm proxy vs baseline: split.json differs" in refused.stderr
  assert open(os.path.join(out, "summary.md")).read() == summary


@pytest.mark.slow
def test_shards_split_a_study_and_the_last_one_reports(tmp_path):
  program = tmp_path / "fake_main.py"
  program.write_text(FAKE_TRAINER)
  study_file = _study_file(tmp_path, FAKE_STUDY.replace("seeds=(0, 1, 2)", "seeds=(0, 1)"))
  workdir, out = str(tmp_path / "runs"), str(tmp_path / "report")
  first = subprocess.run(
    _study_command(study_file, workdir, out, program, "--shard=0/2"),
    env=_env(),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert first.returncode == 0, first.stderr[-2000:]
  assert "no report yet" in first.stdout and not os.path.exists(out)
  assert len(sweep.read_journal(workdir)) == 4  # Two trials, started and finished.
  second = subprocess.run(
    _study_command(study_file, workdir, out, program, "--shard=1/2"),
    env=_env(),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert second.returncode == 0, second.stderr[-2000:]
  shards = {r["trial"]: r["shard"] for r in sweep.read_journal(workdir)}
  assert sorted(set(shards.values())) == ["0/2", "1/2"] and len(shards) == 4
  assert len(pd.read_csv(os.path.join(out, "runs.csv"))) == 4


def _fake_run(seed, arm, **changes):
  summary = {
    "config": {"seed": seed, "batch_size": 32, "proxy": {"enabled": arm == "proxy"}},
    "num_epochs": 2,
    "init_checksum": f"c{seed}",
    "proxy_steps": [],
    "num_examples": {"train": 10},
    "history": [{"val_accuracy": 0.5, "val_loss": 1.0}, {"val_accuracy": 0.6, "val_loss": 0.9}],
  }
  split = {"pool_fingerprint": "f", "indices": {"train": [0, 1], "val": [2]}}
  for key, value in changes.items():
    target = split if key in ("indices", "pool_fingerprint") else summary
    target[key] = value
  return {"summary": summary, "split": split, "commit": "abc"}


@pytest.mark.parametrize(
  "changes,message",
  [
    ({}, None),
    ({"pool_fingerprint": "g"}, "split.json differs"),
    ({"init_checksum": "other"}, "initial weights differ"),
    ({"init_checksum": None}, "initial weights differ"),
    ({"num_epochs": 3}, "epochs differ"),
    ({"num_examples": {"train": 11}}, "data order"),
    (
      {"config": {"seed": 0, "batch_size": 32, "label_smoothing": 0.1, "proxy": {"enabled": True}}},
      "config differs in \\['label_smoothing'\\]",
    ),
    (
      {"history": [{"val_accuracy": 0.4, "val_loss": 1.0}, {"val_accuracy": 0.6, "val_loss": 0.9}]},
      "history before the first proxy",
    ),
  ],
)
def test_fairness_checks_refuse_unpaired_arms(changes, message):
  study = spec.Study(
    name="x",
    config="configs/default.py",
    seeds=(0, 1),
    arms={"baseline": {"proxy.enabled": False}, "proxy": {"proxy.enabled": True}},
  )
  runs = {(arm, seed): _fake_run(seed, arm) for arm in ("baseline", "proxy") for seed in (0, 1)}
  runs["proxy", 0] = _fake_run(0, "proxy", **changes)
  rows, failures = runs_lib.fairness_checks(study, runs)
  assert len(rows) == 4
  if message is None:
    assert not failures
  else:
    assert len(failures) == 1 and failures[0].startswith("seed 0, arm proxy")
    assert __import__("re").search(message, failures[0])
  runs["proxy", 1] = {**_fake_run(1, "proxy"), "commit": "def"}
  assert "different code versions: abc, def" in runs_lib.fairness_checks(study, runs)[1][-1]


CPU_2 = {"platform": "cpu", "device_kind": "cpu", "devices": 1, "processes": 1, "cpu_threads": 2}
CPU_1 = {**CPU_2, "cpu_threads": 1}


def _study_on(slices):
  """The two-arm, two-seed study with each run's summary.json `compute` from `slices`."""
  study = spec.Study(
    name="x",
    config="configs/default.py",
    seeds=(0, 1),
    arms={"baseline": {"proxy.enabled": False}, "proxy": {"proxy.enabled": True}},
  )
  runs = {}
  for (arm, seed), compute in slices.items():
    runs[arm, seed] = _fake_run(seed, arm)
    if compute is not None:
      runs[arm, seed]["summary"]["compute"] = compute
  return study, runs


KEYS = [(arm, seed) for seed in (0, 1) for arm in ("baseline", "proxy")]


def test_fairness_checks_refuse_runs_on_different_compute_slices():
  """Serial (2 cores) and --parallel 2 (1 core) trials differ on XLA:CPU: a mix is refused,
  naming the slices, the runs on each and the fix; one slice passes; older runs are skipped."""
  study, runs = _study_on({key: CPU_2 for key in KEYS})
  rows, failures = runs_lib.fairness_checks(study, runs)
  assert not failures
  assert {row["compute"] for row in rows} == {"cpu (cpu) x1, 1 process(es), 2 CPU thread(s)"}
  study, runs = _study_on({**{key: CPU_2 for key in KEYS}, ("proxy", 1): CPU_1})
  rows, failures = runs_lib.fairness_checks(study, runs)
  assert failures == [
    "the runs used different compute slices: cpu (cpu) x1, 1 process(es), 1 CPU thread(s) "
    "(proxy seed 1); cpu (cpu) x1, 1 process(es), 2 CPU thread(s) (baseline seed 0, proxy "
    "seed 0, baseline seed 1). Fix: " + runs_lib.COMPUTE_FIX
  ]
  assert "same --parallel / --devices_per_trial" in runs_lib.COMPUTE_FIX
  assert "thread count changes results" in runs_lib.COMPUTE_FIX
  gpus = {
    **{
      key: {**CPU_2, "platform": "gpu", "device_kind": "NVIDIA H100", "cpu_threads": None}
      for key in KEYS
    }
  }
  gpus["baseline", 0] = {**gpus["baseline", 0], "device_kind": "NVIDIA H200"}
  assert "NVIDIA H200" in runs_lib.fairness_checks(*_study_on(gpus))[1][0]
  # Runs of earlier versions recorded no slice: not compared, with each other or the rest.
  study, runs = _study_on({**{key: None for key in KEYS}, ("proxy", 1): CPU_1})
  rows, failures = runs_lib.fairness_checks(study, runs)
  assert not failures and rows[0]["compute"] == "unrecorded"


def test_fairness_checks_refuse_a_run_resumed_on_another_slice():
  """A trial that trained on 2 cores and was resumed on 1 is a mix by itself."""
  resumed = {"sessions": [CPU_2, CPU_1]}
  mix = (
    "resumed on another slice: cpu (cpu) x1, 1 process(es), 2 CPU thread(s) then cpu (cpu) "
    "x1, 1 process(es), 1 CPU thread(s)"
  )
  for slices, names in (
    ({**{key: CPU_2 for key in KEYS}, ("proxy", 0): resumed}, "proxy seed 0"),
    (
      {key: resumed for key in KEYS},
      "baseline seed 0, proxy seed 0, baseline seed 1, proxy seed 1",
    ),
  ):
    (failure,) = runs_lib.fairness_checks(*_study_on(slices))[1]
    assert failure.startswith("the runs used different compute slices: ")
    assert f"{mix} ({names})" in failure


# ---------------------------------------------------------------- a real tiny study


TINY_STUDY = """
from proxy_jax.study.arms import baseline_and_proxy

def get_study():
  return Study(
      name="tiny", config="configs/default.py", seeds=(0, 1),
      common={"num_epochs": 2, "data.max_examples": 120, "image_size": 16, "batch_size": 32,
              "eval_batch_size": 64, "model.width": 8, "augment.rotation_degrees": 0.0,
              "checkpoint_every_epochs": 1},
      arms=baseline_and_proxy({"proxy.schedule": "1,p,1", "proxy.cam_method": "gradcam",
                               "proxy.threshold": 0.5}),
      explain={"num_images": 24, "steps": 4, "grid_images": 3})
"""


@pytest.mark.slow
def test_real_tiny_study(tmp_path):
  """main.py trains both arms of two seeds; the report checks them and scores explanations."""
  study_file = _study_file(tmp_path, TINY_STUDY)
  out = str(tmp_path / "report")
  command = [
    sys.executable,
    "-m",
    "proxy_jax.study",
    f"--study={study_file}",
    f"--workdir={tmp_path / 'runs'}",
    f"--out={out}",
  ]
  result = subprocess.run(
    command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=400
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  study = json.load(open(os.path.join(out, "study.json")))
  assert not study["fairness_failures"] and len(study["runs"]) == 4
  checks = {(c["seed"], c["arm"]): c for c in study["fairness"]}
  for seed in (0, 1):  # Real runs: same init weights, and identical history until the proxy step.
    assert checks[seed, "proxy"]["init"] and checks[seed, "proxy"]["split"]
    assert checks[seed, "proxy"]["history"] == "identical for 1 epoch(s)"
  assert study["runs"][0]["init_checksum"] != study["runs"][2]["init_checksum"]  # Seeds differ.
  # Every run recorded the one compute slice they all trained on (the check compared them).
  assert len({r["compute"] for r in study["runs"]}) == 1
  assert study["runs"][0]["compute"].startswith("cpu (cpu) x")
  # The manipulation checks: the proxy arm's one step, from its runs' summaries.
  (step,) = study["manipulation"]["proxy"]
  proxy_runs = [r for r in study["runs"] if r["arm"] == "proxy"]
  assert step["epoch"] == 1 and step["chosen"]["n"] == 2
  assert step["chosen"]["mean"] == pytest.approx(
    np.mean([r["proxy_chosen_total"] for r in proxy_runs])
  )
  assert 0 < step["changed_pixel_share"]["mean"] <= 1 and step["changed_mean_abs"]["mean"] > 0
  assert "baseline" not in study["manipulation"]
  assert os.path.getsize(os.path.join(out, "manipulation.png")) > 1000
  explained = pd.read_csv(os.path.join(out, "explanations.csv"))
  assert len(explained) == 4 and (explained["images"] == 12).all()  # The whole test split.
  assert (
    explained["deletion_auc"].between(0, 1).all() and explained["insertion_auc"].between(0, 1).all()
  )
  assert os.path.getsize(os.path.join(out, "cams.png")) > 1000
  cost = study["overhead"]
  assert cost["training_s"] > 0 and cost["explanations_s"] > 0
  assert cost["total_s"] == pytest.approx(
    cost["trial_process_s"] + cost["explanations_s"] + cost["report_s"]
  )
  # --report=explanations: counts only, no report (the runs' scores are already there).
  scored = subprocess.run(
    command[:-1] + ["--report=explanations"],
    env=_env(),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert scored.returncode == 0, scored.stderr[-3000:]
  assert (
    "explanations of 4 finished run(s) in their trial folders (0 scored now, 4 already "
    "there; 0 run(s) not finished)"
  ) in scored.stdout
  assert "accuracy" not in scored.stdout.lower()
  _carried_trials_keep_their_explanation_scores(tmp_path, study_file, explained)


def _carried_trials_keep_their_explanation_scores(tmp_path, study_file, explained):
  """The report wrote each run's scores beside it; carried without checkpoints (another
  session's machine) the runs' scores read back; for other settings they are refused."""
  from proxy_jax.study.__main__ import write_study_report  # pylint: disable=g-import-not-at-top
  from proxy_jax.sweep import carry  # pylint: disable=g-import-not-at-top

  carry.export(str(tmp_path / "runs"), str(tmp_path / "carried"))
  restored = str(tmp_path / "restored")
  carry.restore(str(tmp_path / "carried"), restored)
  assert not os.path.exists(os.path.join(restored, "baseline_seed0", "checkpoints"))
  cwd = os.getcwd()
  os.chdir(REPO)  # The study's config path is relative to the repository root.
  try:
    study = spec.load_study(study_file)
    again = str(tmp_path / "again")
    text = write_study_report(study, restored, again, "c")
    reread = pd.read_csv(os.path.join(again, "explanations.csv"))
    for key in explanations.SCORES + ("accuracy", "images"):
      assert reread[key].tolist() == explained[key].tolist()
    assert reread["from_cache"].all() and not explained["from_cache"].any()
    assert "4 of 4 run(s) read back" in text and not os.path.exists(os.path.join(again, "cams.png"))
    other = dataclasses.replace(study, explain={**study.explain, "steps": 5})
    with pytest.raises(spec.StudyError, match="no checkpoints/ .* scored for other settings"):
      write_study_report(other, restored, str(tmp_path / "other"), "c")
    # Trials carried by a report older than the cache: backfilled from its explanations.csv.
    from proxy_jax.study import backfill  # pylint: disable=g-import-not-at-top

    for name in os.listdir(restored):
      if os.path.exists(os.path.join(restored, name, explanations.CACHE_FILE)):
        os.remove(os.path.join(restored, name, explanations.CACHE_FILE))
    done = backfill.backfill(study, restored, os.path.join(again, "explanations.csv"), "old")
    assert len(done["written"]) == 4 and not done["kept"] and not done["absent"]
    assert (
      backfill.backfill(study, restored, os.path.join(again, "explanations.csv"), "old")["kept"]
      == done["written"]
    )  # Never overwritten.
    third = str(tmp_path / "third")
    text = write_study_report(study, restored, third, "c")
    backfilled = pd.read_csv(os.path.join(third, "explanations.csv"))
    for key in explanations.SCORES + ("accuracy", "images"):
      assert backfilled[key].tolist() == explained[key].tolist()
    assert "Scored by code version old; 4 of 4 run(s) read back" in text
  finally:
    os.chdir(cwd)


@given(st.integers(1, 2000).flatmap(lambda total: st.tuples(st.integers(0, total), st.just(total))))
def test_explained_images_are_distinct_and_spread_over_the_split(count_and_total):
  count, total = count_and_total
  chosen = explanations.spread_indices(count, total)
  assert len(chosen) == count and len(set(chosen.tolist())) == count
  assert ((chosen >= 0) & (chosen < total)).all() and (np.diff(chosen) > 0).all()
  if count >= 2:
    assert chosen[0] == 0 and chosen[-1] == total - 1


def test_explained_images_of_a_class_ordered_split_cover_every_class():
  """An image-folder test split lists class by class: 256 of 1,000 are not the first 3 classes."""
  labels = np.repeat(np.arange(10), 100)
  counts = np.bincount(labels[explanations.spread_indices(256, len(labels))], minlength=10)
  assert counts.min() >= 25 and counts.max() <= 26

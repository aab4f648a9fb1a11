"""Carrying finished trials through the checkout: export keeps the finished trials' small files
and records only, restore makes the sweep skip exactly those, never overwrites a differing trial,
and exporting twice changes nothing."""

import json
import os
import subprocess
import sys

import pytest

from proxy_jax import sweep
from proxy_jax.core import errors
from proxy_jax.run import records
from proxy_jax.core.io_utils import atomic_write_json, atomic_write_text
from proxy_jax.study import pilot
from proxy_jax.sweep import carry, journal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_FILES = [
  "classes.json",
  "config.json",
  "log.txt",
  "split.json",
  "summary.json",
  "sweep_trial.json",
  "train.log",
]
LEFT_BEHIND = ["checkpoints", "events.out.tfevents.1.vm.1.0.v2", "augmented_examples.png"]


def _trials(count=5):
  overrides = [
    {"optimizer.learning_rate": lr, "seed": seed} for lr in (0.05, 0.1, 0.2) for seed in (0, 1)
  ][:count]
  return [{"name": sweep.trial_name(o), "overrides": o} for o in overrides]


def _summary(seed, accuracy):
  row = records.EpochRecord(epoch=2, val_accuracy=accuracy, val_loss=1.0 - accuracy)
  return records.Summary(
    config={"seed": seed, "proxy": {"enabled": False}},
    final=row,
    best=records.Best(accuracy, 2),
    test={"accuracy": accuracy},
    num_epochs=2,
    wall_time_s=3.0,
    history=[row],
    proxy_steps=[],
    train_split={"accuracy": 0.99, "loss": 0.1},
  )


def _fake_workdir(workdir, states, trials=None):
  """What a sweep leaves, written by the project's own writers: sweep.json, the journal, and
  per trial its small files, a summary when finished, and the large files that stay behind.
  `states` maps trial index -> "finished" | "failed" | "started"; others never started."""
  trials = trials or _trials()
  os.makedirs(workdir)
  atomic_write_json(
    os.path.join(workdir, sweep.SWEEP_FILE),
    {
      "config": "configs/x.py",
      "sweep": "configs/sweeps/x.py",
      "common": {"num_epochs": 2},
      "trials": trials,
    },
  )
  path = journal.journal_path(workdir, (0, 1))
  for index, state in states.items():
    trial = trials[index]
    trial_dir = os.path.join(workdir, trial["name"])
    os.makedirs(os.path.join(trial_dir, "checkpoints", "2"))
    atomic_write_text(os.path.join(trial_dir, "checkpoints", "2", "state"), "weights" * 100)
    atomic_write_text(os.path.join(trial_dir, LEFT_BEHIND[1]), "events")
    atomic_write_text(os.path.join(trial_dir, LEFT_BEHIND[2]), "png")
    atomic_write_text(os.path.join(trial_dir, ".sweep.lock"), "lock")
    atomic_write_json(os.path.join(trial_dir, "sweep_trial.json"), trial)
    atomic_write_json(os.path.join(trial_dir, "config.json"), {"seed": index})
    atomic_write_json(os.path.join(trial_dir, "classes.json"), ["a", "b"])
    atomic_write_json(
      os.path.join(trial_dir, "split.json"),
      {"pool_fingerprint": "f", "parameters": {}, "indices": {"train": [0, 1], "val": [2]}},
    )
    atomic_write_text(os.path.join(trial_dir, "log.txt"), f"log of {trial['name']}\n")
    atomic_write_text(os.path.join(trial_dir, "train.log"), "==== run\n")
    # Every trial first starts (interleaved with the others, as a parallel sweep writes).
    journal.append_record(
      path, {"trial": trial["name"], "status": sweep.STARTED, "time": 10.0 + index, "commit": "abc"}
    )
  for index, state in states.items():
    trial = trials[index]
    if state == sweep.STARTED:
      continue
    if state == sweep.FINISHED:
      records.write_summary(
        os.path.join(workdir, trial["name"]), _summary(index % 2, 0.5 + index / 100)
      )
    journal.append_record(
      path,
      {
        "trial": trial["name"],
        "status": state,
        "time": 20.0 + index,
        "seconds": 5.0,
        "commit": "abc",
      },
    )
  return trials


def _listing(folder):
  return sorted(
    os.path.relpath(os.path.join(root, name), folder)
    for root, _, names in os.walk(folder)
    for name in names
  )


def _snapshot(folder):
  return {
    name: (
      open(os.path.join(folder, name), "rb").read(),
      os.stat(os.path.join(folder, name)).st_mtime_ns,
    )
    for name in _listing(folder)
  }


# Trial 0 failed, 1 and 3 finished, 2 was interrupted, 4 never started.
STATES = {0: sweep.FAILED, 1: sweep.FINISHED, 2: sweep.STARTED, 3: sweep.FINISHED}


def test_export_keeps_only_finished_trials_and_their_small_files(tmp_path):
  workdir, out = str(tmp_path / "runs"), str(tmp_path / "trials")
  trials = _fake_workdir(workdir, STATES)
  names = [t["name"] for t in trials]
  result = carry.export(workdir, out)
  assert result["exported"] == [names[1], names[3]]
  assert result["left_out"] == {names[0]: "failed", names[2]: "started", names[4]: "not started"}
  assert _listing(out) == sorted(
    ["journal.jsonl", "sweep.json"] + [f"{names[i]}/{f}" for i in (1, 3) for f in SMALL_FILES]
  )
  for name in (names[1], names[3]):
    for file_name in SMALL_FILES:
      assert (
        open(os.path.join(out, name, file_name), "rb").read()
        == open(os.path.join(workdir, name, file_name), "rb").read()
      )
  # Every record of the finished trials (their start too), in the journal's order.
  assert sweep.read_journal(out) == [
    r for r in sweep.read_journal(workdir) if r["trial"] in (names[1], names[3])
  ]
  assert [(r["trial"], r["status"]) for r in sweep.read_journal(out)] == [
    (names[1], "started"),
    (names[3], "started"),
    (names[1], "finished"),
    (names[3], "finished"),
  ]


def test_a_finished_trial_without_its_summary_is_left_out(tmp_path):
  workdir, out = str(tmp_path / "runs"), str(tmp_path / "trials")
  names = [t["name"] for t in _fake_workdir(workdir, STATES)]
  os.remove(os.path.join(workdir, names[3], "summary.json"))
  result = carry.export(workdir, out)
  assert result["exported"] == [names[1]]
  assert "summary.json" in result["left_out"][names[3]]


def test_restore_makes_the_sweep_skip_exactly_the_carried_trials(tmp_path):
  workdir, out, fresh = (str(tmp_path / n) for n in ("runs", "trials", "next"))
  trials = _fake_workdir(workdir, STATES)
  carry.export(workdir, out)
  result = carry.restore(out, fresh)
  assert result == {
    "restored": [trials[1]["name"], trials[3]["name"]],
    "present": [],
    "kept_sweep_file": False,
  }
  states = journal.recheck_finished(trials, journal.trial_states(fresh), fresh)
  actions = {t["name"]: a for t, a in journal.plan(trials, states, retry_failed=False)}
  assert actions == {
    t["name"]: "skip-finished" if i in (1, 3) else "run" for i, t in enumerate(trials)
  }
  for index in (1, 3):
    trial_dir = os.path.join(fresh, trials[index]["name"])
    assert sorted(os.listdir(trial_dir)) == SMALL_FILES
    assert (
      records.read_summary(trial_dir).to_json() == _summary(index % 2, 0.5 + index / 100).to_json()
    )
  # Restoring again, or into the workdir the trials came from, changes nothing.
  before = _snapshot(fresh)
  assert carry.restore(out, fresh)["present"] == [trials[1]["name"], trials[3]["name"]]
  assert _snapshot(fresh) == before
  original = _snapshot(workdir)
  assert carry.restore(out, workdir)["restored"] == []
  assert _snapshot(workdir) == original


def test_restore_refuses_to_overwrite_a_differing_trial(tmp_path):
  workdir, out, other = (str(tmp_path / n) for n in ("runs", "trials", "other"))
  trials = _fake_workdir(workdir, STATES)
  carry.export(workdir, out)
  # Another workdir where trial 3 ran otherwise (another accuracy), and trial 1 not at all.
  _fake_workdir(other, {3: sweep.FINISHED})
  records.write_summary(os.path.join(other, trials[3]["name"]), _summary(1, 0.9))
  before = _snapshot(other)
  with pytest.raises(
    errors.WorkdirError,
    match=f"{trials[3]['name']} .summary.json missing or different.*Nothing was restored",
  ):
    carry.restore(out, other)
  assert _snapshot(other) == before  # Not even trial 1 was copied.
  # The same through the command line: one error line, exit status 2.
  process = subprocess.run(
    [
      sys.executable,
      "-m",
      "proxy_jax.sweep.carry",
      "restore",
      f"--from={out}",
      f"--workdir={other}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == 2, process.stderr
  assert process.stderr.startswith("error: --workdir=") and process.stderr.count("\n") == 1
  assert _snapshot(other) == before


def test_restore_refuses_a_trial_the_workdir_journal_knows_otherwise(tmp_path):
  workdir, out, other = (str(tmp_path / n) for n in ("runs", "trials", "other"))
  trials = _fake_workdir(workdir, STATES)
  carry.export(workdir, out)
  os.makedirs(other)
  journal.append_record(
    journal.journal_path(other, (0, 1)),
    {"trial": trials[1]["name"], "status": sweep.FAILED, "time": 99.0},
  )
  with pytest.raises(errors.WorkdirError, match="records of its own"):
    carry.restore(out, other)
  assert os.listdir(other) == ["journal.jsonl"]


def test_export_twice_is_idempotent_and_adds_newly_finished_trials(tmp_path):
  workdir, out = str(tmp_path / "runs"), str(tmp_path / "trials")
  trials = _fake_workdir(workdir, STATES)
  carry.export(workdir, out)
  before = _snapshot(out)
  carry.export(workdir, out)
  assert _snapshot(out) == before  # Nothing rewritten, not even touched.
  # Trial 2 finishes (resumed): the next export adds it and its records.
  records.write_summary(os.path.join(workdir, trials[2]["name"]), _summary(0, 0.6))
  journal.append_record(
    journal.journal_path(workdir, (0, 1)),
    {"trial": trials[2]["name"], "status": sweep.FINISHED, "time": 30.0},
  )
  result = carry.export(workdir, out)
  assert result["exported"] == [trials[i]["name"] for i in (1, 2, 3)]
  assert os.path.isfile(os.path.join(out, trials[2]["name"], "summary.json"))
  assert {
    k: v
    for k, v in _snapshot(out).items()
    if not k.startswith(trials[2]["name"]) and k != "journal.jsonl"
  } == {k: v for k, v in before.items() if k != "journal.jsonl"}
  assert [r["trial"] for r in sweep.read_journal(out)].count(trials[2]["name"]) == 2


def test_export_refuses_to_drop_a_trial_it_carried_before(tmp_path):
  workdir, out, fresh = (str(tmp_path / n) for n in ("runs", "trials", "next"))
  trials = _fake_workdir(workdir, STATES)
  carry.export(workdir, out)
  _fake_workdir(fresh, {1: sweep.FINISHED})  # A new session that forgot to restore.
  before = _snapshot(out)
  with pytest.raises(errors.WorkdirError, match=f"{trials[3]['name']}.*restore them first"):
    carry.export(fresh, out)
  assert _snapshot(out) == before


def test_the_pilot_reads_a_restored_workdir_as_the_original(tmp_path):
  workdir, out, fresh = (str(tmp_path / n) for n in ("runs", "trials", "next"))
  _fake_workdir(workdir, {i: sweep.FINISHED for i in range(6)}, _trials(6))
  carry.export(workdir, out)
  carry.restore(out, fresh)
  original = pilot.write_pilot(workdir, str(tmp_path / "a"))
  restored = pilot.write_pilot(fresh, str(tmp_path / "b"))
  assert {**restored, "workdir": None} == {**original, "workdir": None}


# ---------------------------------------------------------------- through the sweep runner

FAKE_TRAINER = """
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
with open(os.path.join(args["workdir"], "attempts"), "a") as f:
  f.write("x")
if args.get("config.proxy.threshold") == "0.9" and not os.environ.get("HEALED"):
  raise SystemExit("boom")
with open(os.path.join(args["workdir"], "summary.json"), "w") as f:
  json.dump({"config": {"args": args}}, f)
"""


def test_the_sweep_runs_only_what_was_not_carried(tmp_path, monkeypatch, capsys):
  """The real runner, with a fake trainer: a failed trial is left out and runs next time."""
  trainer = tmp_path / "trainer.py"
  trainer.write_text(FAKE_TRAINER)
  sweep_file = os.path.join(REPO, "configs", "sweeps", "smoke.py")
  config = os.path.join(REPO, "configs", "default.py")
  workdir, out, fresh = (str(tmp_path / n) for n in ("runs", "trials", "next"))
  counts = sweep.run_sweep(config, sweep_file, workdir, program=str(trainer))
  assert (counts["finished"], counts["failed"]) == (2, 1)
  carry.export(workdir, out)
  assert len(sweep.read_journal(out)) == 4  # Two trials, started and finished.
  carry.restore(out, fresh)
  monkeypatch.setenv("HEALED", "1")
  capsys.readouterr()
  counts = sweep.run_sweep(config, sweep_file, fresh, program=str(trainer))
  assert (counts["finished_before"], counts["finished"], counts["failed"]) == (2, 1, 0)
  trials, _ = sweep.load_sweep(sweep_file)
  ran = [t["name"] for t in trials if os.path.exists(os.path.join(fresh, t["name"], "attempts"))]
  assert ran == [trials[2]["name"]] and trials[2]["overrides"] == {"proxy.threshold": 0.9}
  assert "[1/1] run " in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_sweep_carried_across_sessions(tmp_path):
  """configs/sweeps/smoke.py for real: half trained, carried, restored, finished."""
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  workdir, out, fresh = (str(tmp_path / n) for n in ("runs", "trials", "next"))
  command = [
    sys.executable,
    "-m",
    "proxy_jax.sweep",
    f"--config={REPO}/configs/default.py",
    f"--sweep={REPO}/configs/sweeps/smoke.py",
  ]

  def run(*args):
    process = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process.stdout

  run(*command, f"--workdir={workdir}", "--shard=0/2")  # Trials 0 and 2 of 3.
  exported = run(
    sys.executable, "-m", "proxy_jax.sweep.carry", "export", f"--workdir={workdir}", f"--to={out}"
  )
  assert "exported 2 finished trial(s)" in exported and "1 unfinished left out" in exported
  run(
    sys.executable, "-m", "proxy_jax.sweep.carry", "restore", f"--from={out}", f"--workdir={fresh}"
  )
  rerun = run(*command, f"--workdir={fresh}")
  assert "(2 finished, 0 failed and skipped, 1 to run)" in rerun and "3/3 finished" in rerun
  summaries = [
    records.read_summary(os.path.join(fresh, n))
    for n in sorted(os.listdir(out))
    if os.path.isdir(os.path.join(out, n))
  ]
  assert all(s is not None and len(s.history) == 2 for s in summaries)
  assert not any(os.path.exists(os.path.join(out, n, "checkpoints")) for n in os.listdir(out))
  assert json.load(open(os.path.join(out, "sweep.json")))["trials"]

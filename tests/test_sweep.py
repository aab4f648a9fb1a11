"""Sweeps: names, shards, the journal under kills, and a real smoke sweep killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from proxy_jax import sweep
from proxy_jax.core import digests, errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = os.path.join(REPO, "configs", "sweeps", "proxy_grid.py")


def test_grid_helpers():
  assert sweep.product(a=[1, 2], b=["x"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
  assert sweep.product(sweep.zip_fields(a=[1, 2], b=[3, 4]), c=[0]) == [
    {"a": 1, "b": 3, "c": 0},
    {"a": 2, "b": 4, "c": 0},
  ]
  assert sweep.concat([{"a": 1}], [{"b": 2}]) == [{"a": 1}, {"b": 2}]
  with pytest.raises(ValueError):
    sweep.zip_fields(a=[1], b=[1, 2])


def test_names_are_stable_safe_and_unique():
  trials, _ = sweep.load_sweep(GRID)
  names = [t["name"] for t in trials]
  assert len(trials) == 3 + 4 * 3 * 3 * 3 * 2 * 3
  assert len(set(names)) == len(names)
  assert all(n == os.path.basename(n) and not n.startswith(".") and len(n) < 200 for n in names)
  # Key order does not matter; the name depends on this trial's overrides only.
  assert (
    sweep.trial_name({"proxy.threshold": 0.6, "seed": 1})
    == sweep.trial_name({"seed": 1, "proxy.threshold": 0.6})
    == "threshold=0.6,seed=1"
  )
  # Keys sharing a last component keep their full path.
  assert sweep.trial_name({"model.name": "vit_ti16", "data.name": "dogs"}) == (
    "data.name=dogs,model.name=vit_ti16"
  )
  # Lossy sanitising appends a hash, so "a/b" and "a_b" cannot collide.
  slash, underscore = sweep.trial_name({"x": "a/b"}), sweep.trial_name({"x": "a_b"})
  assert "/" not in slash and slash != underscore
  assert sweep.trial_name({}) == "default"


def test_named_trials_keep_their_names():
  trials = sweep.named_trials([("baseline_seed0", {"seed": 0}), {"proxy.threshold": 0.5}], "x")
  assert [t["name"] for t in trials] == ["baseline_seed0", "threshold=0.5"]
  assert trials[0]["overrides"] == {"seed": 0}
  with pytest.raises(ValueError, match="share the name"):
    sweep.named_trials([("a", {"seed": 0}), ("a", {"seed": 1})], "x")
  for bad in ("a/b", ".hidden", "", "x" * 200):
    with pytest.raises(ValueError, match="plain directory name"):
      sweep.named_trials([(bad, {})], "x")


def test_shards_partition_the_grid():
  trials, _ = sweep.load_sweep(GRID)
  names = [t["name"] for t in trials]
  for count in (1, 2, 3, 7, 1000):
    parts = [sweep.shard_trials(names, index, count) for index in range(count)]
    flat = [n for part in parts for n in part]
    assert sorted(flat) == sorted(names) and len(flat) == len(names)  # No gap, no overlap.
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
  assert sweep.parse_shard("2/4") == (2, 4)
  for bad in ("4/4", "-1/2", "1", "a/b"):
    with pytest.raises(ValueError):
      sweep.parse_shard(bad)


def test_journal_survives_a_torn_line(tmp_path):
  path = str(tmp_path / "journal.jsonl")
  sweep.append_record(path, {"trial": "a", "status": sweep.STARTED, "time": 1.0})
  sweep.append_record(path, {"trial": "a", "status": sweep.FINISHED, "time": 2.0})
  with open(path, "ab") as f:
    f.write(b'{"trial": "b", "status": "sta')  # A kill in the middle of a write.
  assert sweep.trial_states(str(tmp_path)) == {
    "a": {"trial": "a", "status": sweep.FINISHED, "time": 2.0}
  }
  # The next append starts on a fresh line, so it is not glued to the torn one.
  sweep.append_record(path, {"trial": "b", "status": sweep.FAILED, "time": 3.0})
  states = sweep.trial_states(str(tmp_path))
  assert states["b"]["status"] == sweep.FAILED and states["a"]["status"] == sweep.FINISHED
  # Shard journals are merged by time.
  sweep.append_record(
    os.path.join(tmp_path, "journal-shard1of2.jsonl"),
    {"trial": "b", "status": sweep.FINISHED, "time": 4.0},
  )
  assert sweep.trial_states(str(tmp_path))["b"]["status"] == sweep.FINISHED


def test_plan_skips_finished_and_failed_unless_asked():
  trials = [{"name": n, "overrides": {}} for n in ("a", "b", "c", "d")]
  states = {"a": {"status": "finished"}, "b": {"status": "failed"}, "c": {"status": "started"}}
  assert [a for _, a in sweep.plan(trials, states, False)] == [
    "skip-finished",
    "skip-failed",
    "resume",
    "run",
  ]
  assert [a for _, a in sweep.plan(trials, states, True)][1] == "retry"


def test_unknown_override_fails_before_running(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_sweep():\n  return [{'proxy.treshold': 0.5}]\n")
  with pytest.raises(errors.ConfigError, match="treshold.*closest: proxy.threshold"):
    sweep.run_sweep(os.path.join(REPO, "configs", "default.py"), str(bad), str(tmp_path / "w"))


# ---------------------------------------------------------------- a real sweep, killed


SMOKE = os.path.join(REPO, "configs", "sweeps", "smoke.py")
# Two trials of the smoke sweep, made cheaper still: no rotation (slow to compile), fewer images.
TEST_SWEEP = """
def get_common():
  return {"num_epochs": 2, "proxy.schedule": "1,p,1", "data.max_examples": 120,
          "image_size": 16, "batch_size": 32, "eval_batch_size": 64,
          "augment.rotation_degrees": 0.0, "proxy.cam_method": "gradcam"}

def get_sweep():
  return [{"proxy.enabled": False}, {"proxy.threshold": 0.5}]
"""


def _sweep_command(workdir, *extra, sweep_file=SMOKE):
  return [
    sys.executable,
    "-m",
    "proxy_jax.sweep",
    f"--config={REPO}/configs/default.py",
    f"--sweep={sweep_file}",
    f"--workdir={workdir}",
    *extra,
  ]


def _env():
  return {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}


def _journal(workdir):
  records = []
  for name in os.listdir(workdir):
    if name.startswith("journal"):
      with open(os.path.join(workdir, name)) as f:
        records += [json.loads(line) for line in f if line.strip()]
  return records


def _has_checkpoint(trial_dir):
  """Whether a whole checkpoint is written: its manifest comes last (a kill before it leaves a
  checkpoint that is set aside as undigested, and the trial starts afresh)."""
  path = os.path.join(trial_dir, "checkpoints")
  return os.path.isdir(path) and any(
    name.isdigit() and os.path.exists(os.path.join(path, name, digests.MANIFEST))
    for name in os.listdir(path)
  )


@pytest.mark.slow
def test_smoke_sweep_killed_and_resumed(tmp_path):
  sweep_file = tmp_path / "tiny_sweep.py"
  sweep_file.write_text(TEST_SWEEP)
  workdir = str(tmp_path / "grid")
  trials, _ = sweep.load_sweep(str(sweep_file))
  names = [t["name"] for t in trials]
  victim = os.path.join(workdir, names[1])
  command = _sweep_command(workdir, sweep_file=str(sweep_file))
  process = subprocess.Popen(
    command, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
  )
  deadline = time.time() + 240
  # Kill the sweep while the second trial trains, after its first checkpoint.
  while not _has_checkpoint(victim):
    assert process.poll() is None, process.stdout.read().decode()[-3000:]
    assert time.time() < deadline, "the second trial never checkpointed"
    time.sleep(0.2)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  process.stdout.close()
  # With 120 examples the last epoch can end between the poll and the kill: then the trial's
  # summary exists although the journal never heard of its end.
  ended_before_kill = os.path.exists(os.path.join(victim, "summary.json"))
  states = {r["trial"]: r["status"] for r in _journal(workdir)}
  assert states[names[0]] == "finished"

  rerun = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  if states[names[1]] == "started":  # Killed mid-trial (the usual case): resumed, not redone.
    assert f"resume {names[1]}" in rerun.stdout
    with open(os.path.join(victim, "train.log")) as f:
      log = f.read()
    assert ("already complete" if ended_before_kill else "Resumed from") in log
  assert names[0] not in rerun.stdout
  finished = [r["trial"] for r in _journal(workdir) if r["status"] == "finished"]
  assert sorted(finished) == sorted(names)  # Every trial finished exactly once.
  for name in names:
    with open(os.path.join(workdir, name, "summary.json")) as f:
      summary = json.load(f)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
  # The resumed trial kept its overrides and the common ones.
  assert summary["config"]["proxy"]["threshold"] == 0.5
  assert summary["config"]["data"]["max_examples"] == 120
  assert len(summary["proxy_steps"]) == 1

  again = subprocess.run(
    command + ["--dry-run"], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert "2 finished" in again.stdout and "0 to run" in again.stdout


def test_smoke_sweep_file_is_valid():
  trials, common = sweep.load_sweep(SMOKE)
  assert 2 <= len(trials) <= 3 and common["num_epochs"] <= 2
  sweep.check_overrides(os.path.join(REPO, "configs", "default.py"), trials, common)


FAKE_TRAINER = """
import json, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
workdir = args["workdir"]
with open(os.path.join(workdir, "attempts"), "a") as f:
  f.write("x")
if args.get("config.proxy.threshold") == "0.9" and not os.path.exists(os.environ["FIXED"]):
  raise SystemExit("boom: threshold 0.9 diverged")
if args.get("config.proxy.threshold") == "0.5" and os.environ.get("HANG"):
  with open(os.path.join(workdir, "pid"), "w") as f:
    f.write(str(os.getpid()))
  time.sleep(60)
with open(os.path.join(workdir, "summary.json"), "w") as f:
  json.dump({"args": args}, f)
"""


def _running(pid):
  """True while `pid` exists and is not a zombie (Linux /proc)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_failures_retries_and_no_orphans(tmp_path):
  """With a stand-in trainer: error tails, --retry-failed, and a killed sweep kills its trial."""
  program = tmp_path / "fake_main.py"
  program.write_text(FAKE_TRAINER)
  workdir = str(tmp_path / "grid")
  env = {**_env(), "FIXED": str(tmp_path / "fixed")}
  command = _sweep_command(workdir, f"--program={program}")
  first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
  assert first.returncode == 1  # One trial failed.
  states = sweep.trial_states(workdir)
  failed = sweep.trial_name({"proxy.threshold": 0.9})
  assert states[failed]["status"] == "failed"
  assert "boom: threshold 0.9 diverged" in states[failed]["error"]
  assert sum(s["status"] == "finished" for s in states.values()) == 2
  # Overrides reach the trainer, the common ones of the sweep file too.
  with open(os.path.join(workdir, "threshold=0.5", "summary.json")) as f:
    args = json.load(f)["args"]
  assert args["config.proxy.threshold"] == "0.5" and args["config.num_epochs"] == "2"

  second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
  assert second.returncode == 0 and "0 to run" in second.stdout
  (tmp_path / "fixed").write_text("")
  third = subprocess.run(
    command + ["--retry-failed"], env=env, capture_output=True, text=True, timeout=120
  )
  assert third.returncode == 0, third.stdout
  assert sweep.trial_states(workdir)[failed]["status"] == "finished"
  for name, attempts in [("enabled=false", 1), ("threshold=0.5", 1), (failed, 2)]:
    assert (tmp_path / "grid" / name / "attempts").read_text() == "x" * attempts

  # A sweep killed with SIGKILL takes its running trial down with it.
  hung = str(tmp_path / "hung")
  process = subprocess.Popen(
    _sweep_command(hung, f"--program={program}"),
    env={**env, "HANG": "1"},
    stdout=subprocess.DEVNULL,
  )
  pid_file = os.path.join(hung, "threshold=0.5", "pid")
  deadline = time.time() + 60
  while not os.path.exists(pid_file) or not open(pid_file).read():
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.05)
  child = int(open(pid_file).read())
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  deadline = time.time() + 10
  while _running(child) and time.time() < deadline:
    time.sleep(0.05)
  assert not _running(child), "the trial outlived the killed sweep"
  assert sweep.trial_states(hung)["threshold=0.5"]["status"] == "started"

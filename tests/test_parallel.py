"""Trials side by side (--parallel): the machine's slices, and a real sweep of two trials at once
on disjoint cores, killed and resumed, each trial equal to itself run alone on its cores."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from proxy_jax import sweep
from proxy_jax.core import errors
from proxy_jax.sweep import runner, slots
from tests.test_sweep import REPO, TEST_SWEEP, _env, _journal, _sweep_command

TIMING_KEYS = ("epoch_seconds", "images_per_second")


def test_cpu_slots_are_disjoint_shares_of_the_cores_with_matching_thread_counts():
  two = slots.plan_slots(2, cores=[0, 1, 2], gpus=[])
  assert [s.cores for s in two] == [(0,), (1, 2)]
  assert [s.env["OMP_NUM_THREADS"] for s in two] == ["1", "2"]
  assert [s.label for s in two] == ["cores 0", "cores 1-2"]
  assert slots.plan_slots(1, gpus=[]) == [slots.Slot("this machine")]
  with pytest.raises(errors.UserError, match="--parallel=3: only 2 CPU cores"):
    slots.plan_slots(3, cores=[4, 5], gpus=[])
  with pytest.raises(errors.UserError, match="--parallel=0"):
    slots.plan_slots(0)


def test_gpu_slots_own_devices_or_share_them_with_a_memory_share():
  own = slots.plan_slots(2, 2, gpus=["0", "1", "2", "3"])
  assert [s.env for s in own] == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
  shared = slots.plan_slots(3, 0, gpus=["4", "7"])  # 0: one GPU each where there are GPUs.
  assert [s.env["CUDA_VISIBLE_DEVICES"] for s in shared] == ["4", "7", "4"]
  assert {s.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] for s in shared} == {"0.450"}
  with pytest.raises(errors.UserError, match="needs 6 GPUs, 4 are visible"):
    slots.plan_slots(3, 2, gpus=["0", "1", "2", "3"])
  with pytest.raises(errors.UserError, match="no GPU is visible"):
    slots.plan_slots(2, 1, gpus=[])
  assert slots.visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
  assert slots.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def _trial_cores(trial_dir):
  """The cores the trial's training process reported (the last run's line in log.txt)."""
  with open(os.path.join(trial_dir, "log.txt")) as f:
    found = re.findall(r"device\(s\); CPU cores (\S+)", f.read())
  return found[-1]


def _comparable(summary):
  return {
    "history": [
      {k: v for k, v in row.items() if k not in TIMING_KEYS} for row in summary["history"]
    ],
    "test": summary["test"],
    "bank_size": summary["bank_size"],
    "proxy_steps": [{k: v for k, v in s.items() if k != "seconds"} for s in summary["proxy_steps"]],
  }


def _alive(workdir):
  """Processes whose command line names `workdir` (the sweep's trials)."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        if workdir.encode() in f.read() and int(pid) != os.getpid():
          found.append(int(pid))
    except OSError:
      pass
  return found


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPU cores")
def test_two_trials_at_once_on_their_own_cores_killed_resumed_and_equal_alone(tmp_path):
  sweep_file = tmp_path / "tiny_sweep.py"
  sweep_file.write_text(TEST_SWEEP)
  workdir = str(tmp_path / "grid")
  names = [t["name"] for t in sweep.load_sweep(str(sweep_file))[0]]
  command = _sweep_command(workdir, "--parallel=2", sweep_file=str(sweep_file))
  process = subprocess.Popen(
    command, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
  )
  deadline = time.time() + 240
  while (
    len(
      {r["trial"] for r in _journal(workdir) if r["status"] == "started"}
      if os.path.isdir(workdir)
      else ()
    )
    < 2
  ):  # Both started: they run at once.
    assert process.poll() is None, process.stdout.read().decode()[-3000:]
    assert time.time() < deadline, "the two trials never ran at once"
    time.sleep(0.2)
  time.sleep(3)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  process.stdout.close()
  for _ in range(50):  # SIGKILL reaches the trials through their parent-death signal.
    if not _alive(workdir):
      break
    time.sleep(0.1)
  assert not _alive(workdir), "a trial outlived its killed runner"

  rerun = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=400)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  records = _journal(workdir)
  finished = [r["trial"] for r in records if r["status"] == "finished"]
  assert sorted(finished) == sorted(names) and "failed" not in {r["status"] for r in records}
  cores = {name: _trial_cores(os.path.join(workdir, name)) for name in names}
  assert sorted(cores.values()) == ["0", "1"], cores  # Disjoint, one core each.

  # Each trial alone, pinned to the same core: the same summary.
  original = os.sched_getaffinity(0)
  trials, common = sweep.load_sweep(str(sweep_file))
  for trial in trials:
    alone = str(tmp_path / f"alone-{trial['name']}")
    os.sched_setaffinity(0, {int(cores[trial["name"]])})
    try:
      counts = runner.run_trials(f"{REPO}/configs/default.py", [trial], common, alone)
    finally:
      os.sched_setaffinity(0, original)
    assert counts["finished"] == 1
    assert _trial_cores(os.path.join(alone, trial["name"])) == cores[trial["name"]]
    summaries = []
    for root in (workdir, alone):
      with open(os.path.join(root, trial["name"], "summary.json")) as f:
        summaries.append(_comparable(json.load(f)))
    assert summaries[0] == summaries[1]


def test_one_failing_trial_does_not_stop_the_other(tmp_path):
  fake = tmp_path / "fake_trainer.py"
  fake.write_text(
    "import json, os, sys\n"
    "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
    "os.makedirs(args['workdir'], exist_ok=True)\n"
    "if args.get('config.seed') == '1':\n"
    "  sys.exit(3)\n"
    "with open(os.path.join(args['workdir'], 'summary.json'), 'w') as f:\n"
    "  json.dump({'cores': sorted(os.sched_getaffinity(0))}, f)\n"
  )
  trials = [{"name": f"seed{s}", "overrides": {"seed": s}} for s in (0, 1, 2)]
  cores = sorted(os.sched_getaffinity(0))
  counts = runner.run_trials(
    f"{REPO}/configs/default.py",
    trials,
    {},
    str(tmp_path / "w"),
    program=str(fake),
    parallel=min(2, len(cores)),
  )
  assert (counts["finished"], counts["failed"]) == (2, 1)
  states = {r["trial"]: r["status"] for r in _journal(str(tmp_path / "w"))}
  assert states == {"seed0": "finished", "seed1": "failed", "seed2": "finished"}
  for name in ("seed0", "seed2"):
    with open(tmp_path / "w" / name / "summary.json") as f:
      seen = json.load(f)["cores"]
    assert set(seen) < set(cores) or len(cores) == 1  # Its own share, not the machine.

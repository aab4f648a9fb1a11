"""One run per workdir: a second run refuses at once naming the holder, the first goes on
unharmed, and a lock left by a killed process blocks nothing."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from proxy_jax import sweep
from proxy_jax.core import errors
from proxy_jax.run import records, workdir_lock
from tests.conftest import ROOT

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from proxy_jax.run import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print("holding", flush=True)
  time.sleep(120)
"""


def _holder(tmp_path, workdir):
  """A process that holds the lock of `workdir` until killed; returns once it holds it."""
  script = tmp_path / "holder.py"
  script.write_text(HOLDER.format(root=ROOT))
  process = subprocess.Popen(
    [sys.executable, str(script), workdir], stdout=subprocess.PIPE, text=True
  )
  assert process.stdout.readline().strip() == "holding"
  return process


def test_a_second_holder_is_refused_naming_the_first_until_it_releases(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir) as created:
    assert created and os.path.isdir(workdir)
    with pytest.raises(workdir_lock.WorkdirBusyError) as caught:
      with workdir_lock.hold(workdir):
        pass
    message = str(caught.value)
    assert isinstance(caught.value, errors.UserError) and "\n" not in message
    assert f"process {os.getpid()} on host {socket.gethostname()}" in message
    assert workdir in message and "another --workdir" in message
  with workdir_lock.hold(workdir) as created:  # Released at the end of the block.
    assert not created


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
  workdir = str(tmp_path / "run")
  holder = _holder(tmp_path, workdir)
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f"process {holder.pid} "):
    with workdir_lock.hold(workdir):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  lock_file = os.path.join(workdir, workdir_lock.LOCK_FILE)
  with open(lock_file) as f:
    assert f"pid={holder.pid} " in f.read()  # The stale record is still there...
  with workdir_lock.hold(workdir):  # ...and blocks nothing.
    with open(lock_file) as f:
      assert f.read().startswith(f"pid={os.getpid()} host={socket.gethostname()} since=")


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_refuses_at_once_and_the_first_is_unharmed(tmp_path):
  """Two trainings started on one workdir: the second exits 2 with one line; the first ends."""
  workdir, gate = str(tmp_path / "run"), tmp_path / "gate"
  config = tmp_path / "tiny.py"
  # The first run waits at its first epoch until the second has been refused, so that the
  # second meets a run in progress however fast the machine is.
  config.write_text(
    f"import os, sys, time\nsys.path.insert(0, {ROOT!r})\n"
    "from tests.conftest import make_tiny_config\n"
    "from proxy_jax.run import train\n"
    "original = train.train_epoch\n"
    "def gated(*args):\n"
    f"  while not os.path.exists({str(gate)!r}):\n"
    "    time.sleep(0.05)\n"
    "  return original(*args)\n"
    "train.train_epoch = gated\n"
    "def get_config():\n  return make_tiny_config(num_epochs=3)\n"
  )
  command = [
    sys.executable,
    os.path.join(ROOT, "main.py"),
    f"--config={config}",
    f"--workdir={workdir}",
  ]
  with open(tmp_path / "first.log", "w") as log:
    first = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  lock_file = os.path.join(workdir, workdir_lock.LOCK_FILE)
  deadline = time.time() + 240
  while not (os.path.exists(lock_file) and f"pid={first.pid} " in open(lock_file).read()):
    assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
    time.sleep(0.05)
  second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
  gate.write_text("")
  assert second.returncode == 2
  assert "Traceback" not in second.stderr
  errors_printed = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors_printed) == 1, second.stderr[-2000:]
  assert f"in use by process {first.pid} on host {socket.gethostname()}" in errors_printed[0]
  assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
  summary = records.read_summary(workdir)
  assert summary.num_epochs == 3 and [row.epoch for row in summary.history] == [1, 2, 3]
  with workdir_lock.hold(workdir):  # Released when the run ended.
    pass


def test_a_sweep_skips_a_trial_another_sweep_process_is_running(tmp_path):
  trial_dir = str(tmp_path / "trial")
  with workdir_lock.hold(trial_dir, lock_file=sweep.SWEEP_LOCK_FILE):
    with pytest.raises(sweep.TrialBusy):
      sweep.run_trial([sys.executable, "-c", "pass"], trial_dir, None)
  code, _ = sweep.run_trial([sys.executable, "-c", "pass"], trial_dir, None)
  assert code == 0

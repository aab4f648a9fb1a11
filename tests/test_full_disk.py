"""A full disk: a checkpoint that cannot be written stops the run in one line (exit 2), leaves
no temporary directory and every older checkpoint as it was, and the same command resumes,
once space is freed, to the same result as an uninterrupted run. On a real small tmpfs where
this machine lets the tests mount one, else with a write that raises ENOSPC."""

import errno
import glob
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

from proxy_jax import sweep
from proxy_jax.core import disk
from proxy_jax.run import checkpoints, train
from tests.conftest import ROOT, make_tiny_config
from tests.test_damaged_workdir import TRAINER, _comparable

# A proxy step after epoch 2 grows the bank: checkpoint 2 is the one the full disk refuses.
OVERRIDES = {
  "num_epochs": 3,
  "proxy.enabled": True,
  "proxy.schedule": "2,p,1",
  "keep_checkpoints": 3,
}
FREE_AFTER_FILLING = 64 * 1024  # Bytes left free before checkpoint 2: less than it needs.


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  return train.train_and_evaluate(
    make_tiny_config(**OVERRIDES), str(tmp_path_factory.mktemp("whole") / "run")
  )


@pytest.fixture
def small_disk(tmp_path):
  """A 32 MB tmpfs (unmounted afterwards), or None where mounting is not allowed."""
  mount = tmp_path / "disk"
  mount.mkdir()
  made = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
    capture_output=True,
    check=False,
  )
  if made.returncode:
    yield None
    return
  try:
    yield str(mount)
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: str, leave: int) -> str:
  """A file that leaves `leave` bytes free on `directory`'s filesystem; returns its path."""
  path = os.path.join(directory, "filler")
  with open(path, "wb") as f:
    f.write(b"\0" * max(0, shutil.disk_usage(directory).free - leave))
  return path


def _full_at_epoch_2(monkeypatch, workdir: str, real_disk: bool, mid_write: bool):
  """Checkpoint 2's save meets a full disk: real (the filesystem filled just before it) or
  injected (a partial temporary directory, then ENOSPC). `mid_write`: past the free-space
  check, so that the writer itself fails."""
  save, real_save = checkpoints.RunCheckpoints.save, checkpoints.RunCheckpoints._save
  filled = []

  def full_save(self, epoch, *args):
    if epoch == 2 and real_disk and not filled:
      filled.append(_fill(os.path.dirname(workdir), FREE_AFTER_FILLING))
    return save(self, epoch, *args)

  def injected(self, epoch, items):
    if epoch != 2:
      return real_save(self, epoch, items)
    partial = os.path.join(self.directory, "2.orbax-checkpoint-tmp", "state")
    os.makedirs(partial)
    raise OSError(errno.ENOSPC, "No space left on device", os.path.join(partial, "d"))

  monkeypatch.setattr(checkpoints.RunCheckpoints, "save", full_save)
  if not real_disk:
    monkeypatch.setattr(checkpoints.RunCheckpoints, "_save", injected)
  if mid_write or not real_disk:
    monkeypatch.setattr(disk, "free_bytes", lambda path: 10**12)
  return filled


@pytest.mark.slow
@pytest.mark.parametrize(
  "mid_write", [False, True], ids=["refused before writing", "failed while writing"]
)
def test_a_full_disk_stops_in_one_line_and_the_same_run_resumes_equal(
  uninterrupted, small_disk, tmp_path, monkeypatch, capfd, mid_write
):
  real_disk = small_disk is not None
  workdir = os.path.join(small_disk or str(tmp_path), "run")
  for hook in ("excepthook", "unraisablehook"):  # A failed save quiets them for its process.
    monkeypatch.setattr(sys, hook, getattr(sys, hook))
  monkeypatch.setattr(threading, "excepthook", threading.excepthook)
  filled = _full_at_epoch_2(monkeypatch, workdir, real_disk, mid_write)
  config = make_tiny_config(**OVERRIDES)
  with pytest.raises(checkpoints.CheckpointWriteError) as caught:
    train.train_and_evaluate(config, workdir)
  message = str(caught.value)
  assert "\n" not in message and message.startswith("no space left on ")
  assert "checkpoint of epoch 2 needs about" in message and "MB free)" in message
  assert message.endswith(
    "the last intact checkpoint is epoch 1: free space and run the same command to resume"
  )
  if real_disk:
    assert f"no space left on {small_disk} writing {workdir}/checkpoints" in message
  directory = os.path.join(workdir, "checkpoints")
  assert not glob.glob(os.path.join(directory, "*tmp*"))  # The partial save is gone...
  assert sorted(n for n in os.listdir(directory) if n.isdigit()) == ["1"]  # ...1 is intact.
  printed = capfd.readouterr()
  for noise in ("Traceback", "Task exception", "RESOURCE_EXHAUSTED", "Event loop is closed"):
    assert noise not in printed.err + printed.out
  monkeypatch.undo()  # Space is freed: the same command resumes.
  for path in filled:
    os.remove(path)
  resumed = train.train_and_evaluate(config, workdir)
  assert _comparable(resumed) == _comparable(uninterrupted)
  logging.getLogger("asyncio").disabled = False  # Set for the rest of a failed run's process.


def test_too_little_space_for_the_kept_checkpoints_is_one_warning(tmp_path, monkeypatch):
  ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep=3)
  state = {"w": __import__("numpy").zeros((1000, 1000), "float32")}  # 4 MB
  monkeypatch.setattr(disk, "free_bytes", lambda path: 10_000_000)
  warning = ckpt.space_warning(state, 3, None)
  assert warning == (
    f"{disk.mount_point(str(tmp_path))} has 10.0 MB free, less than the 3 "
    "checkpoints this run keeps need (about 4.0 MB each, 12.0 MB): a save will "
    "stop the run when the disk is full"
  )
  assert ckpt.space_warning(state, 2, None) is None
  ckpt.close()


FULL_TRAINER = TRAINER.replace(
  """  with open(os.path.join(workdir, "summary.json"), "w") as f:""",
  """  if os.path.exists(os.path.join(workdir, "..", "disk_full")):
    raise OSError(28, "No space left on device", os.path.join(workdir, "checkpoints", "x"))
  with open(os.path.join(workdir, "summary.json"), "w") as f:""",
)


@pytest.mark.slow
def test_a_sweep_records_a_full_disk_as_failed_and_retries_it(tmp_path):
  program = tmp_path / "trainer.py"
  program.write_text(FULL_TRAINER.format(root=ROOT))
  workdir, config = str(tmp_path / "grid"), os.path.join(ROOT, "configs", "default.py")
  os.makedirs(workdir)
  trials = [{"name": name, "overrides": {}} for name in ("a", "b")]
  run = lambda **kw: sweep.run_trials(config, trials, {}, workdir, program=str(program), **kw)
  (tmp_path / "grid" / "disk_full").write_text("")
  counts = run()
  assert counts["failed"] == 2
  record = sweep.trial_states(workdir)["a"]
  assert record["status"] == sweep.FAILED and "\n" not in record["reason"]
  assert record["reason"].startswith(
    f"error: no space left on {disk.mount_point(workdir)} "
    f"writing {workdir}/a/checkpoints/x: free space and run"
  )
  os.remove(tmp_path / "grid" / "disk_full")
  assert run()["failed_skipped"] == 2  # Failed trials wait for --retry-failed.
  assert run(retry_failed=True)["finished"] == 2
  assert len(sweep.read_journal(workdir)) == 8  # Nothing of the journal was lost.


@pytest.mark.slow
def test_main_prints_one_line_and_exits_2_on_a_full_disk(small_disk, tmp_path):
  """The command line: one `error:` line, status 2, nothing else on stderr after training."""
  if small_disk is None:
    pytest.skip("this machine does not let the tests mount a tmpfs")
  workdir = os.path.join(small_disk, "run")
  script = tmp_path / "run.py"
  script.write_text(
    textwrap.dedent(f"""
      import os, sys
      sys.path.insert(0, {ROOT!r})
      from proxy_jax.core import disk
      from proxy_jax.run import checkpoints
      from tests.test_full_disk import _fill, FREE_AFTER_FILLING
      save = checkpoints.RunCheckpoints.save
      def full_save(self, epoch, *args):
        if epoch == 2:
          _fill({small_disk!r}, FREE_AFTER_FILLING)
          disk.free_bytes = lambda path: 10**12  # Past the check: the writer itself fails.
        return save(self, epoch, *args)
      checkpoints.RunCheckpoints.save = full_save
      sys.argv = ["main.py", "--config={ROOT}/configs/default.py", "--workdir={workdir}",
                  "--config.num_epochs=3", "--config.proxy.schedule=2,p,1",
                  "--config.data.max_examples=300", "--config.image_size=16"]
      import runpy
      runpy.run_path({os.path.join(ROOT, "main.py")!r}, run_name="__main__")
      """)
  )
  result = subprocess.run(
    [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: no space left on {small_disk}")
  for noise in ("Traceback", "Task exception", "RESOURCE_EXHAUSTED"):
    assert noise not in result.stderr
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))

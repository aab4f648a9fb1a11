"""What a run prints: plain console lines, full detail in the log file, an in-epoch progress line,
and TensorBoard summaries written without TensorFlow."""

import io
import logging as std_logging
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from proxy_jax import aggregate
from proxy_jax.core import console
from proxy_jax.run import reporting, summaries
from tests.conftest import ROOT

# absl's prefix: level letter, MMDD, time, thread id, file:line].
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")
LIBRARY_CHATTER = (
  "Setting work unit notes",
  "oneDNN",
  "absl::InitializeLog",
  "cpu_feature_guard",
  "libtpu",
  "Unable to initialize backend",
  "orbax",
)


def _main(tmp_path, workdir, *flags):
  config_path = tmp_path / "tiny.py"
  config_path.write_text(
    "import sys\n"
    f"sys.path.insert(0, {ROOT!r})\n"
    "from tests.conftest import make_tiny_config\n\n"
    "def get_config():\n"
    # No in-epoch line even on a slow machine: the lines below are exactly these.
    "  return make_tiny_config(**{'proxy.enabled': True, 'log_every_seconds': 1e4})\n"
  )
  return subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "main.py"),
      f"--config={config_path}",
      f"--workdir={workdir}",
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_main_prints_plain_lines_and_keeps_full_detail_in_the_log_file(tmp_path):
  workdir = tmp_path / "run"
  result = _main(tmp_path, workdir)
  assert result.returncode == 0, result.stderr
  lines = (result.stdout + result.stderr).splitlines()
  for chatter in LIBRARY_CHATTER:
    assert not any(chatter in line for line in lines), (chatter, lines)
  assert not any(ABSL_PREFIX.match(line) for line in lines), lines
  assert re.fullmatch(r"1 cpu device\(s\); CPU cores [0-9,-]+", lines[0]), lines
  assert [line.split(":")[0] for line in lines[1:]] == [
    "epoch 1/2",
    "proxy step 0 after epoch 1",
    "epoch 2/2",
    "done",
  ]
  logged = (workdir / console.LOG_FILE).read_text().splitlines()
  assert len(logged) >= len(lines) and all(ABSL_PREFIX.match(line) for line in logged)
  assert [ABSL_PREFIX.sub("", line) for line in logged if "reporting.py" in line] == lines[1:4]
  assert not any("orbax" in line for line in logged)
  # --verbose: absl's prefix on the console (a finished run only says so, then stops).
  verbose = _main(tmp_path, workdir, "--verbose")
  assert verbose.returncode == 0, verbose.stderr
  said = [line for line in verbose.stderr.splitlines() if "already complete" in line]
  assert len(said) == 1 and ABSL_PREFIX.match(said[0])


def _record(pathname, level=std_logging.INFO, message="hello %d", args=(3,)):
  return std_logging.LogRecord("absl", level, pathname, 1, message, args, None)


def test_console_shows_project_info_and_everyones_warnings_without_prefix():
  ours = os.path.join(os.path.dirname(console.__file__), "train.py")
  theirs = "/site-packages/clu/platform/local.py"
  keep = console.ProjectLinesOnly().filter
  assert keep(_record(ours)) and not keep(_record(theirs))
  assert keep(_record(theirs, std_logging.WARNING))
  plain = console.PlainFormatter()
  assert plain.format(_record(ours)) == "hello 3"
  assert plain.format(_record(theirs, std_logging.WARNING)) == "warning: hello 3"
  assert plain.format(_record(theirs, std_logging.ERROR)) == "error: hello 3"
  assert not console.not_orbax_info(_record("/site-packages/orbax/checkpoint/x.py"))
  assert console.not_orbax_info(
    _record("/site-packages/orbax/checkpoint/x.py", std_logging.WARNING)
  )


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_epoch_progress_line_every_interval_with_rate_and_time_left():
  clock = FakeClock()
  # 4 epochs of 10 steps of 32 images; this session starts at epoch 2 (step 20).
  eta = reporting.Eta(total=40, done=20, clock=clock)
  progress = reporting.EpochProgress(
    eta, steps_per_epoch=10, batch_size=32, num_epochs=4, every_seconds=20.0, clock=clock
  )
  progress.start_epoch()
  lines = []
  for step in range(21, 31):  # Epoch 3, one step every 7 s.
    clock.now += 7.0
    lines.append(progress(step))
  # Due at 21 s (step 3) and 42 s (step 6), 63 s (step 9), each 21 s after the last.
  assert [i + 1 for i, line in enumerate(lines) if line] == [3, 6, 9]
  # Step 3: 96 images in 21 s; 7 steps left at 7 s each; the run: 17 steps left at 7 s.
  assert lines[2] == ("epoch 3/4 step 3/10: 5 img/s | epoch ends in 00:00:49 | ETA 00:01:59")
  assert lines[5].startswith("epoch 3/4 step 6/10: 5 img/s | epoch ends in 00:00:28")
  progress.start_epoch()
  clock.now += 19.0
  assert progress(31) is None  # A short epoch prints nothing.


def test_event_writer_round_trips_scalars_images_and_hparams(tmp_path):
  writer = summaries.EventWriter(str(tmp_path))
  writer.write_hparams({"seed": 0, "model.name": "tiny_cnn", "lr": 0.5})
  writer.write_scalars(10, {"val/accuracy": 0.25, "train/loss": 2.0})
  writer.write_scalars(20, {"val/accuracy": 0.75})
  picture = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
  writer.write_images(20, {"train/examples": picture})
  writer.close()
  again = summaries.EventWriter(str(tmp_path))  # Same process and second: a second file.
  again.close()
  assert len([n for n in os.listdir(tmp_path) if ".tfevents." in n]) == 2
  frame = aggregate.read_scalars(str(tmp_path))
  assert list(zip(frame.tag, frame.step, frame.value)) == [
    ("train/loss", 10, 2.0),
    ("val/accuracy", 10, 0.25),
    ("val/accuracy", 20, 0.75),
  ]
  # Imported here: the accumulator imports TensorFlow (as aggregate.read_scalars does).
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  accumulator = event_accumulator.EventAccumulator(
    str(tmp_path), size_guidance={event_accumulator.TENSORS: 0}
  )
  accumulator.Reload()
  assert "_hparams_/session_start_info" in accumulator.Tags()["tensors"]
  (event,) = accumulator.Tensors("train/examples")
  width, height, *pngs = event.tensor_proto.string_val
  assert (int(width), int(height), len(pngs)) == (4, 3, 2)
  for png, expected in zip(pngs, picture):
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)

"""The explain CLI on a tiny untrained checkpoint: outputs, predictions and error paths."""

import csv
import os

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import make_tiny_config
from proxy_jax import cams
from proxy_jax import checkpoints
from proxy_jax import config_lib
from proxy_jax import data
from proxy_jax import explain
from proxy_jax import train
from proxy_jax.io_utils import atomic_write_json

CLASS_NAMES = [f"class_{i}" for i in range(4)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A run directory as training leaves it (config, class names, one checkpoint), no training."""
  root = str(tmp_path_factory.mktemp("explain_run"))
  config = make_tiny_config()
  model = train.create_model(config, len(CLASS_NAMES))
  state = train.create_train_state(config, model, jax.random.key(0), 1)
  config_lib.write_or_check_resolved(config, root)
  atomic_write_json(os.path.join(root, "classes.json"), CLASS_NAMES)
  ckpt = checkpoints.RunCheckpoints(root, 1)
  ckpt.save(1, state, {"epoch": 1, "bank_size": 0}, None)
  ckpt.close()
  return root


def _write_images(folder, count, size=20, seed=0):
  rng = np.random.default_rng(seed)
  paths = []
  for index in range(count):
    path = folder / f"img_{index}.png"
    Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(path)
    paths.append(str(path))
  return paths


def test_writes_one_overlay_per_image_and_a_predictions_csv(workdir, tmp_path, capsys):
  images_dir = tmp_path / "images"
  (images_dir / "nested").mkdir(parents=True)
  paths = _write_images(images_dir, 2) + _write_images(images_dir / "nested", 1, seed=1)
  (images_dir / "notes.txt").write_text("not an image")
  out = tmp_path / "out"
  code = explain.main(["--workdir", workdir, "--images", str(images_dir), "--method", "layercam",
                       "--out", str(out), "--batch-size", "2"])
  assert code == 0
  assert "notes.txt" in capsys.readouterr().err  # Reported as skipped.
  with open(out / "predictions.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["file"] for r in rows) == sorted(paths)

  model, variables, config, _ = train.restore_for_inference(workdir)
  decoded = np.stack([data.load_image_file(r["file"], config.image_size) for r in rows])
  inputs = data.normalize(decoded / 255.0)
  probabilities = np.asarray(jax.nn.softmax(model.apply(variables, inputs)))
  np.testing.assert_array_equal([int(r["predicted_index"]) for r in rows],
                                probabilities.argmax(-1))
  assert [r["predicted_class"] for r in rows] == [CLASS_NAMES[i] for i in probabilities.argmax(-1)]
  np.testing.assert_allclose([float(r["probability"]) for r in rows], probabilities.max(-1),
                             atol=1e-5)
  expected = cams.overlay(decoded, cams.compute("layercam", model.apply, variables, inputs))
  for row, overlay in zip(rows, expected):
    written = np.asarray(Image.open(out / row["overlay"]))
    assert written.shape == (config.image_size, config.image_size, 3)
    np.testing.assert_allclose(written.astype(int), overlay.astype(int), atol=1)
  assert "nested__img_0_layercam.png" in {r["overlay"] for r in rows}


def test_workdir_without_checkpoint_is_a_clear_error(tmp_path, capsys):
  _write_images(tmp_path, 1)
  code = explain.main(["--workdir", str(tmp_path / "empty"), "--images", str(tmp_path),
                       "--out", str(tmp_path / "out")])
  assert code == 2
  err = capsys.readouterr().err
  assert "--workdir" in err and "no trained run" in err
  assert not (tmp_path / "out").exists()


def test_images_path_without_readable_images_is_a_clear_error(workdir, tmp_path, capsys):
  folder = tmp_path / "junk"
  folder.mkdir()
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  (folder / "notes.txt").write_text("not an image")
  code = explain.main(["--workdir", workdir, "--images", str(folder), "--out", str(tmp_path)])
  assert code == 2
  assert "no readable images among the 2 file(s)" in capsys.readouterr().err
  code = explain.main(["--workdir", workdir, "--images", str(tmp_path / "missing"),
                       "--out", str(tmp_path)])
  assert code == 2
  assert "neither a file nor a folder" in capsys.readouterr().err

"""Inference and explanation comparison on a tiny trained workdir."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
from PIL import Image
import pytest

from configs import default
from proxy_jax import compare
from proxy_jax import data
from proxy_jax import infer
from proxy_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A one-epoch tiny CNN on 200 digits at 16 px, plus its validation images as PNG files."""
  root = tmp_path_factory.mktemp("infer")
  workdir = str(root / "run")
  config = default.get_config()
  config.image_size = 16
  config.num_epochs = 1
  config.data.max_examples = 200
  config.proxy.enabled = False
  config.augment.rotation_degrees = 0.0
  config.batch_size = 32
  config.eval_batch_size = 64
  train.train_and_evaluate(config, workdir)
  val = data.load_dataset(config, workdir).val
  image_dir = root / "images" / "nested"
  image_dir.mkdir(parents=True)
  paths = []
  for index, image in enumerate(val.images):
    path = str(image_dir / f"val_{index:03d}.png")
    Image.fromarray(image).save(path)
    paths.append(path)
  (root / "images" / "notes.txt").write_text("not an image")
  (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  return workdir, val, str(root / "images"), paths


def test_cli_predictions_match_eval_step(trained, tmp_path):
  workdir, val, image_dir, paths = trained
  out = str(tmp_path / "out")
  result = subprocess.run(
      [sys.executable, "-m", "proxy_jax.infer", f"--workdir={workdir}", f"--images={image_dir}",
       "--top-k=3", "--cam=gradcampp", f"--out={out}"],
      capture_output=True, text=True, timeout=180, cwd=REPO,
      env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr[-3000:]
  table = pd.read_csv(os.path.join(out, "predictions.csv"),
                      dtype={f"class_{rank}": str for rank in (1, 2, 3)})
  # Sorted recursive listing; the broken PNG is reported, the text file is not an image at all.
  assert table.file.tolist() == paths
  assert pd.read_csv(os.path.join(out, "skipped.csv")).file.tolist() == [
      os.path.join(image_dir, "broken.png")]
  assert (np.diff(table[["prob_1", "prob_2", "prob_3"]].to_numpy(), axis=1) <= 0).all()
  assert set(table.class_1) <= {str(d) for d in range(10)}  # Digits' label names.

  model, variables, config, _ = train.restore_for_inference(workdir)
  state = train.create_train_state(config, model, jax.random.key(0), 1).replace(
      params=variables["params"], batch_stats=variables["batch_stats"])
  reference = np.asarray(train.make_predict_step()(state, val.images))
  np.testing.assert_array_equal(table.index_1.to_numpy(), reference.argmax(-1))
  probabilities = np.asarray(jax.nn.softmax(reference))
  np.testing.assert_allclose(table.prob_1, probabilities.max(-1), rtol=1e-5, atol=1e-6)
  # The summed metrics of eval_step agree with the CSV's top-1 on the same images.
  eval_fn = train.make_eval_step()
  correct = sum(float(eval_fn(state, batch)["correct"])
                for batch in data.batches(val, config.eval_batch_size))
  labels = [str(label) for label in val.labels]
  assert correct == sum(c == l for c, l in zip(table.class_1, labels))
  overlays = sorted(os.listdir(os.path.join(out, "cams")))
  assert len(overlays) == len(paths)
  assert Image.open(os.path.join(out, "cams", overlays[0])).size == (2 * 16 * 4, 16 * 4)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError):
    infer.run_inference(str(tmp_path), str(tmp_path))


class _OnePixelModel:
  """Logits (x[0, 0] mean, 0): only pixel (0, 0) matters, so its CAM ranking is known."""

  @staticmethod
  def apply(variables, x):
    del variables
    return jax.numpy.stack([20.0 * x[:, 0, 0].mean(-1), jax.numpy.zeros(x.shape[0])], -1)


def test_deletion_and_insertion_reward_the_right_map():
  images = np.full((2, 8, 8, 3), 255, np.uint8)
  good = np.zeros((2, 8, 8), np.float32)
  good[:, 0, 0] = 1.0
  bad = 1.0 - good
  targets = np.zeros(2, np.int32)
  model = _OnePixelModel()
  right = compare.explanation_scores(model, {}, images, good, targets, steps=8)
  wrong = compare.explanation_scores(model, {}, images, bad, targets, steps=8)
  assert right["deletion_auc"].mean() < wrong["deletion_auc"].mean()
  assert right["insertion_auc"].mean() > wrong["insertion_auc"].mean()
  # Step 0 of deletion is the untouched image; the last step of insertion is the image again.
  assert right["deletion_curve"][0] == pytest.approx(right["insertion_curve"][-1])
  assert compare.auc(np.ones((1, 5))) == pytest.approx(1.0)


def test_compare_two_workdirs(trained, tmp_path):
  workdir, val, _, _ = trained
  twin = str(tmp_path / "twin")
  shutil.copytree(workdir, twin)
  out = str(tmp_path / "compare")
  table = compare.compare([workdir, twin], "val", cam="gradcam", num_images=12, steps=4,
                          names=["base", "twin"], out=out, grid_images=4)
  assert table.model.tolist() == ["base", "twin"] and (table.images == min(12, len(val))).all()
  metrics = ["accuracy", "deletion_auc", "insertion_auc", "average_drop_pct",
             "increase_in_confidence_pct"]
  # The same weights on the same images give the same scores.
  np.testing.assert_allclose(table.loc[0, metrics].astype(float),
                             table.loc[1, metrics].astype(float), rtol=1e-5)
  assert ((table[["deletion_auc", "insertion_auc"]] >= 0) &
          (table[["deletion_auc", "insertion_auc"]] <= 1)).all().all()
  assert os.path.getsize(os.path.join(out, "compare_val.png")) > 1000
  assert len(pd.read_csv(os.path.join(out, "compare_val.csv"))) == 2

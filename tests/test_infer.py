"""Inference (predictions, CAM overlays, the CLI) and explanation faithfulness on a tiny run."""

import json
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
from proxy_jax import cams
from proxy_jax import data
from proxy_jax import faithfulness
from proxy_jax import infer
from proxy_jax import models
from proxy_jax.core import parallel
from proxy_jax.images import preprocess
from proxy_jax.run import records
from proxy_jax.run import restore
from proxy_jax.run import steps, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "proxy_jax.infer", *args],
    capture_output=True,
    text=True,
    timeout=180,
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO},
  )


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


@pytest.mark.slow
def test_cli_predictions_match_eval_step(trained, tmp_path):
  workdir, val, image_dir, paths = trained
  out = str(tmp_path / "out")
  result = _run_cli(
    f"--workdir={workdir}", f"--images={image_dir}", "--top-k=3", "--cam=gradcampp", f"--out={out}"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  table = pd.read_csv(
    os.path.join(out, "predictions.csv"), dtype={f"class_{rank}": str for rank in (1, 2, 3)}
  )
  # Sorted recursive listing; the broken PNG is reported, the text file is not an image at all.
  assert table.file.tolist() == paths
  assert pd.read_csv(os.path.join(out, "skipped.csv")).file.tolist() == [
    os.path.join(image_dir, "broken.png")
  ]
  assert "broken.png" in result.stderr
  assert (np.diff(table[["prob_1", "prob_2", "prob_3"]].to_numpy(), axis=1) <= 0).all()
  assert set(table.class_1) <= {str(d) for d in range(10)}  # Digits' label names.

  model, variables, config, _ = restore.restore_for_inference(workdir)
  state = train.create_train_state(config, model, jax.random.key(0), 1).replace(
    params=variables["params"], batch_stats=variables["batch_stats"]
  )
  reference = np.asarray(
    steps.make_predict_step()(state.apply_fn, models.variables_of(state), val.images)
  )
  np.testing.assert_array_equal(table.index_1.to_numpy(), reference.argmax(-1))
  probabilities = np.asarray(jax.nn.softmax(reference))
  np.testing.assert_allclose(table.prob_1, probabilities.max(-1), rtol=1e-5, atol=1e-6)
  # The accuracy eval_step's metrics give agrees with the CSV's top-1 on the same images.
  _, batch_sharding = parallel.shardings(parallel.make_mesh())
  accuracy = train.evaluate(
    state, val, config.eval_batch_size, steps.make_eval_step(), batch_sharding
  )["accuracy"]
  labels = [str(label) for label in val.labels]
  correct = sum(c == label for c, label in zip(table.class_1, labels))
  assert abs(accuracy * len(labels) - correct) < 1e-6
  overlays = sorted(os.listdir(os.path.join(out, "cams")))
  assert len(overlays) == len(paths) and table.overlay[0] == "cams/nested__val_000_gradcampp.png"
  assert Image.open(os.path.join(out, table.overlay[0])).size == (2 * 16 * 4, 16 * 4)


@pytest.mark.slow
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
  result = _run_cli(
    f"--workdir={tmp_path / 'empty'}", f"--images={tmp_path}", f"--out={tmp_path / 'out'}"
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: --workdir")
  assert "no trained run" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def _write_images(folder, count, size=20, seed=0):
  rng = np.random.default_rng(seed)
  paths = []
  for index in range(count):
    path = folder / f"img_{index}.png"
    Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(path)
    paths.append(str(path))
  return paths


@pytest.mark.slow
def test_overlays_are_the_cams_of_each_image(trained, tmp_path):
  workdir = trained[0]
  images_dir = tmp_path / "images"
  (images_dir / "nested").mkdir(parents=True)
  paths = _write_images(images_dir, 2) + _write_images(images_dir / "nested", 1, seed=1)
  out = tmp_path / "out"
  # Three images in chunks of two: the ragged last chunk is padded, then dropped.
  table = infer.run_inference(
    workdir, str(images_dir), k=2, cam="layercam", out=str(out), batch_size=2, scale=2
  )
  assert sorted(table.file) == sorted(paths)
  assert "cams/nested__img_0_layercam.png" in set(table.overlay)

  model, variables, config, _ = restore.restore_for_inference(workdir)
  decoded = np.stack([data.load_image_file(path, config.image_size) for path in table.file])
  inputs = preprocess.eval_inputs(decoded)
  probabilities = np.asarray(jax.nn.softmax(model.apply(variables, inputs)))
  np.testing.assert_array_equal(table.index_1, probabilities.argmax(-1))
  np.testing.assert_allclose(table.prob_1, probabilities.max(-1), atol=1e-5)
  expected = cams.overlay(decoded, cams.compute("layercam", model.apply, variables, inputs))
  size = config.image_size
  for name, image, overlay in zip(table.overlay, decoded, expected):
    written = np.asarray(Image.open(out / name))
    assert written.shape == (2 * size, 2 * 2 * size, 3)
    np.testing.assert_array_equal(written[::2, : 2 * size : 2], image)
    np.testing.assert_allclose(written[::2, 2 * size :: 2].astype(int), overlay.astype(int), atol=1)

  # --target explains that class for every image, whatever was predicted.
  targeted = infer.run_inference(
    workdir, str(images_dir), cam="layercam", out=str(out / "t"), batch_size=2, scale=1, target=3
  )
  expected = cams.overlay(
    decoded, cams.compute("layercam", model.apply, variables, inputs, targets=3)
  )
  for name, overlay in zip(targeted.overlay, expected):
    written = np.asarray(Image.open(out / "t" / name))
    np.testing.assert_allclose(written[:, size:].astype(int), overlay.astype(int), atol=1)


def test_bad_inputs_are_named(trained, tmp_path):
  workdir = trained[0]
  with pytest.raises(infer.InferenceError, match="--workdir .*no trained run"):
    infer.run_inference(str(tmp_path), str(tmp_path))
  folder = tmp_path / "junk"
  folder.mkdir()
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  (folder / "notes.txt").write_text("not an image")
  with pytest.raises(infer.InferenceError, match="no readable images among the 1 file"):
    infer.run_inference(workdir, str(folder), out=str(tmp_path / "out"))
  with pytest.raises(infer.InferenceError, match="no such file, folder or glob match"):
    infer.run_inference(workdir, str(tmp_path / "missing"), out=str(tmp_path / "out"))
  _write_images(folder, 1)
  with pytest.raises(infer.InferenceError, match="--target 10 is not a class index"):
    infer.run_inference(workdir, str(folder), cam="gradcam", target=10, out=str(tmp_path / "o"))
  with pytest.raises(infer.InferenceError, match="not a CAM method"):
    infer.run_inference(workdir, str(folder), cam="gradcom", out=str(tmp_path / "o"))
  with pytest.raises(infer.InferenceError, match="unknown colormap 'jett'"):
    infer.run_inference(workdir, str(folder), cam="gradcam", colormap="jett", out=str(folder))
  with pytest.raises(infer.InferenceError, match="--alpha 2"):
    infer.run_inference(workdir, str(folder), cam="gradcam", alpha=2, out=str(folder))


def test_restore_matches_training_state(trained):
  workdir, val, _, _ = trained
  model, variables, config, class_names = restore.restore_for_inference(workdir)
  assert class_names == [str(d) for d in range(10)] and config.image_size == 16
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  logits = model.apply(variables, preprocess.eval_inputs(val.images))
  accuracy = float(np.mean(np.argmax(logits, -1) == val.labels))
  assert accuracy == pytest.approx(summary["final"]["val_accuracy"])
  # The run records the compute slice it trained on: on CPU, the cores it may run on.
  assert (
    summary["compute"]
    == parallel.compute_slice()
    == {
      "platform": "cpu",
      "device_kind": "cpu",
      "devices": jax.device_count(),
      "processes": 1,
      "cpu_threads": len(os.sched_getaffinity(0)),
    }
  )
  assert records.read_summary(workdir).compute == summary["compute"]


def test_restore_without_a_run_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained run"):
    restore.restore_for_inference(str(tmp_path))


def test_ragged_last_chunk_neither_recompiles_nor_leaks(trained):
  """Five images in chunks of two: the last chunk reuses the compiled shape, and padded rows
  never reach the results (chunked equals all at once)."""
  model, variables, _, _ = restore.restore_for_inference(trained[0])
  images = trained[1].images[:5]
  targets = np.arange(5) % 3
  infer.predict_logits(model, variables, images[:4], 2)
  infer.cam_maps("gradcam", model, variables, images[:4], targets[:4], chunk_size=2)
  compiled = (infer._predict._cache_size(), cams._compute_jitted._cache_size())
  logits = infer.predict_logits(model, variables, images, 2)
  maps = infer.cam_maps("gradcam", model, variables, images, targets, chunk_size=2)
  assert (infer._predict._cache_size(), cams._compute_jitted._cache_size()) == compiled
  assert logits.shape[0] == 5 and maps.shape[0] == 5
  np.testing.assert_allclose(
    logits, infer.predict_logits(model, variables, images, 5), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    maps, infer.cam_maps("gradcam", model, variables, images, targets, chunk_size=5), atol=1e-5
  )


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
  right = faithfulness.explanation_scores(model, {}, images, good, targets, steps=8)
  wrong = faithfulness.explanation_scores(model, {}, images, bad, targets, steps=8)
  assert right["deletion_auc"].mean() < wrong["deletion_auc"].mean()
  assert right["insertion_auc"].mean() > wrong["insertion_auc"].mean()
  # Step 0 of deletion is the untouched image; the last step of insertion is the image again.
  assert right["deletion_curve"][0] == pytest.approx(right["insertion_curve"][-1])
  assert faithfulness.auc(np.ones((1, 5))) == pytest.approx(1.0)


def test_explanation_scores_ragged_chunk_neither_recompiles_nor_leaks():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  maps = rng.uniform(size=(5, 8, 8)).astype(np.float32)
  targets = np.array([0, 1, 0, 1, 0], np.int32)
  model = _OnePixelModel()
  faithfulness.explanation_scores(model, {}, images[:4], maps[:4], targets[:4], 4, chunk=2)
  jitted = (faithfulness._curves, faithfulness._confidence)
  compiled = [fn._cache_size() for fn in jitted]
  chunked = faithfulness.explanation_scores(model, {}, images, maps, targets, 4, chunk=2)
  assert [fn._cache_size() for fn in jitted] == compiled
  whole = faithfulness.explanation_scores(model, {}, images, maps, targets, 4, chunk=5)
  for key in ("deletion_auc", "insertion_auc", "drop", "increase"):
    assert chunked[key].shape == (5,)
    np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(chunked["deletion_curve"], whole["deletion_curve"], rtol=1e-6)


@pytest.mark.slow
def test_compare_two_workdirs(trained, tmp_path):
  workdir, val, _, _ = trained
  twin = str(tmp_path / "twin")
  shutil.copytree(workdir, twin)
  out = str(tmp_path / "faithfulness")
  table = faithfulness.compare_workdirs(
    [workdir, twin],
    "val",
    cam="gradcam",
    num_images=12,
    steps=4,
    names=["base", "twin"],
    out=out,
    grid_images=4,
  )
  assert table.model.tolist() == ["base", "twin"] and (table.images == min(12, len(val))).all()
  metrics = [
    "accuracy",
    "deletion_auc",
    "insertion_auc",
    "average_drop_pct",
    "increase_in_confidence_pct",
  ]
  # The same weights on the same images give the same scores.
  np.testing.assert_allclose(
    table.loc[0, metrics].astype(float), table.loc[1, metrics].astype(float), rtol=1e-5
  )
  assert (
    (
      (table[["deletion_auc", "insertion_auc"]] >= 0)
      & (table[["deletion_auc", "insertion_auc"]] <= 1)
    )
    .all()
    .all()
  )
  assert os.path.getsize(os.path.join(out, "faithfulness_val.png")) > 1000
  assert len(pd.read_csv(os.path.join(out, "faithfulness_val.csv"))) == 2

"""The training crop in the stream's workers (data/crops.py, `data.stream_crop = "workers"`).

The workers cut the boxes the train step would draw (the same keys), from each file's own
pixels and from banked proxies alike; where an original is already the stored square, their
crops equal the step's crop to within 8-bit rounding. A box maps onto the upright original frame
(centre square, EXIF orientation), JPEGs decode at a reduced scale where the box allows, and a
streamed run that crops in its workers, killed within an epoch, resumes equal to an
uninterrupted one.
"""

import dataclasses
import io
import os
import signal
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from proxy_jax import augment, data
from proxy_jax.augment import crop
from proxy_jax.data import crops, packed
from proxy_jax.images import preprocess
from proxy_jax.run import proxy_bank, steps, train
from tests.conftest import ROOT, make_tiny_config, settings_of
from tests.test_proxy import comparable

SIDE, SIZE = 18, 16  # The tiny folder config's stored side (auto: 16 / 0.875) and image size.


def _smooth(rng, width: int, height: int) -> np.ndarray:
  """A photo-like uint8 image: low-frequency colour with a gradient (a crop's place matters)."""
  coarse = rng.integers(0, 255, (4, 4, 3), np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float64)
  image += np.linspace(0, 60, width)[None, :, None]
  return np.clip(image, 0, 255).astype(np.uint8)


def _squares(tmp_path, per_class: int = 8):
  """PNG originals that are exactly the stored square: nothing is lost by storing them."""
  root = tmp_path / "squares"
  for label, name in enumerate(("cat", "dog")):
    os.makedirs(root / name)
    for i in range(per_class):
      pixels = _smooth(np.random.default_rng(100 * label + i), SIDE, SIDE)
      Image.fromarray(pixels).save(root / name / f"{i}.png")
  return root


def _overrides(tmp_path, root, pipeline: str, **more) -> dict:
  return {
    "data.source": "folder",
    "data.path": str(root),
    "data.val_fraction": 0.25,
    "data.test_fraction": 0.25,
    "data.max_examples": 0,
    "data.pipeline": pipeline,
    "data.cache_dir": str(tmp_path / "cache"),
    "data.stream_workers": 0,
    "augment.crop": "random_resized",
    "augment.rotation_degrees": 0.0,
    "batch_size": 4,
    **more,
  }


def _settings(tmp_path, root, pipeline: str, **more):
  return settings_of(make_tiny_config(**_overrides(tmp_path, root, pipeline, **more)))


def _stream(settings):
  return dataclasses.replace(settings, data=dataclasses.replace(settings.data, pipeline="stream"))


def _in_jit_crop(images: np.ndarray, boxes, size: int = SIZE) -> np.ndarray:
  """The train step's crop (`crop.resized_crop`) of uint8 images, in [0, 1]."""
  unit = preprocess.to_unit_range(images)
  return np.asarray(jax.vmap(lambda im, box: crop.resized_crop(im, box, size))(unit, boxes))


def test_the_workers_boxes_are_the_boxes_the_train_step_draws(tmp_path):
  settings = _settings(tmp_path, _squares(tmp_path), "cache")
  assert not data.crops_in_workers(settings) and data.train_batch_side(settings) == SIDE
  images = data.load_dataset(settings, str(tmp_path / "run")).train.images[:4]
  step_key, step = jax.random.key(7), 5
  augment_key, _ = steps.step_keys(step_key, step)
  augment_fn = augment.make_augment_fn(settings.augment, 2, SIZE)
  inputs, _ = augment_fn(images, np.zeros(4, np.int32), augment_key)
  (boxes,) = train.crops_for_workers(_stream(settings), step_key, step, 1).boxes
  assert boxes.shape == (4, 4) and len({tuple(b) for b in boxes}) == 4
  assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= SIDE).all()
  expected = preprocess.normalize(_in_jit_crop(images, boxes))
  np.testing.assert_allclose(np.asarray(inputs), np.asarray(expected), atol=1e-6)
  # Cropped already, the step's augmentation leaves the pixels as they came.
  cropped_fn = augment.make_augment_fn(settings.augment, 2, SIZE, cropped=True)
  passed, _ = cropped_fn(images[:, :SIZE, :SIZE], np.zeros(4, np.int32), augment_key)
  expected = preprocess.normalize(preprocess.to_unit_range(images[:, :SIZE, :SIZE]))
  np.testing.assert_allclose(passed, expected, atol=1e-6)


def test_the_workers_crops_equal_the_steps_crops_of_the_stored_squares(tmp_path):
  root = _squares(tmp_path)
  streamed_settings = _settings(tmp_path, root, "stream")
  assert data.crops_in_workers(streamed_settings) and data.train_batch_side(streamed_settings) == 16
  streamed = data.load_dataset(streamed_settings, str(tmp_path / "a")).train
  cached = data.load_dataset(_settings(tmp_path, root, "cache"), str(tmp_path / "b")).train
  order = data.epoch_order(len(cached), 3, 0)
  count = data.num_batches(len(cached), 4)
  boxes = train.crops_for_workers(streamed_settings, jax.random.key(1), 0, count).boxes
  bank = proxy_bank.ProxyBank(str(tmp_path / "bank"))
  proxies = np.stack([_smooth(np.random.default_rng(50 + i), SIDE, SIDE) for i in range(3)])
  bank.store(np.array([0, 3, 5]), proxies, label="step-0000")
  options = {"swap": bank.swap, "is_proxy": bank.holds}
  worker_crops = packed.WorkerCrops(boxes, SIZE)
  alone = list(data.batches(streamed, 4, order, worker_crops=worker_crops, **options))
  pooled = list(data.batches(streamed, 4, order, worker_crops=worker_crops, workers=2, **options))
  plain = list(data.batches(cached, 4, order, **options))
  assert len(alone) == len(pooled) == len(plain) == count
  for here, there, reference, batch_boxes in zip(alone, pooled, plain, boxes):
    for key in here:  # 0 and 2 workers: the same arrays.
      np.testing.assert_array_equal(here[key], there[key])
    for key in ("label", "id", "mask", "is_proxy"):  # The cache's batch, cropped.
      np.testing.assert_array_equal(here[key], reference[key])
    assert here["image"].shape == (4, SIZE, SIZE, 3)
    expected = _in_jit_crop(reference["image"], batch_boxes)
    np.testing.assert_allclose(here["image"] / 255.0, expected, atol=1.01 / 255)
  assert sum(int(b["is_proxy"].sum()) for b in alone) == 3
  with pytest.raises(ValueError, match="only a streamed split"):
    next(data.batches(cached, 4, order, worker_crops=worker_crops))


def _jpeg(path, width: int, height: int, orientation: int = 1) -> np.ndarray:
  pixels = _smooth(np.random.default_rng(width), width, height)
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(pixels).save(path, quality=95, exif=exif)
  with open(path, "rb") as f:
    return f.read()


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_box_is_cut_from_the_upright_originals_centre_square(tmp_path, orientation):
  encoded = _jpeg(tmp_path / "photo.jpg", 240, 160, orientation)
  with Image.open(tmp_path / "photo.jpg") as image:
    assert crops.upright_size(image) == ((160, 240) if orientation == 6 else (240, 160))
  stored = packed.decode_record(encoded, 36)  # The cache's square: the reference frame.
  whole = crops.decode_crop(encoded, 36, (0, 0, 36, 36), 36, draft=False)
  assert np.abs(whole.astype(int) - stored).mean() < 2.0
  box = (4, 10, 20, 14)
  part = crops.decode_crop(encoded, 36, box, 12, draft=False)
  from_stored = _in_jit_crop(stored[None], np.array([box]), 12)
  assert np.abs(part / 255.0 - from_stored[0]).mean() < 2.5 / 255
  shifted = _in_jit_crop(stored[None], np.array([(4, 16, 20, 14)]), 12)
  assert np.abs(part / 255.0 - shifted[0]).mean() > 4 / 255  # The place matters.


def test_a_jpeg_decodes_at_a_reduced_scale_when_the_box_allows(tmp_path, monkeypatch):
  encoded = _jpeg(tmp_path / "big.jpg", 640, 480)
  seen = []
  original = crops._cut_and_resize
  monkeypatch.setattr(
    crops, "_cut_and_resize", lambda image, *rest: seen.append(image.size) or original(image, *rest)
  )
  box, size = (40, 40, 110, 120), 24  # About 225 x 206 original pixels for a 24 px crop.
  drafted = crops.decode_crop(encoded, 256, box, size)
  whole = crops.decode_crop(encoded, 256, box, size, draft=False)
  assert seen == [(80, 60), (640, 480)]  # 1/8: the box keeps >= 24 pixels a side.
  assert np.abs(drafted.astype(int) - whole).mean() < 3.0
  crops.decode_crop(encoded, 256, (0, 0, 256, 256), 224)  # 480 pixels for 224: 1/2.
  crops.decode_crop(encoded, 256, (0, 0, 256, 256), 256)  # 480 for 256: decoded whole.
  assert seen[2:] == [(320, 240), (640, 480)]


def test_a_banked_proxy_is_cut_with_the_same_box():
  square = _smooth(np.random.default_rng(3), SIDE, SIDE)
  box = (2, 3, 11, 9)
  expected = _in_jit_crop(square[None], np.array([box]))[0]
  np.testing.assert_allclose(
    crops.crop_square(square, box, SIZE) / 255.0, expected, atol=1.01 / 255
  )
  encoded = io.BytesIO()
  Image.fromarray(square).save(encoded, format="PNG")  # An original that is the stored square.
  np.testing.assert_array_equal(
    crops.decode_crop(encoded.getvalue(), SIDE, box, SIZE), crops.crop_square(square, box, SIZE)
  )


KILLED_WITHIN_EPOCH = """
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import make_tiny_config
from proxy_jax.run import resume, train
original = resume.save_within_epoch

def save_within_epoch(ckpt, state, progress, bank, step_in_epoch, totals):
  saved = original(ckpt, state, progress, bank, step_in_epoch, totals)
  if progress.epoch == 2 and step_in_epoch == 2:  # Mid-way through epoch 3, after a proxy step.
    os.kill(os.getpid(), signal.SIGKILL)
  return saved

resume.save_within_epoch = save_within_epoch
train.train_and_evaluate(make_tiny_config(**{overrides!r}), sys.argv[1])
"""


@pytest.mark.slow
def test_a_run_cropping_in_its_workers_killed_within_an_epoch_resumes_equal(tmp_path):
  root = _squares(tmp_path)
  overrides = _overrides(
    tmp_path,
    root,
    "stream",
    **{
      "batch_size": 2,
      "eval_batch_size": 4,
      "num_epochs": 3,
      "proxy.enabled": True,
      "proxy.schedule": "1,p,1,p,1",
      "checkpoint_every_steps": 1,
    },
  )
  straight = train.train_and_evaluate(make_tiny_config(**overrides), str(tmp_path / "a"))
  assert straight["config"]["data"]["stream_crop"] == "workers"
  assert straight["proxy_steps"] and straight["bank_size"] > 0
  script = tmp_path / "killed.py"
  tests = os.path.join(ROOT, "tests")
  script.write_text(KILLED_WITHIN_EPOCH.format(root=ROOT, tests=tests, overrides=overrides))
  workdir = str(tmp_path / "b")
  result = subprocess.run(
    [sys.executable, str(script), workdir], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  resumed = train.train_and_evaluate(make_tiny_config(**overrides), workdir)
  assert comparable(resumed) == comparable(straight)
  # The same run cropping in the step (the stream then equals the cache) trains differently.
  in_step = train.train_and_evaluate(
    make_tiny_config(**{**overrides, "data.stream_crop": "step"}), str(tmp_path / "c")
  )
  assert in_step["history"][0]["train_loss"] != straight["history"][0]["train_loss"]

"""Data: image folders with bad files, the fixed stratified split, padded batches."""

import json
import os
import time

import jax
import numpy as np
from PIL import Image
import pytest

from proxy_jax import data
from proxy_jax.core import errors
from proxy_jax.data import splits, tfds_prepare
from tests.conftest import make_tiny_config


def _photo(path, mode="RGB", size=(20, 14), fmt=None):
  rng = np.random.default_rng(abs(hash(path)) % 2**32)
  pixels = rng.integers(0, 255, (size[1], size[0], 3), np.uint8)
  image = Image.fromarray(pixels).convert(mode)
  image.save(path, format=fmt)


def _make_folder(root):
  """Two good classes with odd formats and every kind of bad file; returns the bad paths."""
  for name in ("cat", "dog"):
    os.makedirs(os.path.join(root, name))
    for i in range(4):
      _photo(os.path.join(root, name, f"{i}.jpg"))
  _photo(os.path.join(root, "cat", "grey.png"), "L")
  _photo(os.path.join(root, "cat", "rgba.png"), "RGBA")
  _photo(os.path.join(root, "dog", "palette.png"), "P")
  _photo(os.path.join(root, "dog", "cmyk.jpg"), "CMYK", fmt="JPEG")
  bad = {
    "corrupt": os.path.join(root, "cat", "corrupt.jpg"),
    "empty": os.path.join(root, "dog", "empty.png"),
    "text": os.path.join(root, "dog", "notes.txt"),
    "truncated": os.path.join(root, "cat", "truncated.jpg"),
  }
  with open(bad["corrupt"], "wb") as f:
    f.write(os.urandom(300))
  open(bad["empty"], "wb").close()
  with open(bad["text"], "w") as f:
    f.write("not an image")
  _photo(bad["truncated"], size=(64, 64))
  with open(bad["truncated"], "rb") as f:
    head = f.read()
  with open(bad["truncated"], "wb") as f:
    f.write(head[: len(head) // 2])
  return bad


def test_folder_keeps_good_images_and_reports_bad_ones(tmp_path):
  bad = _make_folder(str(tmp_path))
  pool = data.load_folder_pool(str(tmp_path), 16, "", workers=2)
  assert pool.class_names == ["cat", "dog"]
  assert pool.images.shape == (12, 16, 16, 3) and pool.images.dtype == np.uint8
  assert np.bincount(pool.labels).tolist() == [6, 6]
  reasons = {entry["path"]: entry["reason"] for entry in pool.skipped_files}
  assert reasons == {
    bad["corrupt"]: "not an image",
    bad["empty"]: "zero bytes",
    bad["text"]: "not an image",
    bad["truncated"]: "truncated",
  }


def test_class_folder_without_readable_image_is_named(tmp_path):
  _make_folder(str(tmp_path))
  os.makedirs(tmp_path / "bird")
  with open(tmp_path / "bird" / "broken.jpg", "wb") as f:
    f.write(b"\xff\xd8 nope")
  with pytest.raises(ValueError, match="no readable image: bird"):
    data.load_folder_pool(str(tmp_path), 16, "", workers=1)


def _folder_config(root, **overrides):
  return make_tiny_config(
    **{
      "data.source": "folder",
      "data.path": str(root),
      "data.val_fraction": 0.25,
      "data.test_fraction": 0.25,
      "data.max_examples": 0,
      **overrides,
    }
  )


def test_broken_symlink_is_skipped_with_its_reason(tmp_path):
  root = tmp_path / "photos"
  bad = _make_folder(str(root))
  link = root / "cat" / "gone.jpg"
  os.symlink(tmp_path / "deleted.jpg", link)  # The cache key stats every file: it must not crash.
  dataset = data.load_dataset(_folder_config(root), str(tmp_path / "run"))
  reasons = {entry["path"]: entry["reason"] for entry in dataset.skipped_files}
  assert reasons[str(link)] == "broken link"
  assert reasons[bad["truncated"]] == "truncated" and len(reasons) == 5
  assert len(dataset.train) + len(dataset.val) + len(dataset.test) == 12


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
  _make_folder(str(tmp_path))
  os.makedirs(tmp_path / "bird")
  with pytest.raises(errors.DataError, match="no readable image: bird"):
    data.load_folder_pool(str(tmp_path), 16, "", workers=1)


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
  ramp = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535
  Image.fromarray(ramp).save(tmp_path / "deep.png")
  with Image.open(tmp_path / "deep.png") as image:
    assert image.mode.startswith("I")
  decoded = data.load_image_file(str(tmp_path / "deep.png"), 16)
  expected = np.round(ramp / 257.0).astype(np.uint8)
  for channel in range(3):
    np.testing.assert_array_equal(decoded[..., channel], expected)


def test_exif_orientation_is_applied(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 255, (8, 12, 3), np.uint8)  # landscape
  exif = Image.Exif()
  exif[0x0112] = 6  # "Rotate 90 CW to display": how phones store portrait shots.
  Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)
  upright = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_270)
  assert upright.size == (8, 12)
  np.testing.assert_array_equal(
    data.load_image_file(str(tmp_path / "phone.png"), 8), data.fit_image(upright, 8)
  )


@pytest.mark.parametrize(
  "overrides,split,fields",
  [
    (
      {"data.max_examples": 5, "data.val_fraction": 0.1},
      "val",
      "data.val_fraction or data.max_examples",
    ),
    ({"data.val_fraction": 0.0001}, "val", "data.val_fraction or data.max_examples"),
    (
      {"data.val_fraction": 0.5, "data.test_fraction": 0.49, "data.max_examples": 30},
      "train",
      "lower data.val_fraction / data.test_fraction",
    ),
  ],
)
def test_empty_split_is_refused_before_training(tmp_path, overrides, split, fields):
  with pytest.raises(errors.DataError, match=f"the {split} split is empty.*{fields}"):
    data.load_dataset(make_tiny_config(**overrides), str(tmp_path))
  assert not (tmp_path / "split.json").exists()


def test_class_without_validation_example_is_a_warning(tmp_path, caplog):
  dataset = data.load_dataset(
    make_tiny_config(**{"data.max_examples": 40, "data.val_fraction": 0.1}), str(tmp_path)
  )
  assert len(dataset.val) == 4
  assert "classes have no validation example" in caplog.text


def test_flat_folder_labels_from_file_name_regex(tmp_path):
  for name in ("A1.jpg", "A22.jpg", "B3.jpg", "del4.jpg", "readme.md"):
    _photo(str(tmp_path / name)) if name.endswith(".jpg") else (tmp_path / name).write_text("x")
  pool = data.load_folder_pool(str(tmp_path), 8, r"^([A-Za-z]+)\d+\.", workers=1)
  assert pool.class_names == ["A", "B", "del"]
  assert sorted(pool.labels.tolist()) == [0, 0, 1, 2]
  assert pool.skipped_files == [
    {"path": str(tmp_path / "readme.md"), "reason": "name does not match data.label_regex"}
  ]


def test_test_folder_with_unknown_class_is_refused(tmp_path):
  _photo(str(tmp_path / "x.jpg"))
  os.makedirs(tmp_path / "test" / "zebra")
  _photo(str(tmp_path / "test" / "zebra" / "z.jpg"))
  with pytest.raises(ValueError, match="classes not in the training data: zebra"):
    data.load_folder_pool(str(tmp_path / "test"), 8, "", 1, class_names=["cat", "dog"])


def test_fit_image_converts_modes_and_centre_crops():
  wide = Image.fromarray(np.arange(40 * 80, dtype=np.uint8).reshape(40, 80) % 251, "L")
  out = data.fit_image(wide, 20)
  assert out.shape == (20, 20, 3) and out.dtype == np.uint8
  assert np.array_equal(out[..., 0], out[..., 2])  # grey stays grey in RGB


def test_stratified_split_is_disjoint_complete_and_proportional():
  labels = np.repeat(np.arange(4), [50, 30, 20, 100])
  rest, val, test = splits.stratified_split(labels, (0.1, 0.2), jax.random.key(0))
  assert len(set(rest) | set(val) | set(test)) == len(labels)
  assert len(rest) + len(val) + len(test) == len(labels)
  assert np.bincount(labels[val]).tolist() == [5, 3, 2, 10]
  assert np.bincount(labels[test]).tolist() == [10, 6, 4, 20]
  again = splits.stratified_split(labels, (0.1, 0.2), jax.random.key(0))
  assert all(np.array_equal(a, b) for a, b in zip((rest, val, test), again))
  other = splits.stratified_split(labels, (0.1, 0.2), jax.random.key(1))
  assert not np.array_equal(val, other[1])


def test_stratified_split_of_many_small_classes_keeps_the_fraction():
  labels = np.arange(48) % 100  # 48 classes of one example each, like a mock dataset
  rest, val = splits.stratified_split(labels, (0.25,), jax.random.key(0))
  assert len(val) == 12 and len(rest) == 36


def test_split_is_recorded_and_reused(tmp_path):
  config = make_tiny_config()
  first = data.load_dataset(config, str(tmp_path))
  recorded = json.loads((tmp_path / "split.json").read_text())
  for name in ("train", "val", "test"):  # Source indices are split.json's pool indices.
    assert recorded["indices"][name] == getattr(first, name).source_indices.tolist()
  # The training seed does not move the split.
  config.seed = 7
  second = data.load_dataset(config, str(tmp_path))
  np.testing.assert_array_equal(first.val.source_indices, second.val.source_indices)
  np.testing.assert_array_equal(first.train.images, second.train.images)
  # Batches name a training example by its position in the split (the proxy bank's key).
  ids = np.concatenate([b["id"][b["mask"] > 0] for b in data.batches(first.train, 64)])
  assert ids.tolist() == list(range(len(first.train)))
  assert len(first.train) + len(first.val) + len(first.test) == 300
  assert not set(first.val.source_indices) & set(first.test.source_indices)


def test_recorded_split_is_never_redrawn_with_other_parameters(tmp_path):
  data.load_dataset(make_tiny_config(), str(tmp_path))
  with pytest.raises(ValueError, match="data.max_examples=300"):
    data.load_dataset(make_tiny_config(**{"data.max_examples": 200}), str(tmp_path))
  with pytest.raises(ValueError, match="data.split_seed=0"):
    data.load_dataset(make_tiny_config(**{"data.split_seed": 1}), str(tmp_path))


def test_folder_pool_is_cached(tmp_path):
  root = tmp_path / "photos"
  os.makedirs(root)
  _make_folder(str(root))
  config = make_tiny_config(
    **{
      "data.source": "folder",
      "data.path": str(root),
      "data.val_fraction": 0.25,
      "data.test_fraction": 0.25,
      "data.max_examples": 0,
    }
  )
  first = data.load_dataset(config, str(tmp_path / "run"))
  cache = tmp_path / "run" / "cache"
  assert any(name.endswith(".images.npy") for name in os.listdir(cache))
  second = data.load_dataset(config, str(tmp_path / "run"))
  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert len(second.skipped_files) == 4


def test_batches_cover_every_example_once_with_padding():
  split = data.Split(
    np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, -1),
    np.arange(10, dtype=np.int32) % 3,
    np.arange(10, dtype=np.int32),
  )
  order = data.epoch_order(10, seed=0, epoch=1)
  seen = []
  for batch in data.batches(split, 4, order):
    assert batch["image"].shape == (4, 1, 1, 3)
    seen += batch["id"][batch["mask"] > 0].tolist()
  assert sorted(seen) == list(range(10)) and len(seen) == 10
  assert data.num_batches(10, 4) == 3
  assert not np.array_equal(order, data.epoch_order(10, seed=0, epoch=2))


def test_batches_swap_by_id_and_resume_from_a_step():
  split = data.Split(
    np.zeros((6, 2, 2, 3), np.uint8), np.zeros(6, np.int32), np.arange(6, dtype=np.int32)
  )

  def swap(ids, images):
    images[ids == 4] = 255
    return images

  batches = list(data.batches(split, 2, swap=swap))
  assert batches[2]["image"][0].max() == 255 and batches[2]["image"][1].max() == 0
  assert split.images.max() == 0  # the original is never modified
  resumed = list(data.batches(split, 2, start=1))
  assert [b["id"].tolist() for b in resumed] == [[2, 3], [4, 5]]


# ---------------------------------------------------------------- TFDS offline


def _no_network(monkeypatch):
  """Every outgoing connection fails at once, as on a machine without network."""

  def refuse(*args, **kwargs):
    raise OSError(101, "Network is unreachable")

  monkeypatch.setattr(tfds_prepare.socket, "create_connection", refuse)


def _assert_explains(error, name, data_dir):
  message = str(error)
  assert f"'{name}' is not prepared in {data_dir}" in message
  assert f"tfds build {name} --data_dir=DIR" in message
  assert os.path.join(str(data_dir), "downloads", "manual") in message


def test_tfds_offline_fails_in_seconds_with_what_to_do(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  started = time.time()
  with pytest.raises(tfds_prepare.DatasetUnavailableError) as raised:
    data.load_tfds_pool("stanford_dogs", "train", 16, str(tmp_path), 1)
  assert time.time() - started < 15
  _assert_explains(raised.value, "stanford_dogs", tmp_path)
  assert "vision.stanford.edu:80 cannot be reached" in str(raised.value)
  assert isinstance(raised.value, errors.UserError)  # main.py prints it as one line.


def test_tfds_failed_download_is_one_clear_error(tmp_path, monkeypatch):
  import requests  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(tfds_prepare, "_unreachable_hosts", lambda urls: [])  # The probe passes...

  def connection_error(url, **kwargs):  # ...but the download itself fails.
    raise requests.exceptions.ConnectionError(f"Max retries exceeded with url: {url}")

  monkeypatch.setattr(downloader, "_open_url", connection_error)
  started = time.time()
  with pytest.raises(tfds_prepare.DatasetUnavailableError, match="ConnectionError") as raised:
    data.load_tfds_pool("cifar100", "train", 16, str(tmp_path), 1)
  assert time.time() - started < 15
  _assert_explains(raised.value, "cifar100", tmp_path)


def test_tfds_manual_download_missing_is_named(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  with pytest.raises(
    tfds_prepare.DatasetUnavailableError, match="needs a manual download"
  ) as raised:
    data.load_tfds_pool("imagenet2012", "train", 16, str(tmp_path), 1)
  _assert_explains(raised.value, "imagenet2012", tmp_path)


def test_prepared_tfds_dataset_needs_no_network(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.testing.DummyMnist(data_dir=str(tmp_path)).download_and_prepare()  # Local, no download.
  _no_network(monkeypatch)
  builder = tfds.builder("dummy_mnist", data_dir=str(tmp_path))
  monkeypatch.setattr(builder, "download_and_prepare", lambda: pytest.fail("downloaded"))
  tfds_prepare.prepare_tfds(builder)
  assert len(list(builder.as_dataset(split="train"))) == 20

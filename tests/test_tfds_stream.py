"""TFDS datasets prepared as ArrayRecord: read by `tfds.data_source`, the stream and the cache
alike, with no TensorFlow in the stream's read path.

The dataset is TFDS's own `dummy_mnist`, prepared locally (no download) in a temporary folder.
"""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from proxy_jax import data
from proxy_jax.config import recorded
from proxy_jax.core.errors import DataError
from proxy_jax.data import decode, packed, tfds_records
from tests.conftest import ROOT, make_tiny_config, settings_of


def _prepare(folder, file_format):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets.testing  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  builder = tfds.testing.DummyMnist(data_dir=str(folder), file_format=file_format)
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory):
  """Prepared by the stream's own first use: an unprepared dataset is prepared as ArrayRecord."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if not hasattr(tfds.testing, "ProxyJaxDigits"):  # TFDS's dummy_mnist, registered by name.

    class ProxyJaxDigits(tfds.testing.DummyMnist):
      name = "dummy_mnist"

    tfds.testing.ProxyJaxDigits = ProxyJaxDigits
  folder = tmp_path_factory.mktemp("tfds_array_record")
  prepared = tfds_records.builder("dummy_mnist", str(folder), array_record=True)
  assert tfds_records.is_array_record(prepared)
  return folder


def _config(tfds_dir, tmp_path, pipeline):
  return make_tiny_config(
    **{
      "data.source": "tfds",
      "data.name": "dummy_mnist",
      "data.tfds_data_dir": str(tfds_dir),
      "data.train_split": "train",
      "data.test_split": "test",
      "data.max_examples": 0,
      "data.pipeline": pipeline,
      "data.cache_dir": str(tmp_path / f"cache_{pipeline}"),
    }
  )


def _dataset(tfds_dir, tmp_path, pipeline):
  config = _config(tfds_dir, tmp_path, pipeline)
  return data.load_dataset(settings_of(config), str(tmp_path / f"run_{pipeline}"))


def test_the_stream_equals_the_cache_on_a_tfds_dataset(array_record_dir, tmp_path):
  cached = _dataset(array_record_dir, tmp_path, "cache")
  streamed = _dataset(array_record_dir, tmp_path, "stream")
  assert isinstance(streamed.train.images, packed.PackedImages)
  assert isinstance(streamed.train.images.records, packed.TfdsSplit)
  assert not isinstance(cached.train.images, packed.PackedImages)
  assert streamed.class_names == cached.class_names == [str(i) for i in range(10)]
  for name in ("train", "val", "test"):
    a, b = getattr(cached, name), getattr(streamed, name)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    np.testing.assert_array_equal(a.labels, b.labels)
  # The pixels are TFDS's own decoding of the examples, fitted as the cache fits any image.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  source = tfds.builder_from_directory(streamed.train.images.records.directory).as_data_source(
    split="train"
  )
  for row in (0, 5):
    index = int(streamed.train.images.rows[row])
    reference = decode.fit_image(Image.fromarray(source[index]["image"][..., 0]), 18)
    np.testing.assert_array_equal(streamed.train.images[row], reference)
  # The labels are cached: a second open reads no record for them.
  (labels_file,) = [f for f in os.listdir(tmp_path / "cache_stream") if "-pool-labels-" in f]
  assert labels_file.endswith(".json")


def test_the_stream_refuses_a_dataset_prepared_as_tfrecord_in_one_line(tmp_path):
  folder = tmp_path / "tfds_tfrecord"
  _prepare(folder, "tfrecord")
  with pytest.raises(DataError, match="--file_format=array_record") as raised:
    _dataset(folder, tmp_path, "stream")
  assert "\n" not in str(raised.value)


def test_auto_streams_a_large_array_record_dataset_and_caches_a_small_one(
  array_record_dir, tmp_path
):
  config = _config(array_record_dir, tmp_path, "auto")
  settings = settings_of(config)
  assert data.auto_pipeline(settings) == "cache"
  config.data.max_cache_gb = 1e-9
  assert data.auto_pipeline(settings_of(config)) == "stream"
  resolved = recorded.resolve_auto_fields(settings_of(config), str(tmp_path / "run"))
  assert resolved.data.pipeline == "stream"


READ_WITHOUT_TENSORFLOW = """
import sys
sys.path[:0] = [{root!r}]
from tests.test_tfds_stream import _dataset
import pathlib
dataset = _dataset({tfds_dir!r}, pathlib.Path({tmp!r}), "stream")
first = dataset.train.images[:8]
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
print("ok", first.shape)
"""


def test_the_stream_reads_a_prepared_dataset_without_tensorflow(array_record_dir, tmp_path):
  script = READ_WITHOUT_TENSORFLOW.format(
    root=ROOT, tfds_dir=str(array_record_dir), tmp=str(tmp_path)
  )
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
  )
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]

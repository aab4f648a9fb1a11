"""Pretrained-weight conversion: exact logits against PyTorch, error reporting, CLI round trip.

The fixtures under tests/fixtures/pretrained/ are random-weight torchvision/timm-layout models
with their PyTorch logits, written by tests/fixtures/make_pretrained_fixtures.py; nothing here
imports torch.
"""

import functools
import json
import os
import shutil
import struct
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

from proxy_jax import convert, models
from proxy_jax.weights import pretrained, weight_files

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pretrained")
SPEC = json.load(open(os.path.join(FIXTURES, "spec.json")))
TOLERANCE = 1e-4


def _path(name):
  return os.path.join(FIXTURES, f"{name}.safetensors")


def _reference(name):
  return np.load(os.path.join(FIXTURES, f"{name}_logits.npz"))


@functools.lru_cache(maxsize=None)
def _model(name, num_classes=None, image_size=None, small_stem=None):
  """(model, jitted apply) for fixture `name`; cached so each shape compiles once."""
  spec = SPEC[name]
  model = models.create(
    spec["model"],
    num_classes or spec["num_classes"],
    image_size or spec["image_size"],
    small_stem=spec["small_stem"] if small_stem is None else small_stem,
    **spec["overrides"],
  )
  return model, jax.jit(model.apply)


def _fresh(model, image_size, seed=0):
  """Stand-in for `model.init` without compiling the threefry initialisers (slow on CPU)."""
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3))
  )
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (rng.normal(size=s.shape) * 0.02).astype(s.dtype), shapes)


def _load(name, source=None, log=None, **model_kw):
  model, apply = _model(name, **model_kw)
  size = model_kw.get("image_size") or SPEC[name]["image_size"]
  fresh = _fresh(model, size)
  messages = []
  variables = pretrained.load_pretrained(
    source or _path(name), SPEC[name]["model"], fresh, log=log or messages.append
  )
  return variables, fresh, apply, messages


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16_bn", "vit"])
def test_logits_match_pytorch(name):
  variables, _, apply, _ = _load(name)
  ref = _reference(name)
  diff = _max_diff(apply(variables, ref["x"]), ref["logits"])
  assert diff < TOLERANCE, f"{name}: max |logit difference| {diff}"


def test_vit_pos_embed_resized_for_larger_images():
  size = SPEC["vit"]["large_image_size"]
  variables, _, apply, messages = _load("vit", image_size=size)
  ref = _reference("vit")
  assert any("pos_embed resized" in m for m in messages), messages
  assert _max_diff(apply(variables, ref["x_large"]), ref["logits_large"]) < TOLERANCE


def test_timm_vgg_layout(tmp_path):
  """timm stores VGG's classifier as 7x7/1x1 convolutions (pre_logits.fc1/fc2, head.fc)."""
  state = weight_files.read_safetensors(_path("vgg16_bn"))
  channels = state["features.40.weight"].shape[0]
  renames = {
    "classifier.0": "pre_logits.fc1",
    "classifier.3": "pre_logits.fc2",
    "classifier.6": "head.fc",
  }
  timm = {}
  for key, value in state.items():
    prefix, _, leaf = key.rpartition(".")
    if prefix == "classifier.0" and leaf == "weight":
      value = value.reshape(-1, channels, 7, 7)
    elif prefix == "classifier.3" and leaf == "weight":
      value = value.reshape(*value.shape, 1, 1)
    timm[f"{renames.get(prefix, prefix)}.{leaf}"] = np.ascontiguousarray(value)
  save_file(timm, str(tmp_path / "timm_vgg.safetensors"))
  variables, _, apply, messages = _load("vgg16_bn", str(tmp_path / "timm_vgg.safetensors"))
  ref = _reference("vgg16_bn")
  assert any("timm VGG layout" in m for m in messages)
  assert _max_diff(apply(variables, ref["x"]), ref["logits"]) < TOLERANCE


def test_class_token_vit_maps_norm_to_fc_norm(tmp_path):
  state = weight_files.read_safetensors(_path("vit"))
  renamed = {("norm" + k[7:] if k.startswith("fc_norm.") else k): v for k, v in state.items()}
  save_file(renamed, str(tmp_path / "token_vit.safetensors"))
  variables, _, _, messages = _load("vit", str(tmp_path / "token_vit.safetensors"))
  assert any("class-token pooling" in m and "fine-tuning" in m for m in messages), messages
  np.testing.assert_array_equal(variables["params"]["fc_norm"]["scale"], state["fc_norm.weight"])


def _write_variant(tmp_path, name, edit):
  state = dict(weight_files.read_safetensors(_path(name)))
  edit(state)
  path = str(tmp_path / f"edited_{name}.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
  return path


def test_data_parallel_prefix_is_stripped(tmp_path):
  def edit(state):
    for key in list(state):
      state["module." + key] = state.pop(key)

  variables, _, _, _ = _load("vit", _write_variant(tmp_path, "vit", edit))
  state = weight_files.read_safetensors(_path("vit"))
  np.testing.assert_array_equal(
    variables["params"]["blocks_1"]["qkv"]["kernel"], state["blocks.1.attn.qkv.weight"].T
  )


def test_unknown_and_missing_keys_are_listed(tmp_path):
  def edit(state):
    del state["layer1.0.conv1.weight"], state["layer4.1.bn2.running_var"]
    state["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)

  with pytest.raises(pretrained.CheckpointMismatchError) as error:
    _load("resnet18", _write_variant(tmp_path, "resnet18", edit))
  message = str(error.value)
  assert "1 unknown keys: layer5.0.conv1.weight" in message
  assert "2 missing keys: layer1.0.conv1.weight, layer4.1.bn2.running_var" in message


def test_shape_mismatch_is_listed_with_stem_hint(tmp_path):
  def edit(state):
    state["layer2.0.bn1.weight"] = state["layer2.0.bn1.weight"][:3]

  with pytest.raises(pretrained.CheckpointMismatchError) as error:
    _load("resnet18", _write_variant(tmp_path, "resnet18", edit))
  assert (
    "layer2.0.bn1.weight (-> params/blocks_2/bn1/scale): checkpoint (3,), model "
    "expects (16,)" in str(error.value)
  )
  # ImageNet's 7x7 stem does not fit the small-image 3x3 stem: a pointed message.
  with pytest.raises(pretrained.CheckpointMismatchError) as error:
    _load("resnet18", small_stem=True)
  assert (
    "conv1.weight (-> params/conv1/kernel): checkpoint (8, 3, 7, 7), model expects "
    "(8, 3, 3, 3)" in str(error.value)
  )
  assert "small_stem=false" in str(error.value)


@pytest.mark.slow
def test_head_kept_fresh_when_class_count_differs():
  variables, fresh, apply, messages = _load("resnet50", num_classes=7)
  params = variables["params"]
  np.testing.assert_array_equal(params["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
  np.testing.assert_array_equal(params["fc"]["bias"], fresh["params"]["fc"]["bias"])
  assert any("10 classes" in m and "7" in m and "fresh" in m for m in messages), messages
  state = weight_files.read_safetensors(_path("resnet50"))
  np.testing.assert_array_equal(
    params["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    variables["batch_stats"]["blocks_15"]["bn3"]["var"], state["layer4.2.bn3.running_var"]
  )
  assert apply(variables, _reference("resnet50")["x"]).shape == (2, 7)


def test_headless_checkpoint_keeps_fresh_head(tmp_path):
  def edit(state):
    del state["head.weight"], state["head.bias"]

  variables, fresh, _, messages = _load("vit", _write_variant(tmp_path, "vit", edit))
  np.testing.assert_array_equal(
    variables["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"]
  )
  assert any("no classifier" in m for m in messages), messages


def test_head_mask():
  expected = {"resnet18": {"fc"}, "vgg16_bn": {"fc1", "fc2", "fc3"}, "vit": {"fc_norm", "fc"}}
  for name, heads in expected.items():
    model, _ = _model(name)
    params = _fresh(model, SPEC[name]["image_size"])["params"]
    mask = pretrained.head_mask(params, SPEC[name]["model"])
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
    for module, subtree in mask.items():
      assert set(jax.tree_util.tree_leaves(subtree)) == {module in heads}, (name, module)
  with pytest.raises(ValueError, match="no head parameters"):
    pretrained.head_mask({"params": params}, "vit_ti16")
  # The intended use: freeze the backbone with optax.multi_transform.
  labels = jax.tree_util.tree_map(lambda h: "head" if h else "backbone", mask)
  optimizer = optax.multi_transform(
    {"head": optax.sgd(1.0), "backbone": optax.set_to_zero()}, labels
  )
  grads = jax.tree_util.tree_map(np.ones_like, params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  assert float(np.abs(updates["blocks_0"]["qkv"]["kernel"]).max()) == 0.0
  assert float(np.abs(updates["fc"]["kernel"]).min()) == 1.0


@pytest.mark.slow
def test_convert_cli_round_trip(tmp_path):
  spec = SPEC["vit"]
  out = str(tmp_path / "converted")
  overrides = [
    arg for key, value in spec["overrides"].items() for arg in ("--set", f"{key}={value}")
  ]
  convert.main(
    [
      _path("vit"),
      out,
      "--model",
      spec["model"],
      "--image-size",
      str(spec["image_size"]),
      "--small-stem",
      "true",
      *overrides,
    ]
  )
  assert os.path.isdir(os.path.join(out, "variables"))
  meta = json.load(open(os.path.join(out, "pretrained.json")))
  assert meta["model"] == "vit_ti16" and meta["num_classes"] == 10
  from_orbax, _, apply, messages = _load("vit", out)
  from_safetensors, _, _, _ = _load("vit")
  ref = _reference("vit")
  assert _max_diff(apply(from_orbax, ref["x"]), ref["logits"]) < TOLERANCE
  assert _max_diff(apply(from_orbax, ref["x"]), apply(from_safetensors, ref["x"])) == 0.0
  assert any(out in m for m in messages)
  # A converted checkpoint still goes through the class-count and size checks.
  _, fresh, _, messages = _load("vit", out, num_classes=3)
  assert any("kept at its fresh initialisation" in m for m in messages)
  with pytest.raises(pretrained.CheckpointMismatchError, match="vit_ti16 weights, not"):
    pretrained.load_pretrained(out, "vit_s16", fresh)


def _assert_offline_message(error, tmp_path):
  message = str(error)
  assert "timm/resnet50.a1_in1k" in message and "model.safetensors" in message
  assert weight_files.hub_local_path("timm/resnet50.a1_in1k", str(tmp_path)) in message
  assert "--config.model.pretrained=" in message


def test_offline_hub_error(tmp_path, monkeypatch):
  try:
    import huggingface_hub.constants  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  except ImportError:
    pass  # Without the package the same error comes from the missing import.
  with pytest.raises(weight_files.PretrainedUnavailableError) as error:
    pretrained.load_pretrained("timm/resnet50.a1_in1k", "resnet50", {}, cache_dir=str(tmp_path))
  _assert_offline_message(error.value, tmp_path)
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  with pytest.raises(weight_files.PretrainedUnavailableError, match="pip install") as error:
    pretrained.load_pretrained(
      "hf-hub:timm/resnet50.a1_in1k", "resnet50", {}, cache_dir=str(tmp_path)
    )
  _assert_offline_message(error.value, tmp_path)


def test_hub_name_uses_manually_fetched_file(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  shutil.copy(_path("vit"), weight_files.hub_local_path("someone/tiny-vit", str(tmp_path)))
  model, _ = _model("vit")
  variables = pretrained.load_pretrained(
    "someone/tiny-vit", "vit_ti16", _fresh(model, 32), cache_dir=str(tmp_path), log=lambda _: None
  )
  state = weight_files.read_safetensors(_path("vit"))
  np.testing.assert_array_equal(variables["params"]["pos_embed"], state["pos_embed"])


def test_bfloat16_safetensors_read_without_torch(tmp_path):
  values = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16),
    "b": np.linspace(0, 1, 4, dtype=np.float32),
  }
  header, offset, blobs = {}, 0, []
  for name, value in values.items():
    blob = value.tobytes()
    header[name] = {
      "dtype": "BF16" if value.dtype == ml_dtypes.bfloat16 else "F32",
      "shape": list(value.shape),
      "data_offsets": [offset, offset + len(blob)],
    }
    offset += len(blob)
    blobs.append(blob)
  text = json.dumps(header).encode()
  path = tmp_path / "bf16.safetensors"
  path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
  loaded = weight_files.read_safetensors(str(path))
  np.testing.assert_array_equal(loaded["a"].astype(np.float32), values["a"].astype(np.float32))
  np.testing.assert_array_equal(loaded["b"], values["b"])


def test_torch_never_imported():
  assert "torch" not in sys.modules

"""Every model: features/head shapes, __call__ == head(features), dtype policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import models

# (name, image size, expected feature grid, channels) for the full-size architectures.
FULL_SIZE = [
  ("tiny_cnn", 32, 8, 128),
  ("resnet18", 224, 7, 512),
  ("resnet34", 224, 7, 512),
  ("resnet50", 224, 7, 2048),
  ("vgg16_bn", 224, 14, 512),
  ("vit_ti16", 224, 14, 192),
  ("vit_s16", 224, 14, 384),
  ("vit_b16", 224, 14, 768),
  ("resnet18", 32, 4, 512),
  ("resnet50", 64, 8, 2048),
  ("vgg16_bn", 32, 8, 512),
  ("vit_ti16", 32, 8, 192),
]
# Narrow variants that are cheap enough to run for real. Only the tiny CNN's compile is quick
# enough for the fast tier (-m "not slow"); the whole suite runs every architecture.
_SLOW = pytest.mark.slow
SMALL = [
  ("tiny_cnn", {"width": 4}),
  pytest.param("resnet18", {"width": 4}, marks=_SLOW),
  pytest.param("resnet50", {"width": 4}, marks=_SLOW),
  pytest.param("vgg16_bn", {"width": 4}, marks=_SLOW),
  pytest.param("vit_ti16", {"dim": 16, "depth": 2, "num_heads": 2}, marks=_SLOW),
]


def _init(model, size, batch=2):
  x = jnp.zeros((batch, size, size, 3))
  return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)


@pytest.mark.parametrize("name,size,grid,channels", FULL_SIZE)
def test_full_size_shapes(name, size, grid, channels):
  model = models.create(name, 7, size)
  variables = jax.eval_shape(lambda: _init(model, size))
  x = jax.ShapeDtypeStruct((3, size, size, 3), jnp.float32)
  features = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), variables, x)
  assert features.shape == (3, grid, grid, channels)
  logits = jax.eval_shape(lambda v, f: model.apply(v, f, method="head"), variables, features)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name,overrides", SMALL)
def test_call_equals_head_of_features(name, overrides):
  model = models.create(name, 5, 32, **overrides)
  variables = _init(model, 32)
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  features = model.apply(variables, x, method="features")
  assert features.ndim == 4 and features.shape[0] == 2
  np.testing.assert_allclose(
    model.apply(variables, features, method="head"), model.apply(variables, x), rtol=1e-6, atol=1e-6
  )


@pytest.mark.parametrize("name,overrides", SMALL)
def test_bfloat16_compute_keeps_float32_params_and_logits(name, overrides):
  model = models.create(name, 5, 32, dtype="bfloat16", **overrides)
  variables = _init(model, 32)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  assert model.apply(variables, x, method="features").dtype == jnp.bfloat16
  logits = model.apply(variables, x)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


def test_small_stem_is_automatic_at_64px_and_below():
  assert models.use_small_stem(64) and not models.use_small_stem(96)
  assert models.use_small_stem(224, True) and not models.use_small_stem(32, False)


def test_unknown_model_and_dtype_are_refused():
  with pytest.raises(ValueError, match="unknown model 'resnet9'"):
    models.create("resnet9", 10, 32)
  with pytest.raises(ValueError, match="unknown dtype 'float16'"):
    models.create("resnet18", 10, 32, dtype="float16")


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", SMALL)
def test_models_name_their_head_classifier_and_stem(name, overrides):
  model = models.create(name, 5, 32, **overrides)
  spec = models.model_class(name)
  assert isinstance(model, spec)
  variables = _init(model, 32)
  # Random values everywhere, so no zero-initialised layer hides another from the gradient.
  leaves, tree = jax.tree.flatten(variables["params"])
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(tree, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
  features = model.apply(variables, jnp.ones((2, 32, 32, 3)), method="features")
  weights = jax.random.normal(jax.random.key(4), (2, 5))
  grads = jax.grad(
    lambda p: jnp.sum(weights * model.apply({**variables, "params": p}, features, method="head"))
  )(params)
  used = {
    module
    for module, subtree in grads.items()
    if any(np.any(leaf != 0) for leaf in jax.tree.leaves(subtree))
  }
  assert used == set(spec.HEAD_MODULES)
  assert spec.CLASSIFIER in spec.HEAD_MODULES
  assert params[spec.CLASSIFIER]["kernel"].shape[-1] == 5
  assert set(spec.SMALL_STEM_PARAMS) <= set(params)


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu():
  assert models.resolve_dtype("auto", "gpu") == models.resolve_dtype("auto", "tpu") == "bfloat16"
  assert models.resolve_dtype("auto", "cpu") == "float32"
  assert models.resolve_dtype("bfloat16", "cpu") == "bfloat16"
  assert models.resolve_dtype("float32", "gpu") == "float32"
  assert jax.default_backend() == "cpu" and models.resolve_dtype("auto") == "float32"
  model = models.create("tiny_cnn", 5, 16, dtype="auto", width=4)
  variables = _init(model, 16)
  assert model.apply(variables, jnp.zeros((1, 16, 16, 3)), method="features").dtype == jnp.float32
  with pytest.raises(ValueError, match="unknown dtype 'float16'"):
    models.resolve_dtype("float16")


def _plain_conv(lhs, rhs, strides, padding):
  return jax.lax.conv_general_dilated(
    lhs, rhs, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@pytest.mark.parametrize(
  "size,kernel,stride,pad", [(2, 3, 1, 1), (4, 3, 2, 1), (1, 3, 1, 1), (3, 3, 2, 1), (8, 3, 1, 1)]
)
def test_small_map_conv_equals_plain_conv_with_gradients(size, kernel, stride, pad):
  from proxy_jax.models import common  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), (3, size, size, 5))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 4))
  padding = ((pad, pad), (pad, pad))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  fast = lambda x, w: common.small_map_conv(
    x, w, (stride, stride), padding, dimension_numbers=numbers
  )
  plain = lambda x, w: _plain_conv(x, w, (stride, stride), padding)
  out_size = (size + 2 * pad - kernel) // stride + 1
  # Only outputs of at most 2x2 take the im2col path; the 8x8 case checks the fall-through.
  traced = str(jax.make_jaxpr(fast)(x, w))
  assert ("conv_general_dilated" in traced) == (out_size > common.SMALL_MAP_MAX)
  loss = lambda conv_fn: lambda x, w: jnp.sum(jnp.sin(conv_fn(x, w)))
  both = jax.jit(lambda x, w: [(f(x, w), jax.grad(loss(f), (0, 1))(x, w)) for f in (fast, plain)])
  (out, grads), (plain_out, plain_grads) = both(x, w)
  np.testing.assert_allclose(out, plain_out, rtol=1e-5, atol=1e-5)
  for got, want in zip(grads, plain_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_im2col_models_keep_params_logits_and_gradients(monkeypatch):
  """The tiny CNN at 8 px (last conv 4x4 -> 2x2) with im2col on and off: same parameters,
  logits and gradients; ResNet-18 (ImageNet stem, 64 px: last stage 2x2) keeps its tree."""
  from proxy_jax.models import common  # pylint: disable=g-import-not-at-top

  model = models.create("tiny_cnn", 5, 8, width=4)
  resnet = models.create("resnet18", 5, 64, small_stem=False, width=4)
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))

  def run():  # Fresh jitted functions: the path is chosen when they are traced.
    variables = jax.jit(lambda: _init(model, 8))()
    loss = lambda params: jnp.sum(jnp.sin(model.apply({**variables, "params": params}, x)))
    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    traced = str(jax.make_jaxpr(lambda v: model.apply(v, x))(variables))
    return (
      variables,
      value,
      grads,
      traced.count("conv_general_dilated"),
      jax.eval_shape(lambda: _init(resnet, 64)),
    )

  variables, value, grads, convs, resnet_shapes = run()
  monkeypatch.setattr(common, "CPU_IM2COL", False)
  plain_variables, plain_value, plain_grads, plain_convs, plain_resnet_shapes = run()
  assert (convs, plain_convs) == (2, 3)  # The last convolution really took the other path.
  assert resnet_shapes == plain_resnet_shapes
  jax.tree.map(np.testing.assert_array_equal, variables, plain_variables)
  np.testing.assert_allclose(value, plain_value, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), grads, plain_grads
  )

"""CAM library: formulas against independent NumPy references, batching, invariances, rendering."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from proxy_jax import cams, models
from proxy_jax.cams import formulas, postprocess

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- models (built once per session)


def random_variables(model, size, seed=0):
  """Random, non-degenerate variables drawn with NumPy from `model.init`'s shapes.

  Cheaper than compiling `model.init` (tracing only), and unlike the default initialisation it
  gives ViT a non-zero head and ResNet blocks non-zero residual branches.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
    elif "scale" in name or "var" in name:
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # biases, running means, class token, position embedding
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


class Bundle:
  """A small model, its (perturbed) variables and jitted features/logits, built once."""

  def __init__(self, name, dtype):
    if name == "tiny_cnn":
      self.size, self.model = 16, models.create("tiny_cnn", 5, 16, dtype=dtype, width=8)
    elif name == "resnet18":
      self.size, self.model = 32, models.create("resnet18", 5, 32, dtype=dtype, width=8)
    elif name == "vit":
      self.size, self.model = (
        32,
        models.create("vit_ti16", 5, 32, dtype=dtype, dim=32, depth=2, num_heads=2),
      )
    else:
      self.size, self.model = 32, models.create("vgg16_bn", 5, 32, dtype=dtype)
    # Same weights for the float32 and bfloat16 builds (params are float32 in both).
    self.variables = random_variables(self.model, self.size)
    self.apply = self.model.apply
    self.features = jax.jit(functools.partial(self.model.apply, method="features"))
    self.logits = jax.jit(self.model.apply)

  def images(self, batch=3, seed=1):
    """`batch - 1` random normalised images and a constant (all-zero) one last."""
    rng = np.random.default_rng(seed)
    random = rng.normal(size=(batch - 1, self.size, self.size, 3)).astype(np.float32)
    return jnp.asarray(np.concatenate([random, np.zeros((1, self.size, self.size, 3), np.float32)]))

  def compute(self, method, images, targets=None, **options):
    # One set of options for every test, so compiled computations are shared between tests.
    merged = dict(steps=4, num_samples=3, inner_chunk_size=16, key=jax.random.key(0))
    merged.update(options)
    return cams.compute(method, self.apply, self.variables, images, targets, **merged)


@functools.lru_cache(maxsize=None)
def bundle(name, dtype="float32"):
  return Bundle(name, dtype)


# ---------------------------------------------------------------- formulas vs NumPy references


def ref_weighted(acts, weights):
  h, w, c = acts.shape
  out = np.zeros((h, w))
  for k in range(c):
    out += weights[k] * acts[:, :, k]
  return out


def ref_gradcampp(acts, grads):
  h, w, c = acts.shape
  weights = np.zeros(c)
  for k in range(c):
    total = acts[:, :, k].sum()
    for i in range(h):
      for j in range(w):
        g = grads[i, j, k]
        denominator = 2 * g**2 + total * g**3
        alpha = g**2 / denominator if denominator != 0 else 0.0
        weights[k] += alpha * max(g, 0.0)
  return ref_weighted(acts, weights)


def ref_xgradcam(acts, grads):
  c = acts.shape[-1]
  weights = np.zeros(c)
  for k in range(c):
    total = acts[:, :, k].sum()
    weights[k] = (acts[:, :, k] / total * grads[:, :, k]).sum() if total != 0 else 0.0
  return ref_weighted(acts, weights)


def ref_hirescam(acts, grads):
  h, w, c = acts.shape
  return np.array(
    [[sum(grads[i, j, k] * acts[i, j, k] for k in range(c)) for j in range(w)] for i in range(h)]
  )


def ref_layercam(acts, grads):
  h, w, c = acts.shape
  return np.array(
    [
      [sum(max(grads[i, j, k], 0.0) * acts[i, j, k] for k in range(c)) for j in range(w)]
      for i in range(h)
    ]
  )


def ref_eigen(matrix):
  h, w, c = matrix.shape
  flat = matrix.reshape(h * w, c).astype(np.float64)
  flat = flat - flat.mean(axis=0)
  _, _, vt = np.linalg.svd(flat, full_matrices=False)
  component = vt[0] if vt[0].sum() >= 0 else -vt[0]
  return (flat @ component).reshape(h, w)


def random_pair(h, w, c, seed):
  rng = np.random.default_rng(seed)
  acts = rng.uniform(0, 2, (h, w, c)) * (rng.uniform(size=(h, w, c)) > 0.3)  # ReLU-like zeros
  grads = rng.normal(0, 1, (h, w, c))
  grads[:, :, 0] = 0.0  # A channel without gradient: alphas must be 0, not NaN.
  acts[:, :, 1] = 0.0  # A dead channel: XGrad-CAM's normaliser is 0.
  return acts.astype(np.float32), grads.astype(np.float32)


@pytest.mark.parametrize("shape", [(4, 5, 6), (3, 3, 16)])
def test_formulas_match_numpy_references(shape):
  acts, grads = random_pair(*shape, seed=sum(shape))
  acts64, grads64 = acts.astype(np.float64), grads.astype(np.float64)
  expected = {
    "gradcam": ref_weighted(acts64, grads64.mean(axis=(0, 1))),
    "gradcampp": ref_gradcampp(acts64, grads64),
    "xgradcam": ref_xgradcam(acts64, grads64),
    "hirescam": ref_hirescam(acts64, grads64),
    "layercam": ref_layercam(acts64, grads64),
    "eigencam": ref_eigen(acts64),
    "eigengradcam": ref_eigen(acts64 * grads64),
  }
  for method, reference in expected.items():
    got = np.asarray(formulas.ACTIVATION_FORMULAS[method](jnp.asarray(acts), jnp.asarray(grads)))
    np.testing.assert_allclose(
      got, reference, rtol=2e-4, atol=2e-4 * np.abs(reference).max(), err_msg=method
    )


def ref_pytorch_grad_cam_gradcampp_weights(activations, grads):
  """pytorch-grad-cam's GradCAMPlusPlus.get_cam_weights, transcribed: NCHW in, (N, C) out."""
  grads_power_2 = grads**2
  grads_power_3 = grads_power_2 * grads
  sum_activations = np.sum(activations, axis=(2, 3))
  eps = 0.000001
  aij = grads_power_2 / (
    2 * grads_power_2 + sum_activations[:, :, None, None] * grads_power_3 + eps
  )
  aij = np.where(grads != 0, aij, 0)
  weights = np.maximum(grads, 0) * aij
  return np.sum(weights, axis=(2, 3))


def ref_pytorch_grad_cam_gradcampp(acts, grads):
  """Their raw map for one (h, w, C) example: sum_k weight_k A_k."""
  nchw = lambda x: np.transpose(x, (2, 0, 1))[None].astype(np.float64)
  weights = ref_pytorch_grad_cam_gradcampp_weights(nchw(acts), nchw(grads))[0]
  return ref_weighted(acts.astype(np.float64), weights)


def test_gradcampp_eps_matches_pytorch_grad_cam():
  # Gradients ~1e-3, as on a freshly initialised network: there 1e-6 is not negligible.
  acts, grads = random_pair(4, 5, 6, seed=3)
  grads = grads * 1e-3
  ours = np.asarray(formulas.gradcampp(jnp.asarray(acts), jnp.asarray(grads), eps=1e-6))
  theirs = ref_pytorch_grad_cam_gradcampp(acts, grads)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  paper = ref_gradcampp(acts.astype(np.float64), grads.astype(np.float64))
  assert np.abs(paper - theirs).max() > 0.05 * np.abs(paper).max()  # eps really matters here


@pytest.mark.slow
def test_gradcampp_eps_option_reaches_the_formula():
  b = bundle("tiny_cnn")
  images, targets = b.images()[:2], jnp.array([1, 3])
  acts = np.asarray(b.features(b.variables, images), np.float32)
  head = lambda a: b.apply(b.variables, a, method="head")
  grads = np.asarray(
    jax.grad(lambda a: jnp.sum(head(a)[jnp.arange(2), targets]))(jnp.asarray(acts))
  )
  got = b.compute("gradcampp", images, targets, gradcampp_eps=1e-6)
  for i in range(2):
    raw = ref_pytorch_grad_cam_gradcampp(acts[i], grads[i]).astype(np.float32)
    expected = postprocess.finish(jnp.asarray(raw), (b.size, b.size))
    np.testing.assert_allclose(got[i], expected, atol=1e-4)
  assert np.abs(np.asarray(got) - np.asarray(b.compute("gradcampp", images, targets))).max() > 1e-3


def test_eigencam_uses_both_decomposition_branches_consistently():
  # h*w <= C goes through X X^T, h*w > C through X^T X; both must be the SVD projection.
  for shape in ((2, 3, 20), (6, 6, 4)):
    acts, _ = random_pair(*shape, seed=7)
    got = np.asarray(formulas.first_component_projection(jnp.asarray(acts)))
    np.testing.assert_allclose(got, ref_eigen(acts.astype(np.float64)), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- against the model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_cnn", "resnet18"])
def test_gradcam_equals_classic_cam_for_gap_dense_heads(name):
  b = bundle(name)
  images = b.images()
  acts = np.asarray(b.features(b.variables, images), np.float64)
  kernel = np.asarray(b.variables["params"]["fc"]["kernel"], np.float64)
  resize = jax.jit(lambda m: jax.image.resize(m, (b.size, b.size), "bilinear"))
  checked = 0
  for target in range(kernel.shape[1]):
    got = np.asarray(b.compute("gradcam", images, jnp.full((3,), target)))
    for index in range(3):
      classic = np.maximum(acts[index] @ kernel[:, target], 0.0)  # Zhou et al. 2016
      upsampled = np.asarray(resize(jnp.asarray(classic, jnp.float32)), np.float64)
      spread = upsampled.max() - upsampled.min()
      expected = (upsampled - upsampled.min()) / spread if spread > 0 else 0 * upsampled
      checked += spread > 0
      np.testing.assert_allclose(got[index], expected, atol=1e-4)
  assert checked >= 5  # The comparison must not be between all-zero maps.


def test_unrectified_gradcam_is_the_signed_class_map():
  """rectify=False (SnapMix's reference map): Grad-CAM of a GAP + dense head is the raw class
  map sum_k w_k A_k / (h w), negative parts kept, only upsampled."""
  b = bundle("tiny_cnn")
  images = b.images()
  acts = np.asarray(b.features(b.variables, images), np.float64)
  kernel = np.asarray(b.variables["params"]["fc"]["kernel"], np.float64)
  resize = jax.jit(lambda m: jax.image.resize(m, (b.size, b.size), "bilinear"))
  got = np.asarray(b.compute("gradcam", images, jnp.full((3,), 1), rectify=False))
  for index in range(3):
    signed = acts[index] @ kernel[:, 1] / (acts.shape[1] * acts.shape[2])
    expected = np.asarray(resize(jnp.asarray(signed, jnp.float32)))
    np.testing.assert_allclose(got[index], expected, atol=1e-5)
  assert (got < 0).any()  # Not rectified.


@pytest.mark.slow
def test_batched_equals_per_example_loop():
  b = bundle("tiny_cnn")
  images = b.images()
  targets = jnp.array([0, 3, 1])
  # Eigen-CAM's batched and single eigensolvers differ by float32 rounding only.
  tolerance = {"gradcampp": 1e-5, "eigencam": 1e-4, "scorecam": 1e-5, "integrated_gradients": 1e-5}
  for method, atol in tolerance.items():
    batch = b.compute(method, images, targets)
    loop = [b.compute(method, images[i : i + 1], targets[i : i + 1])[0] for i in range(3)]
    np.testing.assert_allclose(batch, np.stack(loop), atol=atol, err_msg=method)
  # Chunked (lax.map over chunks with a remainder) equals one vmapped batch.
  np.testing.assert_allclose(
    b.compute("layercam", images, chunk_size=2), b.compute("layercam", images), atol=1e-6
  )


@pytest.mark.slow
def test_targets_none_is_the_predicted_class_and_logits_are_the_models():
  b = bundle("resnet18")
  images = b.images()
  maps, logits = b.compute("gradcam", images, return_logits=True)
  np.testing.assert_allclose(logits, b.logits(b.variables, images), rtol=1e-5, atol=1e-5)
  predicted = jnp.argmax(logits, axis=-1)
  np.testing.assert_allclose(maps, b.compute("gradcam", images, predicted), atol=1e-6)
  other = b.compute("gradcam", images, (predicted + 1) % 5)
  assert np.abs(np.asarray(maps) - np.asarray(other)).max() > 0.1
  # A single int applies to every image.
  np.testing.assert_allclose(
    b.compute("gradcam", images, 2), b.compute("gradcam", images, jnp.array([2, 2, 2])), atol=1e-6
  )


def test_compute_inside_jit_matches_eager():
  b = bundle("tiny_cnn")
  images, targets = b.images(), jnp.array([1, 2, 3])
  jitted = jax.jit(lambda v, x, t: cams.compute("xgradcam", b.apply, v, x, t, smooth_sigma=1.0))
  np.testing.assert_allclose(
    jitted(b.variables, images, targets),
    b.compute("xgradcam", images, targets, smooth_sigma=1.0),
    atol=1e-6,
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,steps,baseline_kind", [("resnet18", 64, "zero"), ("tiny_cnn", 256, "per-image")]
)
def test_integrated_gradients_completeness(name, steps, baseline_kind):
  # ReLU networks make the path integrand piecewise constant, so the quadrature error is set by
  # its jumps relative to f(x) - f(baseline). The 8-channel tiny CNN moves its logits so little
  # (gaps ~0.3) that 64 steps leave ~1.4% there; it gets 256 steps as a convergence check.
  b = bundle(name)
  images = b.images(seed=5)[:2]
  baseline = 0.0 if baseline_kind == "zero" else 0.3 * b.images(batch=3, seed=6)[:2]
  attributions = cams.integrated_gradients(
    b.apply, b.variables, images, baseline=baseline, steps=steps
  )
  assert attributions.shape == images.shape and attributions.dtype == jnp.float32
  logits = b.logits(b.variables, images)
  base_logits = b.logits(b.variables, jnp.broadcast_to(baseline, images.shape))
  target = np.asarray(jnp.argmax(logits, axis=-1))[:, None]
  gap = np.take_along_axis(np.asarray(logits - base_logits), target, 1)[:, 0]
  totals = np.asarray(attributions).sum(axis=(1, 2, 3))
  assert np.all(np.abs(gap) > 1e-2)
  np.testing.assert_allclose(totals, gap, rtol=0.01)


@pytest.mark.slow
def test_smoothgrad_without_noise_is_the_vanilla_gradient():
  b = bundle("tiny_cnn")
  images = b.images()
  saliency = b.compute("saliency", images)
  np.testing.assert_allclose(b.compute("smoothgrad", images, noise_level=0.0), saliency, atol=1e-5)
  # Saliency itself: max |d logit_c / d x| over colour channels, min-max normalised.
  target = jnp.argmax(b.logits(b.variables, images), axis=-1)
  grads = jax.jit(
    jax.grad(
      lambda x: jnp.sum(jnp.take_along_axis(b.model.apply(b.variables, x), target[:, None], 1))
    )
  )(images)
  raw = np.abs(np.asarray(grads)).max(axis=-1)[:2]
  low, high = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(saliency[:2], (raw - low) / (high - low), atol=1e-5)


@pytest.mark.slow
def test_noisy_methods_need_a_key_and_are_reproducible_with_one():
  b = bundle("tiny_cnn")
  images = b.images()
  with pytest.raises(ValueError, match="key"):
    cams.compute("vargrad", b.apply, b.variables, images)
  run = lambda seed: b.compute("vargrad", images, key=jax.random.key(seed))
  np.testing.assert_array_equal(run(0), run(0))
  assert np.abs(np.asarray(run(0)) - np.asarray(run(1))).max() > 1e-3


@pytest.mark.slow
def test_scorecam_is_invariant_to_chunk_sizes():
  b = bundle("tiny_cnn")  # 32 feature channels.
  images = b.images()
  reference = b.compute("scorecam", images, inner_chunk_size=32)
  for chunk, inner in ((256, 5), (2, 1)):
    np.testing.assert_allclose(
      b.compute("scorecam", images, chunk_size=chunk, inner_chunk_size=inner), reference, atol=1e-5
    )


def _check_maps(maps, batch, size):
  maps = np.asarray(maps)
  assert maps.shape == (batch, size, size) and maps.dtype == np.float32
  assert np.all(np.isfinite(maps)) and maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,methods",
  [
    ("tiny_cnn", cams.METHODS),
    ("resnet18", ("gradcampp", "eigengradcam", "scorecam")),
    ("vit", ("gradcam", "hirescam", "eigencam", "scorecam", "integrated_gradients")),
    ("vgg", ("gradcam", "saliency")),
  ],
)
def test_every_family_gives_valid_maps(name, methods):
  b = bundle(name)
  images = b.images()  # The last image is constant.
  for method in methods:
    maps = b.compute(method, images)
    _check_maps(maps, 3, b.size)
    # Real maps, not silently empty ones (the original code produced none for ViT).
    assert np.asarray(maps[:2]).max(axis=(1, 2)).min() == pytest.approx(1.0), (name, method)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_cnn", "resnet18", "vit"])
def test_bfloat16_models_give_float32_maps_close_to_float32(name):
  b16, b32 = bundle(name, "bfloat16"), bundle(name)
  images, targets = b32.images(), jnp.array([0, 1, 2])
  maps16 = b16.compute("gradcampp", images, targets)
  _check_maps(maps16, 3, b32.size)
  maps32 = b32.compute("gradcampp", images, targets)
  assert np.abs(np.asarray(maps16[:2]) - np.asarray(maps32[:2])).mean() < 0.1, name


def test_unknown_method_or_option_is_a_clear_error():
  b = bundle("tiny_cnn")
  with pytest.raises(ValueError, match="gradcampp.*integrated_gradients"):
    cams.compute("gradcam_plus", b.apply, b.variables, b.images())
  with pytest.raises(ValueError, match="chunksize"):
    cams.compute("gradcam", b.apply, b.variables, b.images(), chunksize=3)
  assert len(cams.METHODS) == 13 and len(set(cams.METHODS)) == 13


# ---------------------------------------------------------------- normalisation and smoothing


def test_normalize_constant_tiny_and_ordinary_maps():
  np.testing.assert_array_equal(postprocess.normalize(jnp.full((4, 4), 3.0)), np.zeros((4, 4)))
  np.testing.assert_array_equal(postprocess.normalize(jnp.zeros((4, 4))), np.zeros((4, 4)))
  tiny = jnp.arange(16.0).reshape(4, 4) * 1e-12  # Real but tiny gradients still normalise.
  np.testing.assert_allclose(
    postprocess.normalize(tiny), np.arange(16).reshape(4, 4) / 15, atol=1e-6
  )
  ramp = jnp.asarray(RNG.normal(size=(5, 6)), jnp.bfloat16)
  out = postprocess.normalize(ramp)
  assert out.dtype == jnp.float32 and float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_gaussian_smoothing():
  cam = jnp.asarray(RNG.uniform(size=(12, 9)), jnp.float32)
  np.testing.assert_array_equal(postprocess.gaussian_smooth(cam, 0.0), cam)
  # Row-stochastic blur: constants survive (no dark edges) and total variation drops.
  np.testing.assert_allclose(
    postprocess.gaussian_smooth(jnp.full((12, 9), 0.7), 2.0), np.full((12, 9), 0.7), rtol=1e-6
  )
  smoothed = np.asarray(postprocess.gaussian_smooth(cam, 1.5))
  assert np.abs(np.diff(smoothed, axis=0)).sum() < 0.5 * np.abs(np.diff(cam, axis=0)).sum()
  # Interior points are exactly a normalised truncated Gaussian average (radius ceil(3 sigma)).
  weights = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
  weights /= weights.sum()
  expected = np.einsum(
    "i,j,ij->", weights, weights[1:-1] / weights[1:-1].sum(), np.asarray(cam)[0:11, 0:9]
  )
  np.testing.assert_allclose(smoothed[5, 4], expected, rtol=1e-5)


# ---------------------------------------------------------------- rendering


def test_overlay_shapes_dtypes_and_blend():
  float_images = RNG.uniform(size=(2, 8, 10, 3)).astype(np.float32)
  maps = RNG.uniform(size=(2, 8, 10)).astype(np.float32)
  out = cams.overlay(float_images, maps, alpha=0.4)
  assert out.shape == (2, 8, 10, 3) and out.dtype == np.uint8
  uint8_images = np.round(float_images * 255).astype(np.uint8)
  np.testing.assert_allclose(cams.overlay(uint8_images, maps, 0.4), out, atol=1)
  np.testing.assert_array_equal(cams.overlay(uint8_images, maps, alpha=0.0), uint8_images)
  single = cams.overlay(float_images[0, ..., :1], maps[0, ::2, ::2])  # Grey, low-res map.
  assert single.shape == (8, 10, 3) and single.dtype == np.uint8
  jet = cams.colorize(np.array([0.0, 0.5, 1.0]))
  np.testing.assert_allclose(jet, [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]], atol=1e-6)
  assert cams.colorize(maps, "viridis").shape == (2, 8, 10, 3)


def test_write_grid_writes_png_and_metric_writer(tmp_path):

  class RecordingWriter:
    def __init__(self):
      self.calls = []

    def write_images(self, step, images):
      self.calls.append((step, images))

  images = RNG.uniform(size=(3, 6, 5, 3)).astype(np.float32)
  maps = RNG.uniform(size=(3, 6, 5)).astype(np.float32)
  writer = RecordingWriter()
  path = tmp_path / "grid" / "cams.png"
  canvas = cams.write_grid(
    images, maps, str(path), writer=writer, step=7, name="val/cams", columns=2
  )
  assert canvas.shape == (12, 20, 3) and canvas.dtype == np.uint8
  np.testing.assert_array_equal(np.asarray(Image.open(path)), canvas)
  np.testing.assert_array_equal(canvas[6:12, 0:5], np.round(images[2] * 255).astype(np.uint8))
  np.testing.assert_array_equal(canvas[0:6, 15:20], cams.overlay(images[1], maps[1]))
  ((step, logged),) = writer.calls
  assert step == 7 and logged["val/cams"].shape == (1, 12, 20, 3)

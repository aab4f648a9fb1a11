"""Activation-map formulas, each a pure function of ONE example's activations and gradients.

`acts` and `grads` are float32 `(h, w, C)`: the last spatial feature map and the gradient of the
target logit with respect to it. Every function returns the raw `(h, w)` map; ReLU, upsampling
and normalisation are shared and live in `postprocess.py`, so each function here is only the
paper's weighting.
"""

import jax
import jax.numpy as jnp


def _safe_divide(numerator, denominator):
  # A zero denominator means the channel carries no signal: weight 0 rather than inf/NaN.
  nonzero = denominator != 0
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def weighted_sum(acts, weights):
  """sum_k weights[k] * acts[:, :, k] -> (h, w)."""
  return jnp.einsum("hwc,c->hw", acts, weights)


def gradcam(acts, grads):
  """Selvaraju et al. 2017: channel weight = spatial mean of the gradient."""
  return weighted_sum(acts, jnp.mean(grads, axis=(0, 1)))


def gradcampp(acts, grads, eps=0.0):
  """Chattopadhay et al. 2018, eq. 19 (closed form with the exponential of the score).

  alpha_ij^k = g^2 / (2 g^2 + sum_ab A_ab^k g^3 + eps), weight_k = sum_ij alpha_ij^k relu(g_ij^k),
  with alpha = 0 where g = 0. The paper has eps = 0; pytorch-grad-cam adds eps = 1e-6, which
  shrinks the alphas where gradients are small (~1e-3 on a freshly initialised network).
  """
  grads_2 = grads**2
  activation_sums = jnp.sum(acts, axis=(0, 1))
  alphas = _safe_divide(grads_2, 2.0 * grads_2 + activation_sums * grads_2 * grads + eps)
  alphas = jnp.where(grads != 0, alphas, 0.0)
  weights = jnp.sum(alphas * jnp.maximum(grads, 0.0), axis=(0, 1))
  return weighted_sum(acts, weights)


def xgradcam(acts, grads):
  """Fu et al. 2020: weight_k = sum_ij (A_ij^k / sum_ab A_ab^k) g_ij^k."""
  weights = _safe_divide(jnp.sum(acts * grads, axis=(0, 1)), jnp.sum(acts, axis=(0, 1)))
  return weighted_sum(acts, weights)


def hirescam(acts, grads):
  """Draelos & Carin 2020: element-wise gradient x activation, summed over channels."""
  return jnp.sum(acts * grads, axis=-1)


def layercam(acts, grads):
  """Jiang et al. 2021: positive gradients act as per-location weights."""
  return jnp.sum(jnp.maximum(grads, 0.0) * acts, axis=-1)


def first_component_projection(matrix):
  """Projection of the (h, w, C) map onto its first principal component -> (h, w).

  Columns are centred (PCA), as in pytorch-grad-cam. With X the centred (hw, C) matrix and
  X = U S V^T, the projection X v_1 equals s_1 u_1; we get it from the eigen-decomposition of
  the smaller of X X^T and X^T X, far cheaper than an SVD for batched small maps. The sign of a
  component is free; we fix it so v_1's entries sum to a non-negative number, i.e. the
  component points towards "more activation", which makes the map deterministic.
  """
  h, w, c = matrix.shape
  flat = matrix.reshape(h * w, c)
  flat = flat - jnp.mean(flat, axis=0, keepdims=True)
  highest = jax.lax.Precision.HIGHEST
  if h * w <= c:
    values, vectors = jnp.linalg.eigh(jnp.matmul(flat, flat.T, precision=highest))
    left = vectors[:, -1]  # u_1; eigh sorts eigenvalues ascending, so s_1^2 = values[-1].
    projection = jnp.sqrt(jnp.maximum(values[-1], 0.0)) * left
    component_sum = jnp.sum(jnp.matmul(flat.T, left, precision=highest))  # s_1 * sum(v_1)
  else:
    _, vectors = jnp.linalg.eigh(jnp.matmul(flat.T, flat, precision=highest))
    component = vectors[:, -1]  # v_1
    projection = jnp.matmul(flat, component, precision=highest)
    component_sum = jnp.sum(component)
  projection = jnp.where(component_sum < 0, -projection, projection)
  return projection.reshape(h, w)


def eigencam(acts, grads):
  """Muhammad & Yeasin 2020: first principal component of the activations (class-agnostic)."""
  del grads
  return first_component_projection(acts)


def eigengradcam(acts, grads):
  """Eigen-CAM of gradient x activation (pytorch-grad-cam's class-discriminative variant)."""
  return first_component_projection(acts * grads)


# Formulas that need the gradient of the target logit; Eigen-CAM alone does not.
ACTIVATION_FORMULAS = {
  "gradcam": gradcam,
  "gradcampp": gradcampp,
  "xgradcam": xgradcam,
  "hirescam": hirescam,
  "layercam": layercam,
  "eigencam": eigencam,
  "eigengradcam": eigengradcam,
}
GRADIENT_FREE = frozenset({"eigencam"})
